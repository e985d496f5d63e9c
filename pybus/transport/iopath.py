"""``io_path``, the read-only answer to "does this object's socket I/O take the libzmq fast
path?", documented once for every class that has one."""

from __future__ import annotations

__all__ = ["IOPath"]


class IOPath:
    """Mixin giving ``io_path``: a class sets ``_io_path`` when it opens (or replaces) its
    socket, or overrides :meth:`_current_io_path` when the answer follows its state."""

    _io_path: str

    @property
    def io_path(self) -> str:
        """``"libzmq"`` when this object's hot-path socket I/O calls libzmq directly (the fast
        path), ``"pyzmq"`` when it goes through pyzmq; see "The libzmq fast path" in
        docs/operations.md for when each is taken."""
        return self._current_io_path()

    def _current_io_path(self) -> str:
        return self._io_path
