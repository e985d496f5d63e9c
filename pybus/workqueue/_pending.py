"""The work queue's waiting line once priorities are in use: highest priority first, FIFO
within a priority, and aging so that no steady stream of urgent work starves the rest.

The dispatcher keeps a plain deque until the first message with a priority other than 0
arrives (the common case pays nothing), then swaps in :class:`PriorityPending`, which has the
deque methods the dispatcher uses. A plain object without sockets or clocks: aging counts
messages handed out, not seconds, so the rule is exact and testable.

The aging rule: a waiting message's priority rises by one for every ``aging_n`` messages
handed out since it joined the line (up to 9). The line hands out the message whose risen
priority is highest; among equals, the one that joined first. So a message of priority ``p``
is handed out after at most ``(9 - p) * aging_n`` others plus those that joined before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ._records import R_PRIO, Rec

__all__ = ["LEVELS", "PriorityPending"]

#: priorities are 0 (the default, lowest) to 9 (highest)
LEVELS = 10


class PriorityPending:
    """Pending messages by priority; ``popleft`` applies the aging rule (module docstring)."""

    __slots__ = ("levels", "n", "tick", "aging_n")

    def __init__(self, first: Iterable[Rec], aging_n: int) -> None:
        # per level, (tick at which the message joined, message), in joining order
        self.levels: list[deque[tuple[int, Rec]]] = [deque() for _ in range(LEVELS)]
        self.n = 0
        self.tick = 0  # messages handed out so far
        self.aging_n = aging_n
        self.extend(first)

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def append(self, rec: Rec) -> None:
        self.levels[rec[R_PRIO]].append((self.tick, rec))
        self.n += 1

    def extend(self, recs: Iterable[Rec]) -> None:
        for rec in recs:
            self.append(rec)

    def extendleft(self, recs: Iterable[Rec]) -> None:
        """Back to the front of their levels (a lost worker's messages), as old as the
        oldest there: they had waited before."""
        for rec in recs:
            level = self.levels[rec[R_PRIO]]
            level.appendleft((level[0][0] if level else self.tick, rec))
            self.n += 1

    def popleft(self) -> Rec:
        if not self.n:
            raise IndexError("pop from an empty queue")
        tick, aging_n = self.tick, self.aging_n
        best = -1
        best_key = (-1, 0)
        for p, level in enumerate(self.levels):
            if level:
                joined = level[0][0]
                key = (min(LEVELS - 1, p + (tick - joined) // aging_n), -joined)
                if key > best_key:
                    best, best_key = p, key
        self.n -= 1
        self.tick = tick + 1
        return self.levels[best].popleft()[1]

    def depth_by_priority(self) -> list[int]:
        """Waiting messages per priority, 0 to 9."""
        return [len(level) for level in self.levels]
