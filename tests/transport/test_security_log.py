"""The ZAP refusal log is rate-limited and says how many refusals it did not log.

docs/security.md: refusals are "logged ... at most once per ``log_interval_s`` (default 10 s)
with a count of the ones not logged". The refusals here are real: raw pyzmq CURVE clients
with a key the server's allow-list does not hold, each connecting once (no reconnection), so
every connection is exactly one ZAP refusal. Time is a fake clock swapped in for the
``time`` module that pybus.security reads (only there: the hub thread and the bounded waits
keep the real clock).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import types
from collections.abc import Iterator

import pytest
import zmq

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import until  # noqa: E402

pytestmark = pytest.mark.timeout(60)

_LINE = re.compile(
    r"pybus CURVE: rejected a peer \(not_allowed\) public key (?P<key>\S+) at \S+ "
    r"\[(?P<total>\d+) rejections in all, (?P<unlogged>\d+) not logged since the last message\]"
)


@pytest.fixture
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {name: pybus.keypair() for name in ("server", "alice", "mallory")}


@pytest.fixture
def server(keys) -> Iterator[tuple[pybus.Publisher, Curve]]:
    # the default interval (10 s): the documented behaviour, not a test-only setting
    curve = Curve.server(keys["server"][1], allow=[keys["alice"][0]])
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=curve)
    try:
        yield pub, curve
    finally:
        pub.close(linger_ms=0)


def _refuse_once(ctx: zmq.Context, ep: str, keys, curve: Curve, expected_total: int) -> None:
    """One connection with mallory's (unlisted) key: one ZAP refusal, waited for."""
    s = ctx.socket(zmq.SUB)
    try:
        s.curve_secretkey = keys["mallory"][1]
        s.curve_publickey = keys["mallory"][0]
        s.curve_serverkey = keys["server"][0]
        s.setsockopt(zmq.RECONNECT_IVL, -1)  # one attempt: one refusal
        s.linger = 0
        s.connect(ep)
        assert until(lambda: curve.stats()["rejected_by_reason"]["not_allowed"]
                     >= expected_total, timeout=10), curve.stats()
        assert curve.stats()["rejected_by_reason"]["not_allowed"] == expected_total
    finally:
        s.close(linger=0)


def _logged(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    out = []
    for r in caplog.records:
        if r.name == "pybus.security":
            m = _LINE.fullmatch(r.getMessage())
            assert m, f"unexpected log line: {r.getMessage()!r}"
            assert r.levelno == logging.WARNING
            out.append(m)
    return out


def test_refusals_within_the_interval_are_counted_in_the_next_message(
    server, keys, clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    pub, curve = server
    ep = pub.endpoints[0]
    monkeypatch.setattr(pybus.transport.security, "time", types.SimpleNamespace(monotonic=clock))
    caplog.set_level(logging.WARNING, "pybus.security")
    ctx = zmq.Context.instance()
    mallory = keys["mallory"][0].decode()

    # the first refusal is logged at once, with nothing left unlogged
    _refuse_once(ctx, ep, keys, curve, 1)
    first = _logged(caplog)
    assert len(first) == 1
    assert (first[0]["key"], first[0]["total"], first[0]["unlogged"]) == (mallory, "1", "0")

    # N more within the interval (the last one a hair before it ends): none is logged
    n = 3
    for i in range(n):
        clock.advance(9.999 / n)
        _refuse_once(ctx, ep, keys, curve, 2 + i)
    assert len(_logged(caplog)) == 1

    # once the interval has passed since the last message: one message saying exactly N
    clock.advance(0.001 + 1e-6)
    _refuse_once(ctx, ep, keys, curve, 2 + n)
    lines = _logged(caplog)
    assert len(lines) == 2
    assert (lines[1]["key"], lines[1]["total"], lines[1]["unlogged"]) == (
        mallory, str(2 + n), str(n))

    # the count starts again from zero: the next interval's refusals are counted afresh
    clock.advance(1.0)
    _refuse_once(ctx, ep, keys, curve, 3 + n)
    assert len(_logged(caplog)) == 2
    clock.advance(10.0)
    _refuse_once(ctx, ep, keys, curve, 4 + n)
    lines = _logged(caplog)
    assert len(lines) == 3 and lines[2]["unlogged"] == "1" and lines[2]["total"] == str(4 + n)
    assert keys["mallory"][1].decode() not in caplog.text  # never a secret
