"""The benchmark tables in the READMEs, generated from the stored JSON in ``benchmarks/results``.

A table lives between two markers in a Markdown file::

    <!-- bench-table: azure -->

    ...generated...

    <!-- /bench-table -->

``azure`` names both the stored run (``results/azure.json``) and its renderer below. Nothing
between the markers is typed by hand: rerun a benchmark (``benchmarks/run``), then this script.

    uv run python benchmarks/tables.py            # rewrite every marked table
    uv run python benchmarks/tables.py --check    # exit 1 naming each stale table
    uv run python benchmarks/tables.py --print azure [--from other.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: Markdown files that may hold marked tables.
FILES = ("benchmarks/README.md", "README.md", "packages/*/README.md", "docs/*.md")
MARKER = re.compile(
    r"(<!-- bench-table: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /bench-table -->)", re.S
)

Doc = Mapping[str, Any]


def _mmm(s: Mapping[str, Any], digits: int = 1) -> str:
    """``median (min..max)`` of a summary dict."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def engine(doc: Doc) -> str:
    """In-memory engine against the TypeScript Flowcraft (``engine.py``)."""
    rows = [
        "| scenario | Python us/node, median (min..max) | TypeScript us/node, median (min..max) "
        "| ratio (py/ts) | target (<= 0.5) |",
        "| --- | --- | --- | ---: | --- |",
    ]
    ts = doc["ts"] if isinstance(doc.get("ts"), Mapping) else {}
    for name, p in doc["python"].items():
        if not isinstance(p, Mapping) or "us_per_node" not in p:
            continue
        t, c = ts.get(name), doc["comparison"][name]

        def fmt(x: Mapping[str, Any]) -> str:
            return (
                f"{x['us_per_node']:.1f} ({x['us_per_node_min']:.1f}..{x['us_per_node_max']:.1f})"
            )

        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        met = "-" if c["meets_target"] is None else ("met" if c["meets_target"] else "**not met**")
        rows.append(f"| `{name}` | {fmt(p)} | {fmt(t) if t else '-'} | {ratio} | {met} |")
    return "\n".join(rows)


def duplicate_storm(doc: Doc) -> str:
    """Enqueue amplification under duplicate delivery (``duplicate_storm.py``)."""
    rows = [
        "| backend | enqueues per node, median (min..max) | executions per node, max "
        "| run seconds, median (min..max) |",
        "| --- | --- | --- | --- |",
    ]
    for name, e in doc["backends"].items():
        f, x, t = e["enqueue_factor"], e["executions_per_node"], e["run_seconds"]
        rows.append(
            f"| {name} | {f['median']} ({f['min']}..{f['max']}) | {x['max']} "
            f"| {t['median']} ({t['min']}..{t['max']}) |"
        )
    return "\n".join(rows)


