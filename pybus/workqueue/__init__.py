"""The at-least-once work queue (``docs/wire-workqueue.md``): :class:`WorkQueue` and
:class:`Worker`, and the idempotency store a worker may ask (``docs/workqueue.md``)."""

from .idempotency import IdempotencyStore, SQLiteIdempotency, current_message, message_key
from .queue import WorkQueue
from .worker import Worker

__all__ = ["WorkQueue", "Worker", "IdempotencyStore", "SQLiteIdempotency", "current_message",
           "message_key"]
