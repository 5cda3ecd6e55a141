"""The queue: one file per message, ``queue/<visible at>.<deliveries>.<id>``.

``visible at`` is microseconds since the epoch, fixed width, so names sort by time. A claim
renames the file to ``<now + visibility timeout>.<deliveries + 1>.<id>``: the rename is atomic,
so exactly one worker wins it, and a claim that is neither acked nor extended becomes visible
again by itself. Delays are a visible-at time in the future. Dead letters go to
``dead/<id>.json`` with their reason. Blocking calls: the adapter runs them in threads.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

from .store import write_atomic


def stamp(t: float) -> str:
    """``t`` (seconds since the epoch) as fixed-width microseconds."""
    return f"{int(t * 1_000_000):017d}"


class Claim:
    """A message a worker holds. Its file name changes with every extension; the lock lets an
    extension still finishing in its thread complete before the ack that follows it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()


class FileQueue:
    """A queue with visibility timeouts in ``root/queue``."""

    def __init__(self, root: Path, visibility_timeout: float) -> None:
        self.root = root
        self.dir = root / "queue"
        self.visibility_timeout = visibility_timeout

    def put(self, body: str | bytes, delay: float = 0.0) -> None:
        """Add a message, visible after ``delay`` seconds."""
        name = f"{stamp(time.time() + max(delay, 0.0))}.0.{uuid.uuid4().hex}"
        write_atomic(self.root, self.dir / name, body)

    def claim(self, limit: int) -> list[tuple[Claim, bytes, int]]:
        """Take up to ``limit`` visible messages: ``(claim, body, deliveries)`` each."""
        now = time.time()
        due, until = stamp(now), stamp(now + self.visibility_timeout)
        out: list[tuple[Claim, bytes, int]] = []
        for name in sorted(os.listdir(self.dir)):
            at, count, mid = name.split(".")
            if len(out) >= limit or at > due:
                break
            new = f"{until}.{int(count) + 1}.{mid}"
            try:
                os.rename(self.dir / name, self.dir / new)
                body = (self.dir / new).read_bytes()
            except FileNotFoundError:
                continue  # another worker claimed it first
            out.append((Claim(new), body, int(count) + 1))
        return out

    def move(self, claim: Claim, seconds: float) -> None:
        """Make a claimed message visible ``seconds`` from now (extend it, or give it back)."""
        with claim.lock:
            _, count, mid = claim.name.split(".")
            new = f"{stamp(time.time() + seconds)}.{count}.{mid}"
            try:
                os.rename(self.dir / claim.name, self.dir / new)
                claim.name = new
            except FileNotFoundError:
                pass  # it became visible meanwhile and another worker claimed it

    def ack(self, claim: Claim) -> None:
        """Delete a claimed message."""
        with claim.lock:
            (self.dir / claim.name).unlink(missing_ok=True)

    def dead_letter(self, claim: Claim, body: bytes, reason: str) -> None:
        """Record ``body`` and ``reason`` in ``dead/``, then delete the message."""
        text = json.dumps({"body": body.decode("utf-8", "replace"), "reason": reason})
        write_atomic(self.root, self.root / "dead" / f"{claim.name.split('.')[2]}.json", text)
        self.ack(claim)

    def dead_letters(self) -> list[dict[str, str]]:
        """Every dead letter as ``{"body", "reason"}``."""
        return [json.loads(p.read_text("utf-8")) for p in (self.root / "dead").iterdir()]
