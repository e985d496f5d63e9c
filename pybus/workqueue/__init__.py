"""The at-least-once work queue (``docs/wire-workqueue.md``): :class:`WorkQueue` and
:class:`Worker`."""

from .queue import WorkQueue
from .worker import Worker

__all__ = ["WorkQueue", "Worker"]
