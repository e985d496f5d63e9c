"""A private asyncio loop on a daemon thread: how the sync JetStream classes drive nats-py (which
is asyncio only) without the user seeing an event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..errors import ClosedError
from ..errors import TimeoutError as BusTimeoutError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """One event loop on one daemon thread. :meth:`run` blocks the caller until a coroutine
    finishes there; :meth:`submit` returns its future. Not for use from the loop itself."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # cancel what is left so no task outlives its loop, then close the loop
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise ClosedError("the JetStream connection is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result; past ``timeout_s`` it is cancelled
        and :class:`pybus.TimeoutError` raised."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop (it would deadlock)")
        fut = self.submit(coro)
        # wait, then look: fut.result(timeout_s) raises the same TimeoutError class (3.11+) for
        # the bound passing and for a TimeoutError the coroutine itself raised
        if not concurrent.futures.wait([fut], timeout_s).done:
            fut.cancel()
            raise BusTimeoutError(f"no answer from the NATS server within {timeout_s} s")
        return fut.result()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the loop (tasks still running are cancelled) and join the thread."""
        if self._closed:
            return
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
