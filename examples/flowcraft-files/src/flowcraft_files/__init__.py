"""flowcraft-files: a Flowcraft backend on a directory of files, shared by the worker processes
of one machine. The worked example of ``docs/adapters.md`` ("Write an adapter")."""

from __future__ import annotations

from .adapter import FilesAdapter, from_url
from .queue import FileQueue
from .store import FileCoordinationStore, FileRunContext, layout

__version__ = "0.1.0"

__all__ = [
    "FileCoordinationStore",
    "FileQueue",
    "FileRunContext",
    "FilesAdapter",
    "__version__",
    "from_url",
    "layout",
]
