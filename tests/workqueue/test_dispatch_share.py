"""How the dispatcher shares waiting messages between workers (no sockets; frames decoded
with the test's own reader of docs/wire-workqueue.md): slow handlers get an even share, so no
worker sits on what others could run; fast ones get frames holding a few milliseconds of
work, measured from the workers' acks, not one message per wake-up."""

from __future__ import annotations

import os
import sys

from pybus.workqueue._core import FRAME_WORK_S, DispatchCore
from pybus.workqueue._policy import RetryPlan, Throttle

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import wqhelpers as H  # noqa: E402


def _core() -> tuple[DispatchCore, list[tuple[bytes, bytes]]]:
    sent: list[tuple[bytes, bytes]] = []
    core = DispatchCore(lambda ident, frame: sent.append((ident, frame)) or True,
                        RetryPlan(None), Throttle(None, None), None, None, "test", 30.0, 1.0,
                        3, 100_000)
    for i in range(8):
        core.handle(b"w%d" % i, H.hello(1000), 0.0)
    sent.clear()
    return core, sent


def _put(core: DispatchCore, n: int, first: int) -> None:
    recs = [[first + i, 0, "s.t", b"", 0, None, 0, None, 0.0, 0.0, None, 0, 0, None]
            for i in range(n)]
    core.live.update((r[0], r) for r in recs)
    core.enqueue(recs, 0)


def _frames(sent: list[tuple[bytes, bytes]]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for ident, frame in sent:
        out.setdefault(ident, []).extend(e[0] for e in H.decode_dispatch(frame))
    return out


def test_before_any_ack_the_line_is_spread_evenly() -> None:
    core, sent = _core()
    _put(core, 24, 1)
    core.dispatch(0.0)
    assert sorted(len(v) for v in _frames(sent).values()) == [3] * 8


def test_slow_handlers_keep_the_even_share() -> None:
    core, sent = _core()
    _put(core, 16, 1)
    core.dispatch(0.0)
    # every worker acks one of its two, 0.2 s apart: 0.2 s per message
    t = 0.0
    for _ in range(3):
        for ident, ids in _frames(sent).items():
            t += 0.2
            core.handle(ident, H.ack(ids[:1]), t)
        sent.clear()
        _put(core, 8, 1000 + int(t * 100))
        core.dispatch(t)
        assert sorted(len(v) for v in _frames(sent).values()) == [1] * 8
    assert core.service_s > 0.1


def test_fast_handlers_get_frames_of_a_few_milliseconds_of_work() -> None:
    core, sent = _core()
    _put(core, 800, 1)
    core.dispatch(0.0)
    # every 0.5 ms each worker acks the 50 oldest it holds, and the line is topped up:
    # 10 us per message, with work left all along
    t = 0.0
    for step in range(40):
        t += 0.0005
        for ident, w in core.workers.items():
            core.handle(ident, H.ack(list(w.inflight)[:50]), t)
        _put(core, 400, 10_000 + step * 1000)
        core.dispatch(t)
    assert abs(core.service_s - 1e-5) < 2e-6
    sent.clear()
    _put(core, 800, 10**7)
    core.dispatch(t)
    sizes = [len(v) for v in _frames(sent).values()]
    # 5 ms of 10 us messages: frames of 500, not 8 frames of the even share
    assert max(sizes) >= int(FRAME_WORK_S / 1.2e-5) and len(sizes) < 8
