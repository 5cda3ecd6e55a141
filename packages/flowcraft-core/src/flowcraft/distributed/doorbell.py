"""Wake-ups between processes on one machine, for backends that cannot notify (SQLite).

A :class:`Doorbell` is named by a key (a database's absolute path). Each listener binds a Unix
datagram socket in a private directory derived from the key; :meth:`Doorbell.ring` sends one
byte to every listener of a channel. A worker waiting for jobs, or a client waiting for a
result, wakes within microseconds of the commit instead of at its next poll.

A wake-up is only a hint: listeners still poll (less often), so a lost or impossible wake-up
(no ``AF_UNIX``, a temporary directory another user owns, a socket path over the OS limit,
processes with different temporary directories) costs latency, never correctness. Sockets of
processes that died are removed by the next ring that finds nobody bound to them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("flowcraft.distributed")

__all__ = ["Doorbell"]

_BOUND: set[Path] = set()
"""Socket files this process bound and has not removed yet (removed at exit if still there:
an adapter that was never closed leaves nothing behind)."""


@atexit.register
def _remove_bound() -> None:
    for path in list(_BOUND):
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    _BOUND.clear()


class Doorbell:
    """Cross-process wake-ups for one key (see the module docstring)."""

    def __init__(self, key: str) -> None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self.dir = Path(tempfile.gettempdir()) / f"flowcraft-bell-{digest}"
        """The directory holding this key's listener sockets."""
        self._out: socket.socket | None = None
        self._listeners: list[tuple[socket.socket, Path, asyncio.AbstractEventLoop]] = []
        self._usable: bool | None = None

    def _ready(self) -> bool:
        """Whether the socket directory exists and is ours alone (created on first use)."""
        if self._usable is None:
            self._usable = False
            if hasattr(socket, "AF_UNIX") and hasattr(os, "getuid"):
                with contextlib.suppress(FileExistsError, OSError):
                    self.dir.mkdir(mode=0o700)
                try:
                    st = os.lstat(self.dir)
                except OSError:
                    st = None
                if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                    self._usable = not (st.st_mode & 0o077)
                if not self._usable:
                    log.debug("doorbell %s unusable: falling back to polling", self.dir)
        return self._usable

    def listen(self, channel: str, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` (on the running loop) whenever ``channel`` is rung. Returns the
        function that stops this listener, or None when this process cannot listen (the
        caller keeps polling)."""
        if not self._ready():
            return None
        path = self.dir / f"{channel}.{os.getpid()}.{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.setblocking(False)
        except OSError as exc:  # e.g. the path is over the OS limit
            sock.close()
            log.debug("doorbell listener %s failed (%s): polling only", path, exc)
            return None
        loop = asyncio.get_running_loop()

        def drain() -> None:
            with contextlib.suppress(BlockingIOError, OSError):
                while sock.recv(64):
                    pass
            callback()

        loop.add_reader(sock.fileno(), drain)
        _BOUND.add(path)
        entry = (sock, path, loop)
        self._listeners.append(entry)

        def stop() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                self._drop(entry)

        return stop

    def ring(self, channel: str) -> None:
        """Wake every listener of ``channel`` (any process). Never raises, never blocks."""
        if self._usable is False:  # this process found the directory unusable: poll only
            return
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        prefix = channel + "."
        for name in names:
            if not name.startswith(prefix):
                continue
            if self._out is None:
                try:
                    self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._out.setblocking(False)
                except OSError:
                    return
            path = self.dir / name
            try:
                self._out.sendto(b"\0", str(path))
            except ConnectionRefusedError:  # nobody bound: its process is gone
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:  # a full buffer means it is awake already; anything else: poll
                pass

    def _drop(self, entry: tuple[socket.socket, Path, asyncio.AbstractEventLoop]) -> None:
        sock, path, loop = entry
        with contextlib.suppress(Exception):
            loop.remove_reader(sock.fileno())
        sock.close()
        _BOUND.discard(path)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # the last listener leaves nothing behind (fails when not empty)

    def close(self) -> None:
        """Stop listening and remove this process's sockets (call on the listeners' loop)."""
        while self._listeners:
            self._drop(self._listeners.pop())
        if self._out is not None:
            self._out.close()
            self._out = None
