"""MkDocs hooks for the docs site: one page per adapter generated from its package README
(the README is also its PyPI page, so the two never drift), the benchmarks page from
benchmarks/README.md, and links to repository files that are not pages turned into links to
the repository (so ``mkdocs build --strict`` checks every link that stays in the site)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")
_origin: dict[str, str] = {}
"""Generated page (src_uri) -> the repository directory its Markdown came from."""


def _packages() -> list[tuple[str, Path]]:
    pkgs = sorted(p for p in (ROOT / "packages").glob("flowcraft-*") if p.name != "flowcraft-core")
    return [(p.name.removeprefix("flowcraft-"), p) for p in pkgs]


def on_config(config: Any) -> Any:
    """Fill the nav's empty "Adapters" section: each package's page, then its guide."""
    for entry in config["nav"]:
        if isinstance(entry, dict) and entry.get("Adapters") == []:
            items: list[Any] = []
            for short, _ in _packages():
                items.append({f"flowcraft-{short}": f"adapters/{short}.md"})
                if (ROOT / "docs" / f"{short}.md").exists():
                    items.append({f"flowcraft-{short}: guide": f"{short}.md"})
            entry["Adapters"] = items
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages."""
    sources = [(f"adapters/{short}.md", p / "README.md") for short, p in _packages()]
    sources.append(("benchmarks.md", ROOT / "benchmarks" / "README.md"))
    for uri, path in sources:
        files.append(File.generated(config, uri, content=path.read_text(encoding="utf-8")))
        _origin[uri] = path.parent.relative_to(ROOT).as_posix()
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Keep links between pages; point links to other repository files at the repository."""
    src = page.file.src_uri
    origin = _origin.get(src, posixpath.join("docs", posixpath.dirname(src)))
    repo = str(config["repo_url"]).rstrip("/")

    def fix(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)
        path = posixpath.normpath(posixpath.join(origin, target))
        if path.startswith("docs/") and files.get_file_from_path(path[5:]) is not None:
            rel = posixpath.relpath(path[5:], posixpath.dirname(src) or ".")
            return f"{m.group(1)}{rel}{m.group(3) or ''}{m.group(4)}"
        for uri, where in _origin.items():  # a README that is itself a generated page
            if path == f"{where}/README.md":
                rel = posixpath.relpath(uri, posixpath.dirname(src) or ".")
                return f"{m.group(1)}{rel}{m.group(3) or ''}{m.group(4)}"
        kind = "tree" if (ROOT / path).is_dir() else "blob"
        return f"{m.group(1)}{repo}/{kind}/main/{path}{m.group(3) or ''}{m.group(4)}"

    return LINK.sub(fix, markdown)
