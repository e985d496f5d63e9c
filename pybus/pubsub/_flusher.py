"""The flusher side of a Publisher: the thread that sends the tail of a burst, and the
position frames that fall due while nothing is published.

The publishing thread sends by itself under load (the batcher reports READY); this module owns
what happens when publishing pauses: ``_flusher_loop`` (the thread's body), the mixin methods it
calls on the publisher (``_tick``, ``_position_tick``), and their timing constants. The asyncio
publisher replaces the thread with loop timers (``pybus.pubsub.aio``) and reuses the rest.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._native import Batcher
from .._native._batch import set_thread_timer_slack
from ..errors import ClosedError

log = logging.getLogger("pybus.publisher")

# How often the flusher thread looks for acks while the window holds the tail of a burst.
_WINDOW_RETRY_S = 0.0005
# Longest period of the flusher thread while the publishing thread sends by itself.
_MAX_TICK_S = 0.001
# Timer slack of the flusher thread (see _flusher_loop), ns.
_FLUSHER_TIMER_SLACK_NS = 1000
_time_ns = time.time_ns  # the batcher's clock (CLOCK_REALTIME)
_monotonic_ns = time.monotonic_ns


def _flusher_loop(
    ref: weakref.ref[FlusherMixin], wake: threading.Event, stop: threading.Event
) -> None:
    """Body of a publisher's flusher thread; holds the publisher only while flushing.

    Idle, it sleeps on ``wake``. Armed by the first pending record of a batch, it wakes after
    the flush delay; if the last publish is at least that long ago (the burst ended) it sends
    what is pending, so the tail of a burst leaves about ``idle_us`` (``batch_hold_us``) after the
    last publish. ("Nothing was published since the arming" was the wrong test: a paced
    publisher, a burst every ~100 us, never looked quiet, and each burst's tail waited for the
    next burst's max_delay_us: 155 us instead of ~30 us at 20k msg/s, measured.)

    While publishing goes on, the publishing thread sends by itself (the batcher reports READY
    once the oldest record is ``max_delay_us`` old), and this thread backs off (doubling its
    period up to ``_MAX_TICK_S``) and stays armed across frames: each of its wake-ups costs a
    GIL hand-off (up to the 5 ms switch interval; a 40 % throughput loss when it flushed under
    load, 10-40 ns of CPU per message when it was re-armed at every frame, both measured), so
    it stays out of the way of a busy publisher. The price: the tail left when a long burst
    stops waits up to ``_MAX_TICK_S``.

    Its waits are a few tens of microseconds: with Linux's default timer slack (50 us) each
    one ends ~80 us late (measured: a 20-us wait took ~105 us), which made the tail of every
    burst wait ~5x idle_us; a 1-us slack for this thread alone brings that to ~45 us.
    """
    set_thread_timer_slack(_FLUSHER_TIMER_SLACK_NS)
    while True:
        pub = ref()
        if pub is None:
            return
        timeout = pub._position_wait()
        del pub
        woke = wake.wait(timeout)
        if stop.is_set():
            return
        if not woke:  # position frames are due (and nothing woke us)
            pub = ref()
            if pub is None:
                return
            try:
                pub._position_tick()
            except ClosedError:
                return
            except Exception:  # never let the thread die silently
                log.exception("pybus publisher flusher failed")
            finally:
                del pub
            continue
        wake.clear()
        period: float | None = None
        while True:
            pub = ref()
            if pub is None:
                return
            urgent = pub._urgent
            try:
                if period is None:
                    # First look of an arming: due first_tick after the record that armed us,
                    # not after this thread woke up (waking took ~50 us, measured).
                    period = pub._first_tick_s
                    wait = period - (_time_ns() - pub._batcher.oldest_pending_ns) / 1e9
                else:
                    wait = period
            except Exception:  # closed underneath us
                return
            del pub
            if not urgent and wait > 0:
                stop.wait(wait)
            if stop.is_set():
                return
            pub = ref()
            if pub is None:
                return
            try:
                period = pub._tick(period)
            except ClosedError:
                return
            except Exception:  # never let the thread die silently with data pending
                log.exception("pybus publisher flusher failed")
                period = None
            finally:
                del pub
            if period is None:
                break



class FlusherMixin:
    """Publisher methods driven by the flusher thread (or the asyncio publisher's timers)."""

    if TYPE_CHECKING:
        _batcher: Batcher
        _send_lock: threading.Lock
        _wake: threading.Event
        _stop: threading.Event
        _thread: threading.Thread | None
        _closed: bool
        _urgent: bool
        _armed: bool
        _backing_off: bool
        _holding: bool
        _window_blocked: bool
        _first_tick_s: float
        _max_tick_s: float
        _quiet_ns: int
        _position_due: int | None
        publisher_id: int

        def _flush_locked(self) -> None: ...
        def _send_positions(self, now_ns: int, force: bool = False) -> None: ...

    def _start_flusher(self) -> None:
        """Start the thread that sends the tail of a burst (asyncio twin: a loop timer)."""
        self._thread = threading.Thread(
            target=_flusher_loop,
            args=(weakref.ref(self), self._wake, self._stop),
            name=f"pybus-flusher-{self.publisher_id:016x}",
            daemon=True,
        )
        self._thread.start()

    def _schedule_positions(self) -> None:
        """Position frames fall due at ``_position_due``: make sure someone sends them (the
        flusher thread, which may be asleep without a timeout, reads it when woken)."""
        self._wake.set()

    def _position_wait(self) -> float | None:
        """Flusher thread: seconds until position frames are due (None: none scheduled)."""
        due = self._position_due
        return None if due is None else max(0.0, (due - _monotonic_ns()) / 1e9)

    def _position_tick(self) -> None:
        """Flusher thread: send the position frames due (after what is pending)."""
        with self._send_lock:
            self._position_tick_locked()

    def _position_tick_locked(self) -> None:
        if self._closed:
            raise ClosedError("closed")
        if self._batcher.pending_records:
            self._flush_locked()  # sends the due positions too
        else:
            self._send_positions(_monotonic_ns())


    def _tick(self, period: float) -> float | None:
        """Flusher thread: send what is pending if publishing has paused for first_tick.

        Returns the next period, or None once nothing is pending (the thread then sleeps).
        """
        urgent = self._urgent
        self._urgent = False
        if not self._send_lock.acquire(False):
            # another thread is sending, and takes what is pending: back off rather than
            # queue for the lock (waiting here, then flushing little, while the publishing
            # thread queued behind us cost a many-topic burst a third of its rate, measured)
            self._backing_off = True
            return min(period * 2, self._max_tick_s)
        with _Held(self._send_lock):
            if self._closed:
                raise ClosedError("closed")
            b = self._batcher
            if b.pending_records:
                if urgent or self._holding or self._paused(b):
                    self._flush_locked()
                    if self._window_blocked:
                        # the tail waits for the window: look again soon (not waiting for
                        # acks here, holding the lock a publishing thread needs: that cost a
                        # many-topic burst a third of its rate, measured)
                        return _WINDOW_RETRY_S
                    if not urgent:
                        # publishing had stopped for first_tick: the next message, if it
                        # comes idle_us after the last one, finds the publisher idle and goes
                        # out at once (else it would wait for this thread, ~50-80 us)
                        b.mark_quiet()
                    period = self._first_tick_s
                    self._backing_off = False
                else:  # still publishing: that thread sends by itself, back off
                    self._backing_off = True
                    return min(period * 2, self._max_tick_s)
            elif self._backing_off and not self._paused(b):
                # The publishing thread drained by itself and is busy: stay armed on the
                # backed-off period. Disarming here re-armed (and woke) this thread at the
                # next frame's first record, a GIL hand-off per frame that cost 10-40 ns of
                # CPU per message under sustained load (measured).
                return min(period * 2, self._max_tick_s)
            self._backing_off = False
            # disarm, then look again: a record that arrived meanwhile re-arms (no lost wake-up)
            self._armed = False
            if b.pending_records:
                self._armed = True
                return period
            return None

    def _paused(self, b: Batcher) -> bool:
        """Whether the last publish is first_tick old: a burst ended (else one goes on)."""
        return _time_ns() - b.last_append_ns >= self._quiet_ns



class _Held:
    """Releases a lock acquired beforehand when the block ends."""

    __slots__ = ("_lock",)

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

