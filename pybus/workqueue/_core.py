"""The work queue's delivery state and decisions, without sockets.

:class:`DispatchCore` owns everything the dispatcher thread of :class:`pybus.WorkQueue` decides:
which worker gets the next batch (credit per worker, ``max_in_flight``), acks and nacks,
redelivery from a timer heap after the retry policy's delay, ack deadlines, dead-worker
detection from heartbeats, dead-lettering, and which journal rows are finished. It reads the
work-queue frames that workers send (``pybus.wire.workqueue``) and hands the frames it answers
with to a ``send(ident, frame) -> bool`` callable; the socket loop in ``queue.py`` owns the
ROUTER, the clock (every method takes ``now``, the loop's reading of its steady clock in
seconds; this module reads no clock but the wall time of failures) and the thread. Only
the dispatcher thread calls it; other threads only read its counters.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from ..errors import ErrorCode, FrameError, RemoteError
from ..store.journal import Journal
from ..wire import workqueue as P
from ._keys import KeyLines
from ._pending import PriorityPending
from ._policy import RetryPlan, Throttle
from ._records import (
    R_BATCH,
    R_BORN,
    R_DUE,
    R_FLAGS,
    R_HEADERS,
    R_ID,
    R_KEY,
    R_PAYLOAD,
    R_PRIO,
    R_SENT,
    R_TOPIC,
    R_WORKER,
    Failure,
    JBatch,
    Rec,
    WorkerState,
    rid,
)

__all__ = ["DispatchCore", "MAX_BATCH"]

log = logging.getLogger("pybus.workqueue")

#: most messages in one DISPATCH frame
MAX_BATCH = 1024
#: a frame carries at least this much work, by the measured time per message (see dispatch)
FRAME_WORK_S = 0.005
#: when the DLQ refuses a message, it is kept and offered again after this delay
_DLQ_RETRY_S = 1.0


class DispatchCore:
    """Delivery state of one work queue; see the module docstring.

    ``send(ident, frame)`` sends one frame to a worker without blocking and returns False when
    the worker cannot be reached (then it is presumed gone and its messages go back to the
    queue). ``origin`` names the queue in dead letters.
    """

    def __init__(
        self,
        send: Callable[[bytes, bytes], bool],
        plan: RetryPlan,
        throttle: Throttle,
        dlq: Any,
        journal: Journal | None,
        origin: str,
        ack_timeout_s: float,
        heartbeat_interval_s: float,
        heartbeat_liveness: int,
        max_in_flight: int,
        priority_aging_n: int = 1000,
        on_key_failure: str = "block",
    ) -> None:
        self._out = send
        self.priority_aging_n = priority_aging_n
        self._plan, self.throttle = plan, throttle
        self._dlq, self._journal, self._origin = dlq, journal, origin
        # read at every decision; WorkQueue's attributes of the same names are these
        self.ack_timeout_s, self.max_in_flight = ack_timeout_s, max_in_flight
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_liveness = heartbeat_liveness

        self.live: dict[int, Rec] = {}
        # a deque until a message with a priority arrives, then a PriorityPending
        self.pending: deque[Rec] | PriorityPending = deque()
        # (due, id, rec): messages held until a wall-clock time (put's delay_s/not_before),
        # earliest first; they join `pending` when due (release_due)
        self.delayed: list[tuple[int, int, Rec]] = []
        # per-key ordering: only the message holding its key is in delayed/pending/in flight
        self.keys = KeyLines(on_key_failure)
        # (due, seq, rec, to_dlq): redeliver rec, or (to_dlq) offer it to the DLQ again
        self.timers: list[tuple[float, int, Rec, bool]] = []
        self._timer_seq = itertools.count()
        self.workers: dict[bytes, WorkerState] = {}
        self.in_flight = 0
        self.throttled = False  # the last dispatch stopped on the breaker or rate limiter
        # a worker's time per message, seconds, smoothed (1/8 per ack frame): the time
        # between two of its ack frames over the messages of the second, taken while it
        # was busy throughout; starts slow, so the first messages are spread evenly
        self.service_s = 1.0
        self.jtouched: list[JBatch] = []  # batches with finished messages not yet flushed
        self.jdel_since = 0.0
        self.jdone = 0
        # journaled retries: rows to write, ids with a row, finished ids whose row goes
        self.jretries: list[tuple[int, list[Any]]] = []
        self.jretried: set[int] = set()
        self.jretried_done: list[int] = []
        self.failures: dict[int, Failure] = {}  # only for messages that failed
        #: messages finished (acked or dead-lettered; with a journal: deleted from it)
        self.n_done = 0
        # counters (written by the dispatcher thread; read anywhere)
        self.c: dict[str, int] = dict.fromkeys(
            (
                "dispatched",
                "acked",
                "nacked",
                "redelivered",
                "dead_lettered",
                "duplicates",
                "decode_errors",
                "late_acks",
                "stale_nacks",
                "ack_timeouts",
                "workers_lost",
                "unknown_peers",
                "dlq_errors",
            ),
            0,
        )

    def recover(self, journal: Journal, wall_ns: int) -> int:
        """Queue the messages left in ``journal`` (before the dispatcher starts; ``wall_ns``:
        the wall clock, for the delayed ones); their count."""
        recovered: list[Rec] = []
        for first, _n, rows in journal.recover():
            b = JBatch(first, len(rows))
            if not rows:  # nothing left to do: let the next flush delete it
                b.touched = True
                self.jtouched.append(b)
            # a journal written before delays, priorities and keys has five to seven fields
            recovered += [[r[0], 0, r[1], r[2], r[3], r[4], r[5], None, 0.0, 0.0, b,
                           r[6] if len(r) > 6 else 0, r[7] if len(r) > 7 else 0,
                           r[8] if len(r) > 8 else None]
                          for r in rows]
        self.live.update(zip(map(rid, recovered), recovered, strict=True))
        self._recover_retries(journal, wall_ns)
        self.enqueue(recovered, wall_ns)
        return len(recovered)

    def _recover_retries(self, journal: Journal, wall_ns: int) -> None:
        """Messages that were waiting for a retry wait until its time again, with the attempts
        they had made (the retry policy goes on counting from there)."""
        for mid, (due, failures, etype, emsg, ecode, first, last) in journal.retries().items():
            rec = self.live.get(mid)
            if rec is None:  # finished before the row went (a flush in between)
                self.jretried_done.append(mid)
                continue
            rec[R_DUE] = max(rec[R_DUE], due)
            f = self.failures[mid] = Failure()
            f.failures, f.first, f.last, f.error = failures, first, last, (etype, emsg, ecode)
            self.jretried.add(mid)

    def enqueue(self, recs: list[Rec], wall_ns: int) -> None:
        """Messages with a delay, a priority or a key (or recovered ones, which may have
        them): those behind the holder of their key wait in ``keys``; of the others, due ones
        go to ``pending``, the rest are held in ``delayed`` until their time. The queue hands
        plain messages straight to ``pending``."""
        admit = self.keys.admit
        recs = [r for r in recs if r[R_KEY] is None or admit(r)]
        if type(self.pending) is deque and any(r[R_PRIO] for r in recs):
            # the first prioritized message: from now on the line orders by priority
            self.pending = PriorityPending(self.pending, self.priority_aging_n)
        if not any(r[R_DUE] > wall_ns for r in recs):  # the common case: none delayed
            self.pending.extend(recs)
            return
        for r in recs:
            if r[R_DUE] > wall_ns:
                heapq.heappush(self.delayed, (r[R_DUE], r[R_ID], r))
            else:
                self.pending.append(r)

    def release_due(self, wall_ns: int) -> None:
        """Every held message whose time has come joins ``pending``, earliest first."""
        delayed, live = self.delayed, self.live
        while delayed and delayed[0][0] <= wall_ns:
            _, mid, rec = heapq.heappop(delayed)
            if live.get(mid) is rec:
                self.pending.append(rec)

    # ------------------------------------------------------------------ frames from workers

    def handle(self, ident: bytes, body: bytes, now: float) -> None:
        """One frame from worker ``ident``. Raises FrameError or ValidationError when it is
        malformed (the caller counts it)."""
        cmd = P.command(body)
        w = self.workers.get(ident)
        if w is not None:
            w.last_recv = now
        if cmd == P.ACK:
            acks, dups = P.parse_ack(body)
            self._on_acks(w, acks, dups, now)
        elif cmd == P.NACK:
            self._on_nacks(w, P.parse_nack(body), now)
        elif cmd == P.HEARTBEAT:
            if w is None:
                self.c["unknown_peers"] += 1
                self._out(ident, P.RECONNECT_FRAME)  # errors: nothing to do
        elif cmd == P.HELLO:
            credit = P.parse_hello(body)
            if w is not None:  # a second HELLO: the worker restarted its session
                self.lose_worker(w, count=False)
            w = WorkerState(ident, credit, now)
            self.workers[ident] = w
            hb_ms = max(1, round(self.heartbeat_interval_s * 1000))
            self._send(w, P.welcome(hb_ms, self.heartbeat_liveness, credit), now)
        elif cmd == P.BYE:
            if w is not None:
                self.lose_worker(w, count=False)
        else:
            raise FrameError(f"unknown work-queue command {cmd:#x} from a worker")

    def _send(self, w: WorkerState, frame: bytes, now: float) -> bool:
        if self._out(w.ident, frame):
            w.last_send = now
            return True
        self.lose_worker(w)  # EHOSTUNREACH: the peer is gone
        return False

    def _on_acks(
        self, w: WorkerState | None, acks: list[int], dups: list[int], now: float
    ) -> None:
        live = self.live
        failures = self.failures
        done = 0
        late = 0
        in_flight = self.in_flight
        journaled = self._journal is not None
        keyed = bool(self.keys.holder)
        released: list[Rec] = []  # the next message of each key let go
        for ids in (acks, dups):
            for mid in ids:
                rec = live.pop(mid, None)
                if rec is None:
                    late += 1
                    continue
                owner = rec[R_WORKER]
                if owner is not None:
                    del owner.inflight[mid]
                    in_flight -= 1
                    rec[R_WORKER] = None
                if failures:
                    failures.pop(mid, None)
                if journaled:
                    self._jfinish(rec, now)
                if keyed and rec[R_KEY] is not None:
                    nxt = self.keys.release(rec)
                    if nxt is not None:
                        released.append(nxt)
                done += 1
        self.in_flight = in_flight
        if released:
            self.enqueue(released, time.time_ns())
        if w is not None:
            k = len(acks) + len(dups)
            if w.held > k and w.last_ack and k:  # it had more to do all along: a sample
                self.service_s += ((now - w.last_ack) / k - self.service_s) * 0.125
            w.last_ack = now
            w.held = max(0, w.held - k)
        c = self.c
        c["acked"] += done
        c["duplicates"] += len(dups)
        c["late_acks"] += late
        if done and self.throttle.breaker is not None:
            self.throttle.record_success(done)
        self._finish(done)

    def _on_nacks(
        self, w: WorkerState | None, entries: list[tuple[int, str, str, int, bool]], now: float
    ) -> None:
        if w is not None:
            w.held = max(0, w.held - len(entries))
        for mid, etype, emsg, ecode, retryable in entries:
            rec = self.live.get(mid)
            if rec is None or w is None or rec[R_WORKER] is not w:
                # finished meanwhile, or already handed to someone else
                self.c["stale_nacks"] += 1
                continue
            w.inflight.pop(mid, None)
            self.in_flight -= 1
            rec[R_WORKER] = None
            self.c["nacked"] += 1
            self.throttle.record_failure()
            self._fail(rec, etype, emsg, ecode, retryable, now)

    # ------------------------------------------------------------------ failures

    def _fail(
        self, rec: Rec, etype: str, emsg: str, ecode: int, retryable: bool, now: float
    ) -> None:
        wall = time.time()  # for the dead letter's first/last failure times
        f = self.failures.get(rec[R_ID])
        if f is None:
            f = self.failures[rec[R_ID]] = Failure()
            f.first = wall
        f.failures += 1
        f.last = wall
        f.error = (etype, emsg, ecode)
        err = RemoteError(emsg, remote_type=etype, remote_code=ecode, retryable=retryable)
        delay = self._plan.next_delay(f, now - rec[R_BORN], err)
        if delay is None:
            self._dead_letter(rec, err, now)
        else:
            heapq.heappush(self.timers, (now + delay, next(self._timer_seq), rec, False))
            if self._journal is not None:  # the retry's time and attempts survive a restart
                self.jretries.append((rec[R_ID], [int(wall * 1e9 + delay * 1e9), f.failures,
                                                  etype, emsg, ecode, f.first, f.last]))
                self.jretried.add(rec[R_ID])
                self._jtouch(rec[R_BATCH], now)
            if rec[R_KEY] is not None and self.keys.pass_on_failure:
                self._pass_key(rec)

    def _pass_key(self, rec: Rec) -> None:
        """``rec`` lets go of its key: the next message of the key joins the line."""
        nxt = self.keys.release(rec)
        if nxt is not None:
            self.enqueue([nxt], time.time_ns())

    def _dead_letter(self, rec: Rec, err: RemoteError | None, now: float) -> None:
        if self._dlq is not None:
            f = self.failures.get(rec[R_ID]) or Failure()
            etype, emsg, ecode = f.error
            try:
                self._dlq.add(
                    rec[R_TOPIC],
                    rec[R_PAYLOAD],
                    id=rec[R_ID],
                    headers=msgpack.unpackb(rec[R_HEADERS]) if rec[R_HEADERS] else None,
                    error_type=etype,
                    error_message=emsg,
                    error_code=ecode,
                    attempts=f.failures,
                    first_failure=f.first,
                    last_failure=f.last,
                    origin=self._origin,
                    payload_format="msgpack" if rec[R_FLAGS] & P.FLAG_MSGPACK else "raw",
                )
            except Exception as exc:  # DLQ full (on_full="reject") or its file failed
                # Never drop it: keep the message and try the dead-lettering again later.
                self.c["dlq_errors"] += 1
                log.warning("cannot dead-letter message %d (%s); retrying in %.1f s",
                            rec[R_ID], exc, _DLQ_RETRY_S)
                heapq.heappush(
                    self.timers, (now + _DLQ_RETRY_S, next(self._timer_seq), rec, True)
                )
                return
        else:
            log.warning(
                "message %d on %r dead-lettered after %d attempts (%s) and dropped: the "
                "WorkQueue has no dlq", rec[R_ID], rec[R_TOPIC],
                self.failures[rec[R_ID]].failures, err,
            )
        self.live.pop(rec[R_ID], None)
        self.failures.pop(rec[R_ID], None)
        if rec[R_KEY] is not None:
            self._pass_key(rec)
        self.c["dead_lettered"] += 1
        if self._journal is not None:
            self._jfinish(rec, now)
        self._finish(1)

    def fire_timers(self, now: float) -> None:
        """Redeliver (or offer the DLQ again) every message whose timer is due."""
        timers = self.timers
        live = self.live
        due = []
        while timers and timers[0][0] <= now:
            _, _, rec, to_dlq = heapq.heappop(timers)
            if live.get(rec[R_ID]) is rec and rec[R_WORKER] is None:
                if to_dlq:
                    self._dead_letter(rec, None, now)
                else:
                    due.append(rec)
        if due and self.keys.pass_on_failure:  # they let go of their keys: take them again
            admit = self.keys.admit
            due = [r for r in due if r[R_KEY] is None or admit(r)]
        self.pending.extend(due)

    # ------------------------------------------------------------------ workers

    def lose_worker(self, w: WorkerState, count: bool = True) -> None:
        """Forget ``w``; what it held goes back to the front of the queue (no attempt used)."""
        if self.workers.get(w.ident) is not w:
            return
        del self.workers[w.ident]
        back = list(w.inflight.values())
        w.inflight.clear()
        for rec in back:
            rec[R_WORKER] = None
        self.in_flight -= len(back)
        # oldest first, ahead of new work: they have waited longest
        self.pending.extendleft(reversed(back))
        if count:
            self.c["workers_lost"] += 1

    def housekeeping(self, now: float) -> None:
        """Heartbeats out, silent workers presumed dead, expired ack deadlines failed."""
        dead_after = self.heartbeat_interval_s * self.heartbeat_liveness
        for w in list(self.workers.values()):
            if now - w.last_recv > dead_after:
                self.lose_worker(w)
                continue
            if now - w.last_send >= self.heartbeat_interval_s:
                if not self._send(w, P.HEARTBEAT_FRAME, now):
                    continue
            if w.inflight:
                self._expire(w, now)

    def _expire(self, w: WorkerState, now: float) -> None:
        limit = now - self.ack_timeout_s
        expired = []
        for rec in w.inflight.values():
            if rec[R_SENT] > limit:
                break  # dispatch order: the rest are younger
            expired.append(rec)
        for rec in expired:
            del w.inflight[rec[R_ID]]
            self.in_flight -= 1
            rec[R_WORKER] = None
            self.c["ack_timeouts"] += 1
            self._fail(
                rec,
                "AckTimeout",
                f"no ack within ack_timeout_s={self.ack_timeout_s}s",
                int(ErrorCode.TIMEOUT),
                True,
                now,
            )

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, now: float) -> None:
        """Send pending messages to the workers with free credit, as much as may go now."""
        self.throttled = False
        pending = self.pending
        live = self.live
        throttle = self.throttle
        c = self.c
        while pending:
            room = self.max_in_flight - self.in_flight
            if room <= 0:
                return
            best = None
            best_free = 0
            n_free = 0
            for w in self.workers.values():
                free = w.capacity - w.held
                if free > 0:
                    n_free += 1
                    if free > best_free:
                        best, best_free = w, free
            if best is None:
                return
            if throttle.active:
                room = min(room, throttle.allowance(now))
                if room <= 0:
                    self.throttled = True
                    return
            # share the backlog between the workers that have room. Slow handlers need the
            # even share (one worker must not sit on what eight could run); with fast ones a
            # small share costs each message a frame, a wake-up and an ack of its own (a
            # keyed line is let go a few at a time by acks), so a frame carries FRAME_WORK_S
            # of work
            share = max(-(-len(pending) // n_free), int(FRAME_WORK_S / self.service_s))
            n = min(best_free, room, MAX_BATCH, share)
            entries: list[list[Any]] = []
            popleft = pending.popleft
            live_get = live.get
            add = entries.append
            inflight = best.inflight
            redelivered = 0
            k = 0
            # the hot loop: indices are the R_* constants, spelled out for speed
            while k < n and pending:
                rec = popleft()
                mid = rec[0]
                if live_get(mid) is not rec or rec[7] is not None:
                    continue  # finished or re-dispatched meanwhile
                d = rec[1] + 1
                rec[1] = d
                if d == 1:
                    rec[9] = now  # R_BORN
                else:
                    redelivered += 1
                rec[7] = best  # R_WORKER
                rec[8] = now  # R_SENT
                inflight[mid] = rec
                add(rec[:7])
                k += 1
            if throttle.active:
                throttle.consume(k)
            if not k:
                return
            best.held += k
            self.in_flight += k
            c["dispatched"] += k
            c["redelivered"] += redelivered
            self._send(best, P.dispatch(entries), now)

    # ------------------------------------------------------------------ journal

    def _jfinish(self, rec: Rec, now: float) -> None:
        b: JBatch = rec[R_BATCH]
        b.remaining -= 1
        b.done.append(rec[R_ID])
        if self.jretried and rec[R_ID] in self.jretried:
            self.jretried.discard(rec[R_ID])
            self.jretried_done.append(rec[R_ID])
        if not b.touched:
            self._jtouch(b, now)

    def _jtouch(self, b: JBatch, now: float) -> None:
        """``b`` has something for the next journal flush."""
        if not b.touched:
            if not self.jtouched:
                self.jdel_since = now
            b.touched = True
            self.jtouched.append(b)

    def _finish(self, n: int) -> None:
        # with a journal a message counts as finished once its delete is committed
        if self._journal is None:
            self.n_done += n
        else:
            self.jdone += n

    def flush_journal(self) -> None:
        """Commit the journal deletes of the messages finished since the last flush."""
        if self._journal is None or not self.jtouched:
            return
        touched, self.jtouched = self.jtouched, []
        acked: list[tuple[int, list[int]]] = []
        completed: list[int] = []
        for b in touched:
            b.touched = False
            if b.remaining <= 0:
                completed.append(b.first)
            elif b.done:
                acked.append((b.first, b.done))
            b.done = []
        retries, self.jretries = self.jretries, []
        retried_done, self.jretried_done = self.jretried_done, []
        self._journal.progress(acked, completed, retries, retried_done)
        self.n_done += self.jdone
        self.jdone = 0
