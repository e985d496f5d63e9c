"""``with obj:`` for every pybus object that holds sockets, files or threads.

One mixin so that each class only says how it closes: entering gives the object, leaving the
block closes it, whatever ended the block.
"""

from __future__ import annotations

from typing import Self

__all__ = ["Closeable"]


class Closeable:
    """``with obj:`` returns ``obj`` and calls ``obj.close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
