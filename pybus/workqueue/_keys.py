"""Per-key ordering of the work queue: messages put with the same ``key`` are handled one at a
time, in put order, by whichever workers; different keys run concurrently.

A plain object without sockets or clocks. Each key is held by one message at a time, from the
moment it is queued (delayed, waiting, in flight, waiting for a retry) until it is finished
(acked or dead-lettered). The messages of a key that arrive meanwhile wait here, in put
order, not in the dispatcher's line, so the dispatcher only ever sees messages that may go.
When the holder finishes, the next one of its key takes the key and joins the line.

What a failure does is the queue's ``on_key_failure``:

* ``"block"`` (the default): the failed message keeps its key through its retries, so the
  key's later messages wait until it is acked or dead-lettered. Order holds strictly.
* ``"continue"``: the failure passes the key to the next message; the failed one, when its
  retry is due, queues behind the messages of its key waiting then. Order holds for messages
  that succeed the first time; a key is never blocked by one poison message.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._records import R_ID, R_KEY, Rec

__all__ = ["KeyLines", "ON_KEY_FAILURE"]

ON_KEY_FAILURE = ("block", "continue")


class KeyLines:
    """Who holds each key, and who waits behind it (module docstring)."""

    __slots__ = ("holder", "waiting", "pass_on_failure", "n_waiting")

    def __init__(self, on_key_failure: str = "block") -> None:
        self.holder: dict[str, Rec] = {}  # key -> the message holding it
        self.waiting: dict[str, deque[Rec]] = {}  # key -> messages behind it, in put order
        self.pass_on_failure = on_key_failure == "continue"
        self.n_waiting = 0  # messages waiting behind the holder of their key

    def admit(self, rec: Rec) -> bool:
        """True when ``rec`` holds its key (it may be queued); False: it waits here."""
        key = rec[R_KEY]
        h = self.holder.get(key)
        if h is None:
            self.holder[key] = rec
            return True
        if h is rec:
            return True
        line = self.waiting.get(key)
        if line is None:
            line = self.waiting[key] = deque()
        line.append(rec)
        self.n_waiting += 1
        return False

    def release(self, rec: Rec) -> Rec | None:
        """``rec`` let go of its key (finished, or failed under ``"continue"``): the next
        message of the key, which now holds it, or None."""
        key = rec[R_KEY]
        if self.holder.get(key) is not rec:
            return None
        line = self.waiting.get(key)
        if not line:
            del self.holder[key]
            return None
        nxt = line.popleft()
        self.n_waiting -= 1
        if not line:
            del self.waiting[key]
        self.holder[key] = nxt
        return nxt

    def n_blocked(self, failures: dict[int, Any]) -> int:
        """Keys whose holder has failed and waits for its retry (or its dead-lettering).
        Any thread may ask: it reads snapshots (copied in C, under the GIL)."""
        if not failures:
            return 0
        failed = failures.copy()
        return sum(1 for h in list(self.holder.values()) if h[R_ID] in failed)
