"""One test's own bus: a fresh ZeroMQ context, fresh ``inproc://`` endpoints, and every
endpoint object it made closed at the end (the ``bus`` fixture of the pytest plugin)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import zmq

from ..errors import TimeoutError
from ..pubsub.publisher import Publisher
from ..pubsub.subscriber import Subscriber
from ..rpc.client import Client
from ..rpc.server import Server
from ..workqueue.queue import WorkQueue
from ..workqueue.worker import Worker

__all__ = ["Bus"]

T = TypeVar("T")

# how long a helper waits for a handshake (a subscription, a worker's welcome) before failing
_HANDSHAKE_S = 10.0


class Bus:
    """Endpoints and objects for one test, all on one private context (so ``inproc://``
    peers find each other and nothing leaks into another test).

    Every object made here reports to no metrics registry unless ``registry=`` is given, and
    :meth:`close` closes them all, newest first, then terminates the context.
    """

    def __init__(self, name: str = "test") -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self._prefix = f"inproc://pybus-{name}-{uuid.uuid4().hex[:12]}"
        self._n = itertools.count(1)
        self._closers: list[Callable[[], None]] = []

    def endpoint(self, label: str = "ep") -> str:
        """A fresh ``inproc://`` endpoint, unique in the process."""
        return f"{self._prefix}-{label}-{next(self._n)}"

    def _keep(self, obj: T, close: Callable[[], None]) -> T:
        self._closers.append(close)
        return obj

    def _defaults(self, kw: dict[str, Any]) -> dict[str, Any]:
        kw.setdefault("context", self.context)
        kw.setdefault("registry", False)
        return kw

    # -- publish/subscribe --------------------------------------------------------------
    def publisher(self, endpoint: str | None = None, **kw: Any) -> Publisher:
        """A Publisher bound to ``endpoint`` (default: a fresh one)."""
        pub = Publisher(endpoint or self.endpoint("pub"), **self._defaults(kw))
        return self._keep(pub, lambda: pub.close(linger_ms=0))

    def subscriber(self, to: Publisher | str | Sequence[str], topics: Sequence[str] = ("#",),
                   **kw: Any) -> Subscriber:
        """A Subscriber connected to a publisher (or endpoints) for ``topics``."""
        endpoints = to.endpoints if isinstance(to, Publisher) else to
        sub = Subscriber(endpoints, topics=list(topics), **self._defaults(kw))
        return self._keep(sub, sub.close)

    def pubsub(self, topics: Sequence[str] = ("#",), *, n_subscribers: int = 1,
               pub_options: Mapping[str, Any] | None = None, **sub_options: Any
               ) -> tuple[Publisher, list[Subscriber]]:
        """A publisher and ``n_subscribers`` subscribers, returned once the publisher has seen
        every subscription (the handshake: the first message published reaches them all)."""
        pub = self.publisher(**dict(pub_options or {}))
        subs = [self.subscriber(pub, topics, **sub_options) for _ in range(n_subscribers)]
        if pub.wait_for_subscribers(n_subscribers, timeout=_HANDSHAKE_S) < n_subscribers:
            raise TimeoutError(f"{n_subscribers} subscribers did not subscribe within "
                               f"{_HANDSHAKE_S} s")
        return pub, subs

    # -- request/reply ------------------------------------------------------------------
    def server(self, handlers: Mapping[str, Callable[[Any], Any]] | None = None,
               endpoint: str | None = None, **kw: Any) -> Server:
        """A started Server with ``handlers`` registered (more may be added later)."""
        srv = Server(endpoint or self.endpoint("rpc"), **self._defaults(kw))
        self._keep(srv, srv.stop)
        for name, fn in (handlers or {}).items():
            srv.add_handler(name, fn)
        return srv.start()

    def client(self, to: Server | str, **kw: Any) -> Client:
        """A Client of a server (or endpoint)."""
        endpoint = to.endpoint if isinstance(to, Server) else to
        kw.setdefault("timeout_s", _HANDSHAKE_S)
        c = Client(endpoint, **self._defaults(kw))
        return self._keep(c, c.close)

    # -- work queue ---------------------------------------------------------------------
    def work_queue(self, endpoint: str | None = None, **kw: Any) -> WorkQueue:
        q = WorkQueue(endpoint or self.endpoint("wq"), **self._defaults(kw))
        return self._keep(q, q.close)

    def worker(self, to: WorkQueue | str, handler: Callable[[Any], Any], **kw: Any) -> Worker:
        """A started Worker of a queue (or endpoint), returned once the queue welcomed it."""
        endpoint = to.endpoint if isinstance(to, WorkQueue) else to
        w = Worker(endpoint, handler, **self._defaults(kw))
        self._keep(w, w.stop)
        w.start()
        if not w.wait_ready(_HANDSHAKE_S):
            raise TimeoutError(f"the queue at {endpoint} did not welcome the worker within "
                               f"{_HANDSHAKE_S} s")
        return w

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Close every object made here (newest first), then the context; idempotent."""
        closers, self._closers = self._closers, []
        errors: list[BaseException] = []
        for close in reversed(closers):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - close the rest, then report
                errors.append(exc)
        if not self.context.closed:
            self.context.term()
        if errors:
            raise errors[0]

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
