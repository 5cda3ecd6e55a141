"""The adapter itself: ``files://`` URLs (``from_url``, the ``flowcraft.backends`` entry point)
and the list of runs that are not final."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
from flowcraft import PatchOperation
from flowcraft.distributed import open_adapter
from flowcraft_files import FilesAdapter, from_url


def test_from_url_takes_the_path_and_options(tmp_path: Path) -> None:
    """The path is the backend directory; query options become keyword arguments and win over
    the ones passed."""
    a = from_url(f"files://{tmp_path}/b%20c?concurrency=3&visibility_timeout=2.5", concurrency=9)
    assert a.root == tmp_path / "b c"
    assert a.concurrency == 3
    assert a.queue.visibility_timeout == 2.5
    assert sorted(p.name for p in a.root.iterdir()) == [
        "coord",
        "dead",
        "queue",
        "results",
        "runs",
        "tmp",
    ]


def test_from_url_refuses_bad_urls(tmp_path: Path) -> None:
    """Unknown options, bad values, another scheme and a host part are errors naming them."""
    with pytest.raises(ValueError, match=r"unknown option 'color' \(known: concurrency, vis"):
        from_url(f"files://{tmp_path}?color=red")
    with pytest.raises(ValueError, match=r"option concurrency='many' is not a valid int"):
        from_url(f"files://{tmp_path}?concurrency=many")
    with pytest.raises(ValueError, match=r"expected one of files://"):
        from_url(f"sqlite://{tmp_path}")
    with pytest.raises(ValueError, match=r"expected files:///absolute/path or files:path"):
        from_url("files://somehost/dir")


@pytest.mark.skipif(
    not entry_points(group="flowcraft.backends", name="files"),
    reason="flowcraft-files is not installed (its src/ is only on sys.path): no entry point",
)
def test_the_files_scheme_is_an_entry_point(tmp_path: Path) -> None:
    """``open_adapter`` (what ``flowcraft worker --backend`` calls) finds the adapter."""
    adapter = open_adapter(f"files://{tmp_path}/q?concurrency=2")
    assert type(adapter) is FilesAdapter
    assert (adapter.root, adapter.concurrency) == (tmp_path / "q", 2)


async def test_list_active_runs_pages_through_runs_that_are_not_final(tmp_path: Path) -> None:
    """Runs are listed in id order, final ones left out, ``limit`` per page with a cursor."""
    adapter = FilesAdapter(tmp_path)
    for run_id, status in [("c", "running"), ("a", "awaiting"), ("x", "completed"), ("b", None)]:
        ctx = await adapter.create_context(run_id)
        assert await ctx.commit([PatchOperation("set", "k", 1)], 0, status=status)
    assert await adapter.list_active_runs(limit=2) == (["a", "b"], "b")
    assert await adapter.list_active_runs("b", limit=2) == (["c"], None)
    assert await adapter.list_active_runs(limit=3) == (["a", "b", "c"], None)
