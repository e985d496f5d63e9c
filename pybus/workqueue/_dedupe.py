"""``put(..., dedupe_key=)``: a producer that retries a put (after a timeout, a crash, a lost
reply) queues the message once.

The first put with a key remembers (key, message id) for ``window_s`` seconds; a put with the
same key within that window queues nothing and gets the first id back. With a journal, the
keys are written in the same transaction as the message and read back on open, so the window
holds across a producer restart. A plain object without sockets; the queue calls it under its
put lock. Memory is bounded: past ``max_keys`` the oldest keys are forgotten early (counted).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ValidationError
from ..store.journal import Journal

__all__ = ["PutDedupe", "check_dedupe_key", "check_window"]

#: longest dedupe key, in UTF-8 bytes
MAX_DEDUPE_KEY_BYTES = 256


def check_dedupe_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_DEDUPE_KEY_BYTES:
        raise ValidationError(f"dedupe_key must be a non-empty str of at most "
                              f"{MAX_DEDUPE_KEY_BYTES} UTF-8 bytes, got {key!r:.80}")
    return key


def check_window(window_s: object, max_keys: object) -> None:
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) \
            or not 0 < window_s < math.inf:
        raise ValidationError(f"dedupe_window_s must be a finite number of seconds > 0, got "
                              f"{window_s!r}")
    if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
        raise ValidationError(f"max_dedupe_keys must be an int >= 1, got {max_keys!r}")


class PutDedupe:
    """The keys of the last ``window_s`` seconds (module docstring)."""

    def __init__(self, window_s: float, max_keys: int, journal: Journal | None,
                 now_ns: int) -> None:
        self.window_ns = int(window_s * 1e9)
        self.max_keys = max_keys
        self.journal = journal
        # key -> (message id, expiry in ns since the epoch); insertion order is expiry order
        self.keys: dict[str, tuple[int, int]] = {}
        self.duplicates = 0  # puts that queued nothing
        self.evicted = 0  # keys forgotten before their window ended (max_keys)
        if journal is not None:
            for key, mid, expires in journal.dedupe_keys(now_ns):
                self.keys[key] = (mid, expires)

    def first_id(self, key: str, now_ns: int) -> int | None:
        """The id of the message put with ``key`` within the window, or None."""
        self._expire(now_ns)
        hit = self.keys.get(key)
        if hit is None:
            return None
        self.duplicates += 1
        return hit[0]

    def row(self, key: str, mid: int, now_ns: int) -> tuple[str, int, int]:
        """The ``(key, id, expires_ns)`` to journal with message ``mid``."""
        return (key, mid, now_ns + self.window_ns)

    def remember(self, row: tuple[str, int, int]) -> None:
        """After the message was queued (and journaled): its key counts from now on."""
        keys = self.keys
        while len(keys) >= self.max_keys:
            del keys[next(iter(keys))]
            self.evicted += 1
        keys[row[0]] = row[1:]

    def _expire(self, now_ns: int) -> None:
        keys = self.keys
        while keys:
            first = next(iter(keys))
            if keys[first][1] > now_ns:
                return
            del keys[first]

    def stats(self) -> dict[str, Any]:
        return {"put_duplicates": self.duplicates, "dedupe_keys": len(self.keys),
                "dedupe_evicted": self.evicted}
