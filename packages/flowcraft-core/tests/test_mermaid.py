"""Tests for flowcraft.mermaid: diagram text, escaping and run highlighting."""

from __future__ import annotations

import re
from typing import Any

from flowcraft.blueprint import WorkflowBlueprint, load_blueprint
from flowcraft.mermaid import escape_label, generate_mermaid, generate_mermaid_for_run


def make_bp(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> WorkflowBlueprint:
    return load_blueprint({"id": "wf", "nodes": nodes, "edges": edges})


LINEAR = make_bp(
    [
        {"id": "fetch", "uses": "http"},
        {"id": "parse", "uses": "json"},
        {"id": "store", "uses": "db"},
    ],
    [{"source": "fetch", "target": "parse"}, {"source": "parse", "target": "store"}],
)


def test_linear() -> None:
    assert generate_mermaid(LINEAR) == (
        "flowchart TD\n"
        '    n0["fetch<br/>http"]\n'
        '    n1["parse<br/>json"]\n'
        '    n2["store<br/>db"]\n'
        "    n0 --> n1\n"
        "    n1 --> n2"
    )


def test_labelled_edges() -> None:
    bp = make_bp(
        [{"id": "review", "uses": "human"}, {"id": "ship", "uses": "deploy"}],
        [
            {"source": "review", "target": "ship", "action": "approve", "condition": "x > 3"},
            {"source": "review", "target": "ship", "action": "force"},
            {"source": "review", "target": "ship", "condition": "a && b", "transform": "y#1"},
        ],
    )
    assert generate_mermaid(bp) == (
        "flowchart TD\n"
        '    n0["review<br/>human"]\n'
        '    n1["ship<br/>deploy"]\n'
        '    n0 -->|"approve #124; x #gt; 3"| n1\n'
        '    n0 -->|"force"| n1\n'
        '    n0 -->|"a #amp;#amp; b #124; y#35;1"| n1'
    )


DIAMOND = make_bp(
    [
        {"id": "start", "uses": "task"},
        {"id": "left", "uses": "task"},
        {"id": "right", "uses": "task"},
        {"id": "join", "uses": "merge", "config": {"joinStrategy": "any"}},
    ],
    [
        {"source": "start", "target": "left"},
        {"source": "start", "target": "right"},
        {"source": "left", "target": "join"},
        {"source": "right", "target": "join"},
    ],
)


def test_diamond() -> None:
    assert generate_mermaid(DIAMOND) == (
        "flowchart TD\n"
        '    n0["start<br/>task"]\n'
        '    n1["left<br/>task"]\n'
        '    n2["right<br/>task"]\n'
        '    n3["join<br/>merge"]\n'
        "    n0 --> n1\n"
        "    n0 --> n2\n"
        "    n1 --> n3\n"
        "    n2 --> n3"
    )


def test_empty_blueprint_has_placeholder_node() -> None:
    assert generate_mermaid(make_bp([], [])) == 'flowchart TD\n    n0["(empty workflow)"]'


NASTY_IDS = [
    "has space",
    'say "hi"',
    "a --> b",
    "[brackets](parens){braces}",
    "pipe|hash#amp&lt<gt>",
    "line\nbreak",
    "`tick` ünïcødé ✓",
]


def test_hostile_ids_never_reach_the_source_raw() -> None:
    nodes = [{"id": i, "uses": 'uses "q"'} for i in NASTY_IDS]
    edges = [
        {"source": NASTY_IDS[k], "target": NASTY_IDS[k + 1], "action": 'go "now"'}
        for k in range(len(NASTY_IDS) - 1)
    ]
    text = generate_mermaid(make_bp(nodes, edges))
    lines = text.split("\n")
    assert lines[0] == "flowchart TD"
    node_lines = lines[1 : 1 + len(NASTY_IDS)]
    edge_lines = lines[1 + len(NASTY_IDS) :]
    assert len(lines) == 1 + len(NASTY_IDS) + len(NASTY_IDS) - 1  # no line was split

    for k, line in enumerate(node_lines):
        assert re.match(r'^\s+n\d+\["', line), line
        assert line.startswith(f'    n{k}["') and line.endswith('"]')
        label = line[len(f'    n{k}["') : -2]
        assert '"' not in label
        assert escape_label(NASTY_IDS[k]) + "<br/>uses #quot;q#quot;" == label

    for k, line in enumerate(edge_lines):
        assert line == f'    n{k} -->|"go #quot;now#quot;"| n{k + 1}'

    assert lines[2] == '    n1["say #quot;hi#quot;<br/>uses #quot;q#quot;"]'
    assert lines[3] == '    n2["a --#gt; b<br/>uses #quot;q#quot;"]'
    assert lines[5] == '    n4["pipe#124;hash#35;amp#amp;lt#lt;gt#gt;<br/>uses #quot;q#quot;"]'
    assert lines[6] == '    n5["line#10;break<br/>uses #quot;q#quot;"]'
    assert lines[7] == '    n6["#96;tick#96; ünïcødé ✓<br/>uses #quot;q#quot;"]'


def test_escape_label_scheme() -> None:
    assert escape_label('"#<>&|`\t\x7f ok') == "#quot;#35;#lt;#gt;#amp;#124;#96;#9;#127; ok"
    assert escape_label("plain text_1.2") == "plain text_1.2"


def test_run_highlighting() -> None:
    statuses = {
        "start": "completed",
        "left": "failed",
        "right": "completed",
        "join": "skipped",
        "not-a-node": "completed",
    }
    text = generate_mermaid_for_run(DIAMOND, statuses, ["start->right", "right->join", "x->y"])
    assert text == generate_mermaid(DIAMOND) + (
        "\n"
        "    classDef completed fill:#dcfce7,stroke:#16a34a,color:#14532d\n"
        "    classDef failed fill:#fee2e2,stroke:#dc2626,color:#7f1d1d\n"
        "    classDef skipped fill:#f3f4f6,stroke:#9ca3af,color:#6b7280,stroke-dasharray:4 3\n"
        "    class n0 completed\n"
        "    class n1 failed\n"
        "    class n2 completed\n"
        "    class n3 skipped\n"
        "    linkStyle 1 stroke-width:3px,stroke:#2563eb\n"
        "    linkStyle 3 stroke-width:3px,stroke:#2563eb"
    )


def test_run_highlighting_every_status_and_action_keys() -> None:
    statuses = ["completed", "failed", "skipped", "awaiting", "recovered", "running", "pending"]
    nodes = [{"id": s, "uses": "t"} for s in [*statuses, "cancelled", "weird"]]
    edges = [
        {"source": "completed", "target": "failed", "action": "ok"},
        {"source": "completed", "target": "failed"},
    ]
    bp = make_bp(nodes, edges)
    node_statuses = {s: s for s in [*statuses, "cancelled"]} | {"weird": "exploded"}
    text = generate_mermaid_for_run(bp, node_statuses, taken_edges={"completed->failed#ok"})
    lines = text.split("\n")
    class_defs = [ln.split()[1] for ln in lines if ln.strip().startswith("classDef ")]
    assert class_defs == [*statuses, "cancelled"]
    assigned = [ln.strip() for ln in lines if ln.strip().startswith("class ")]
    assert assigned == [f"class n{i} {s}" for i, s in enumerate([*statuses, "cancelled"])]
    assert [ln.strip() for ln in lines if "linkStyle" in ln] == [
        "linkStyle 0 stroke-width:3px,stroke:#2563eb"
    ]


def test_run_without_statuses_is_plain_diagram() -> None:
    assert generate_mermaid_for_run(LINEAR, {}) == generate_mermaid(LINEAR)


def test_fallbacks_are_drawn_as_dotted_links_after_the_edges() -> None:
    """A fallback target is linked to the node it stands in for (not a disconnected box)."""
    bp = load_blueprint(
        {
            "id": "fb",
            "nodes": [
                {"id": "a", "uses": "x", "config": {"fallback": "rescue"}},
                {"id": "b", "uses": "x"},
                {"id": "rescue", "uses": "y"},
            ],
            "edges": [{"source": "a", "target": "b"}],
        }
    )
    assert generate_mermaid(bp).splitlines()[-2:] == [
        "    n0 --> n1",
        '    n0 -.->|"fallback"| n2',
    ]
