"""The leak guard (tests/leakcheck.py, used by conftest's autouse ``_leak_guard``) itself.

Each test takes its own snapshot, makes (or avoids) one leak, asks ``find_leaks`` and then
cleans up, so the autouse guard around it sees nothing left.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import uuid

import pytest
import zmq

sys.path.insert(0, os.path.dirname(__file__))
import leakcheck  # noqa: E402

pytestmark = pytest.mark.timeout(30)

GRACE = 0.2  # short: these tests check what is reported, not how long the guard waits


def _ep() -> str:
    return f"inproc://leakguard-{uuid.uuid4().hex}"


def test_unclosed_socket_reported_with_type_endpoint_and_origin():
    ctx = zmq.Context.instance()
    before = leakcheck.snapshot()
    s = ctx.socket(zmq.PULL)
    ep = _ep()
    try:
        s.bind(ep)
        leaks = leakcheck.find_leaks(before, grace_s=GRACE)
        assert len(leaks) == 1, leaks
        assert "PULL socket" in leaks[0] and ep in leaks[0] and "not closed" in leaks[0]
        assert "test_leak_guard.py" in leaks[0]  # where it was created
    finally:
        s.close(0)
    assert leakcheck.find_leaks(before, grace_s=GRACE) == []


def test_closed_socket_not_reported():
    before = leakcheck.snapshot()
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.close(0)
    assert leakcheck.find_leaks(before, grace_s=GRACE) == []


def test_socket_left_to_garbage_collection_reported():
    before = leakcheck.snapshot()
    s = zmq.Context.instance().socket(zmq.DEALER)
    with pytest.warns(ResourceWarning):  # pyzmq's own complaint, when __del__ closes it
        del s
        gc.collect()
    leaks = leakcheck.find_leaks(before, grace_s=GRACE)
    assert len(leaks) == 1 and "DEALER socket" in leaks[0], leaks
    assert "garbage collection closed it" in leaks[0]
    leakcheck.forget_collected()


def test_socket_created_before_snapshot_not_blamed():
    s = zmq.Context.instance().socket(zmq.PUB)
    try:
        before = leakcheck.snapshot()
        assert leakcheck.find_leaks(before, grace_s=GRACE) == []
    finally:
        s.close(0)


def test_shadow_socket_not_reported():
    s = zmq.Context.instance().socket(zmq.PAIR)
    try:
        before = leakcheck.snapshot()
        shadow = zmq.Socket.shadow(s.underlying)
        assert not shadow.closed
        assert leakcheck.find_leaks(before, grace_s=GRACE) == []
    finally:
        s.close(0)


def test_context_not_terminated_reported_instance_not():
    before = leakcheck.snapshot()
    ctx = zmq.Context()
    try:
        zmq.Context.instance()
        leaks = leakcheck.find_leaks(before, grace_s=GRACE)
        assert len(leaks) == 1 and "zmq.sugar.context.Context not terminated" in leaks[0], leaks
    finally:
        ctx.term()
    assert leakcheck.find_leaks(before, grace_s=GRACE) == []


def test_pybus_thread_alive_reported_ended_not():
    stop = threading.Event()
    before = leakcheck.snapshot()
    t = threading.Thread(target=stop.wait, args=(10,), name="pybus-x", daemon=True)
    t.start()
    try:
        leaks = leakcheck.find_leaks(before, grace_s=GRACE)
        assert len(leaks) == 1 and "'pybus-x'" in leaks[0], leaks
        assert "test_leak_guard.py" in leaks[0]  # where it was started
    finally:
        stop.set()
        t.join(5)
    assert leakcheck.find_leaks(before, grace_s=GRACE) == []


def test_thread_winding_down_within_grace_not_reported():
    """A thread that needs a while after close() to end is not a leak: the guard waits."""
    before = leakcheck.snapshot()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(10,), name="pybus-slow", daemon=True)
    t.start()
    threading.Timer(0.3, stop.set).start()  # "closed", ends 0.3 s later
    assert leakcheck.find_leaks(before, grace_s=10.0) == []
    assert not t.is_alive()


def test_non_daemon_thread_reported_other_daemon_not():
    stop = threading.Event()
    before = leakcheck.snapshot()
    worker = threading.Thread(target=stop.wait, args=(10,), name="helper", daemon=False)
    bg = threading.Thread(target=stop.wait, args=(10,), name="bg", daemon=True)
    worker.start()
    bg.start()
    try:
        leaks = leakcheck.find_leaks(before, grace_s=GRACE)
        assert len(leaks) == 1 and "'helper'" in leaks[0] and "non-daemon" in leaks[0], leaks
    finally:
        stop.set()
        worker.join(5)
        bg.join(5)


def test_child_process_running_reported_waited_not():
    before = leakcheck.snapshot()
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    try:
        leaks = leakcheck.find_leaks(before, grace_s=GRACE)
        assert len(leaks) == 1 and f"child process {p.pid} running" in leaks[0], leaks
    finally:
        p.stdin.close()
        p.wait(10)
    assert leakcheck.find_leaks(before, grace_s=GRACE) == []


def test_pybus_objects_closed_leave_nothing():
    """End to end: a pybus Server and Client, closed, leave no socket or thread behind."""
    import pybus

    before = leakcheck.snapshot()
    ep = f"inproc://leakguard-rpc-{uuid.uuid4().hex}"
    with pybus.Server(ep) as srv:
        srv.add_handler("echo", lambda p: p)
        with pybus.Client(ep, timeout_s=5.0) as c:
            assert c.request("echo", 7) == 7
    assert leakcheck.find_leaks(before) == []


@pytest.fixture
def socket_closed_at_teardown():
    s = zmq.Context.instance().socket(zmq.PAIR)
    s.bind(_ep())
    yield s
    s.close(0)


def test_guard_checks_after_other_fixtures_teardown(socket_closed_at_teardown):
    """The guard is set up before this test's other fixtures, so it checks after their
    teardown: a socket a fixture closes at teardown is no leak (else this test would error)."""
    assert not socket_closed_at_teardown.closed


def test_long_lived_hub_of_the_shared_context_is_not_a_leak():
    """The hub serving ZAP for ``Context.instance()`` (its thread and ZAP socket) lives as long
    as that context, by design: only what the test itself opened is reported."""
    import pybus

    pk, sk = zmq.curve_keypair()
    before = leakcheck.snapshot()
    with pybus.Publisher("tcp://127.0.0.1:*", security=pybus.Curve.server(sk, allow="any"),
                         registry=False) as pub:
        leaks = leakcheck.find_leaks(before, grace_s=GRACE)  # the open publisher's things
        assert any("pybus-flusher" in x for x in leaks), leaks
        assert not any("pybus-hub" in x or "zeromq.zap" in x for x in leaks), leaks
    assert pub.closed
    assert leakcheck.find_leaks(before) == []


def test_a_raw_socket_of_a_test_gets_a_receive_timeout_and_pybus_sockets_do_not():
    import uuid

    import pybus

    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PULL)
    try:
        assert raw.rcvtimeo == leakcheck.RAW_RCVTIMEO_MS
        raw.rcvtimeo = 50  # the test's own choice wins
        raw.bind(f"inproc://raw-{uuid.uuid4().hex}")
        with pytest.raises(zmq.Again):
            raw.recv()
    finally:
        raw.close()
    with pybus.Subscriber(f"inproc://lg-{uuid.uuid4().hex}", ["#"], bind=True,
                          registry=False) as sub:
        assert sub._sock.rcvtimeo == -1  # pybus's own sockets keep their own semantics