def bullmq(doc: Doc) -> str:
    """BullMQ + Redis, both modes, against raw BullMQ jobs (``bullmq_bench.py``)."""
    rows = [
        "| scenario | Flowcraft nodes/s (ms/hop) | every node a job, nodes/s | raw BullMQ jobs/s "
        "| raw / Flowcraft | round trips per node (as shipped / every node a job) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, f in doc["flowcraft"].items():
        j, raw = doc["flowcraft_every_node_a_job"][key], doc["raw_bullmq"][key]
        scenario, n, w = key.split("_")
        workers = f"{w[:-1]} worker" + ("s" if w[:-1] != "1" else "")
        rows.append(
            f"| {scenario} {n}, {workers} | {f['nodes_per_s']:.0f} ({f['per_hop_ms']:.2f}) "
            f"| {j['nodes_per_s']:.0f} | {raw['jobs_per_s']:.0f} "
            f"| {raw['jobs_per_s'] / f['nodes_per_s']:.2f} "
            f"| {f['round_trips_per_node']} / {j['round_trips_per_node']} |"
        )
    return "\n".join(rows)


def rabbitmq(doc: Doc) -> str:
    """RabbitMQ + PostgreSQL + Redis against raw RabbitMQ hops (``rabbitmq_bench.py``)."""
    rows = [
        "| mode | workers | chain nodes/s (ms/hop) | fan nodes/s | round trips per node "
        "(PostgreSQL + Redis + confirmed publish) |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"jobs": "every node a message", "inline": "inline successors (64, default)"}
    for mode, name in names.items():
        m = doc.get(mode)
        if not m:
            continue
        rt = m["round_trips_per_node"]["per_node"]
        trips = f"{rt['total']} ({rt['postgres']} + {rt['redis']} + {rt['amqp_publish_confirmed']})"
        for w in (1, 2):
            c, f = m[f"workers_{w}"]["chain"], m[f"workers_{w}"]["fan"]
            rows.append(
                f"| {name} | {w} | {c['nodes_per_s']} ({c['ms_per_hop']:.2f}) "
                f"| {f['nodes_per_s']} | {trips if w == 1 else ''} |"
            )
    raw = doc["raw_rabbitmq"]
    rows += [
        "",
        f"Raw RabbitMQ publish-confirm → deliver → ack hop: {raw['chain_ms_per_hop']} ms; "
        f"1-minute load average {doc['machine']['load_avg_1min']:.1f} on "
        f"{doc['machine']['cpu_count']} CPUs.",
    ]
    return "\n".join(rows)


def sqlite(doc: Doc) -> str:
    """Worker processes on one SQLite file, both modes, against raw queue hops
    (``sqlite_bench.py``)."""
    rows = [
        "| scenario | Flowcraft nodes/s (as shipped) | every node a job | raw SQLite queue msgs/s "
        "| result seen after the final commit, ms | SQLite calls per node |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, f in doc["flowcraft"].items():
        j, r = doc["flowcraft_every_node_a_job"][key], doc["raw_sqlite"][key]
        rows.append(
            f"| {key} | {_mmm(f['nodes_per_s'])} | {_mmm(j['nodes_per_s'])} "
            f"| {_mmm(r['messages_per_s'])} | {_mmm(f['result_lag_ms'], 2)} "
            f"| {f['sqlite_calls_per_node']} / {j['sqlite_calls_per_node']} |"
        )
    return "\n".join(rows)


def sqs(doc: Doc) -> str:
    """SQS + DynamoDB on moto (``sqs_bench.py``)."""
    rows = [
        "| mode | workers | chain nodes/s (ms/hop) | fan nodes/s | API calls per node |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"jobs": "every node a message", "inline": "inline successors (default)"}
    for mode, name in names.items():
        for w in (1, 2):
            m = doc.get(mode, {}).get(f"workers_{w}")
            if m:
                c, f = m["chain"], m["fan"]
                rows.append(
                    f"| {name} | {w} | {c['nodes_per_s']} ({c['ms_per_hop']:.1f}) "
                    f"| {f['nodes_per_s']} | {m['api_calls_per_node']['total']} |"
                )
    rows += ["", f"Raw moto send → receive → delete hop: {doc['raw_sqs_hop_ms']} ms."]
    return "\n".join(rows)


def _cloud(label: str, raw_key: str) -> Callable[[Doc], str]:
    """A renderer for the Pub/Sub and Azure benchmarks (same document shape, own call names)."""
    reads_of = {
        "gcp": ("firestore.get", "firestore.batch_get", "firestore.run_query"),
        "azure": ("cosmos.read", "cosmos.query"),
    }[label]

    def render(doc: Doc) -> str:
        calls = "api_calls_per_node" if label == "gcp" else "requests_per_node"
        store, queue = ("Firestore", "Pub/Sub") if label == "gcp" else ("Cosmos", "queue")
        extra = " bytes written per node |" if label == "gcp" else ""
        rows = [
            f"| workers | workflow | nodes/s, median (min..max) | calls per node "
            f"| {store} reads / writes per node | {queue} calls per node |{extra}",
            "| --- | --- | --- | --- | --- | --- |" + (" --- |" if extra else ""),
        ]
        for w in (1, 2):
            m = doc.get(f"workers_{w}")
            for bp in ("chain", "fan") if m else ():
                e = m[bp]
                c = e[calls]
                reads = sum(v for k, v in c.items() if k in reads_of)
                prefix = "firestore." if label == "gcp" else "cosmos."
                writes = sum(v for k, v in c.items() if k.startswith(prefix) and k not in reads_of)
                qp = "pubsub." if label == "gcp" else "queue."
                q = sum(v for k, v in c.items() if k.startswith(qp))
                more = f" {e['bytes_written_per_node']} |" if extra else ""
                rows.append(
                    f"| {w} | {bp} {e['nodes']} | {_mmm(e['nodes_per_s'])} | {c['total']} "
                    f"| {reads:.2f} / {writes:.2f} | {q:.2f} |{more}"
                )
        raw = doc.get(raw_key)
        if raw:
            rows += [
                "",
                f"Raw {queue} hop on the same emulator: {raw['median']} ms "
                f"({raw['min']}..{raw['max']}), i.e. {round(1000 / raw['median'], 1)} hops/s.",
            ]
        return "\n".join(rows)

    render.__doc__ = f"The {label} benchmark's table (``{label}_bench.py``)."
    return render


def kafka(doc: Doc) -> str:
    """Kafka + Redis on Tansu, both modes, against raw Kafka (``kafka_bench.py``)."""
    rows = [
        "| scenario | workers | Flowcraft nodes/s (inline 64) | every node a message "
        "| raw Kafka msgs/s | Redis round trips/node | broker produces/node |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in doc["flowcraft"].items():
        jobs, rw = doc["flowcraft_every_node_a_message"][key], doc["raw_kafka"][key]
        rows.append(
            f"| {key} | {row['workers']} | {_mmm(row['nodes_per_s'])} "
            f"| {_mmm(jobs['nodes_per_s'])} | {_mmm(rw['messages_per_s'])} "
            f"| {row['redis_round_trips_per_node']} / {jobs['redis_round_trips_per_node']} "
            f"| {row['broker_produces_per_node']} / {jobs['broker_produces_per_node']} |"
        )
    return "\n".join(rows)


def cloudflare(doc: Doc) -> str:
    """The companion Worker on local workerd, both modes (``cloudflare_bench.py``)."""
    rows = [
        "| scenario | workers | nodes/s, median (min..max) | HTTP requests per node |",
        "| --- | --- | --- | --- |",
    ]
    for key, r in doc["results"].items():
        rows.append(
            f"| {key} | {r['workers']} | {_mmm(r['nodes_per_s'])} | {r['http_requests_per_node']} |"
        )
    return "\n".join(rows)


#: Stored-run name -> the function that renders its table.
def scale(doc: Doc) -> str:
    """N concurrent runs on SQLite and BullMQ, with each worker's peak memory (``scale.py``)."""
    rows = [
        "| backend | runs | peak runs in flight | seconds | nodes/s "
        "| worker peak RSS, MiB | all completed |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in doc["rows"]:
        rss = " / ".join(f"{x:.1f}" for x in r["worker_peak_rss_mib"])
        ok = "yes" if r["runs_not_completed"] == 0 else f"**{r['runs_not_completed']} not**"
        rows.append(
            f"| {r['backend']} | {r['runs']:,} | {r['peak_active_runs']:,} "
            f"| {r['total_seconds']:.1f} | {r['nodes_per_s']:.0f} | {rss} | {ok} |"
        )
    return "\n".join(rows)


RENDERERS: dict[str, Callable[[Doc], str]] = {
    "engine": engine,
    "duplicate_storm": duplicate_storm,
    "bullmq": bullmq,
    "rabbitmq": rabbitmq,
    "sqlite": sqlite,
    "sqs": sqs,
    "gcp": _cloud("gcp", "raw_pubsub_hop_ms"),
    "azure": _cloud("azure", "raw_queue_hop_ms"),
    "kafka": kafka,
    "cloudflare": cloudflare,
    "scale": scale,
}


def render(name: str, source: Doc | str | Path | None = None) -> str:
    """The table of stored run ``name``: from ``source`` (a document or a JSON file), else from
    ``results/<name>.json``."""
    if name not in RENDERERS:
        raise SystemExit(f"tables: no renderer for {name!r} (known: {', '.join(RENDERERS)})")
    if not isinstance(source, Mapping):
        path = RESULTS / f"{name}.json" if source is None else Path(source)
        source = json.loads(path.read_text(encoding="utf-8"))
    return RENDERERS[name](source)


def markdown_files() -> Iterator[Path]:
    """Every Markdown file that may hold a marked table."""
    for pattern in FILES:
        yield from sorted(ROOT.glob(pattern))


def regenerate(text: str) -> tuple[str, list[str]]:
    """``text`` with every marked table re-rendered, and the names of the tables in it."""
    names: list[str] = []

    def one(m: re.Match[str]) -> str:
        names.append(m["name"])
        return f"{m[1]}\n{render(m['name'])}\n\n{m[4]}"

    return MARKER.sub(one, text), names


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) every marked table; ``--print NAME`` shows one."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a table is stale, write nothing")
    ap.add_argument("--print", dest="name", help="print the table of one stored run")
    ap.add_argument("--from", dest="source", help="with --print: this JSON, not results/NAME.json")
    args = ap.parse_args(argv)
    if args.name:
        print(render(args.name, args.source))
        return 0
    stale, seen = [], []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        new, names = regenerate(text)
        seen += names
        if new != text:
            stale.append(f"{path.relative_to(ROOT)} ({', '.join(names)})")
            if not args.check:
                path.write_text(new, encoding="utf-8")
    missing = sorted(set(RENDERERS) - set(seen))
    if missing:
        print(f"tables: stored runs with no table in any README: {', '.join(missing)}")
        return 1
    if stale and args.check:
        print("tables: stale, run `uv run python benchmarks/tables.py`: " + "; ".join(stale))
        return 1
    for s in stale:
        print(f"tables: rewrote {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
