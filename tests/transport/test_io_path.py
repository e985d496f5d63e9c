"""Which I/O path each object takes (docs/operations.md, "The libzmq fast path").

An object's read-only ``io_path`` is ``"libzmq"`` when its hot-path socket I/O calls libzmq
directly and ``"pyzmq"`` when it goes through pyzmq. The guide lists when the fast path is
off; each case is produced here with real objects and real traffic:

- the default (``_zmqfast.AVAILABLE``): every object on ``"libzmq"``;
- the fast path unavailable for the process (``PYBUS_NO_ZMQ_FASTPATH=1`` in a subprocess, as
  tests/transport/test_zmqfast.py's probe; and in-process through
  ``pybus.transport.sockets.FASTPATH``, which is what a failed library lookup or version
  check sets): every object on ``"pyzmq"``;
- a socket class that overrides ``send``/``recv``: ``"pyzmq"``, and the override is really
  called for the data frames (the reason the guide gives for the fallback);
- a publisher keeping a late-joiner history, a subscriber enforcing publish permissions:
  ``"pyzmq"``, with a plain publisher / a secured subscriber without permissions beside them
  on ``"libzmq"`` (so the case, not the process, decides).

Not covered here: which libzmq is found (none, several, a version mismatch) is decided in
compiled code at import (csrc/pb_zmq.c ``pb_zmq_load``, exercised by tests/c/test_zmq.c;
the version comparison in ``_zmqfast._load`` has no injectable input).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import pybus
from pybus import Curve
from pybus._native import _zmqfast
from pybus.transport import sockets as _sockets

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain, until  # noqa: E402

pytestmark = pytest.mark.timeout(60)

FAST = "libzmq" if _zmqfast.AVAILABLE else "pyzmq"
needs_fast = pytest.mark.skipif(not _zmqfast.AVAILABLE,
                                reason=f"fast path unavailable: {_zmqfast.UNAVAILABLE_REASON}")


def _inproc() -> str:
    return f"inproc://io-path-{uuid.uuid4().hex}"


def _pubsub_round_trip(pub: pybus.Publisher, sub: pybus.Subscriber, topic: str = "io.t",
                       n: int = 50) -> None:
    assert pub.wait_for_subscribers(1, timeout=10) == 1
    for i in range(n):
        pub.publish(topic, i)
    pub.flush()
    assert [m.payload for m in drain(sub, n, timeout=10)] == list(range(n))


def _io_paths(closers: list[Callable[[], Any]], *, context: zmq.Context | None = None
              ) -> dict[str, Any]:
    """Build one of each object, move traffic through it, return each one's io_path."""
    ep = _inproc()
    ctx_kw = {} if context is None else {"context": context}
    pub = pybus.Publisher(ep, registry=False, **ctx_kw)
    closers.append(lambda: pub.close(linger_ms=0))
    sub = pybus.Subscriber(ep, ["#"], registry=False, **ctx_kw)
    closers.append(sub.close)
    _pubsub_round_trip(pub, sub)

    server = pybus.Server("tcp://127.0.0.1:*", registry=False, **ctx_kw)
    server.add_handler("echo", lambda p: p)
    server.start()
    closers.append(server.stop)
    client = pybus.Client(server.endpoint, timeout_s=10.0, registry=False, **ctx_kw)
    closers.append(client.close)
    assert client.request("echo", b"hi") == b"hi"

    q = pybus.WorkQueue("tcp://127.0.0.1:*", registry=False)
    closers.append(q.close)
    done: list[int] = []
    w = pybus.Worker(q.endpoint, lambda m: done.append(m.seq), registry=False)
    closers.append(lambda: w.stop(5.0))
    assert w.io_path is None  # no session yet
    w.start()
    assert w.wait_ready(10)
    ids = q.put_many([("jobs.t", b"x")] * 5)
    assert q.join(10)
    assert sorted(done) == sorted(ids)
    return {"publisher": pub.io_path, "subscriber": sub.io_path,
            "server": server.io_path, "client": client.io_path,
            "work_queue": q.io_path, "worker": w.io_path}


def _close_all(closers: list[Callable[[], Any]]) -> None:
    for close in reversed(closers):
        close()


_ALL = ("publisher", "subscriber", "server", "client", "work_queue", "worker")


def test_default_objects_take_the_fast_path_when_it_is_available() -> None:
    closers: list[Callable[[], Any]] = []
    try:
        assert _io_paths(closers) == dict.fromkeys(_ALL, FAST)
    finally:
        _close_all(closers)


def test_every_object_takes_pyzmq_when_the_fast_path_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what _zmqfast.AVAILABLE = False (no library, several, a version mismatch, the env var)
    # means for the objects built afterwards
    monkeypatch.setattr(_sockets, "FASTPATH", False)
    closers: list[Callable[[], Any]] = []
    try:
        assert _io_paths(closers) == dict.fromkeys(_ALL, "pyzmq")
    finally:
        _close_all(closers)


def test_env_var_puts_every_object_on_pyzmq() -> None:
    # tests/transport/test_zmqfast.py::test_env_var_selects_the_fallback probes the module and a raw
    # socket; this probe asks the objects themselves
    code = (
        "import sys\n"
        f"sys.path[:0] = [{os.path.dirname(__file__)!r}, "  # this module, and tests/ (helpers)
        f"{os.path.dirname(os.path.dirname(__file__))!r}]\n"
        "import test_io_path as t\n"
        "closers = []\n"
        "try:\n"
        "    print('probe', sorted(t._io_paths(closers).items()))\n"
        "finally:\n"
        "    t._close_all(closers)\n"
    )
    env = {**os.environ, "PYBUS_NO_ZMQ_FASTPATH": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    lines = [ln[6:] for ln in r.stdout.splitlines() if ln.startswith("probe ")]
    assert lines == [str(sorted(dict.fromkeys(_ALL, "pyzmq").items()))], r.stdout


@pytest.fixture
def counting_ctx() -> Iterator[tuple[zmq.Context, list[tuple[str, bytes]]]]:
    """A context whose sockets override send/recv and record every frame through them."""
    frames: list[tuple[str, bytes]] = []

    def _bytes(x: Any) -> bytes:
        return bytes(x.bytes if isinstance(x, zmq.Frame) else x)

    class CountingSocket(zmq.Socket):
        def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False,
                 **kw: Any) -> Any:
            frames.append(("send", _bytes(data)))
            return super().send(data, flags, copy=copy, track=track, **kw)

        def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
            got = super().recv(flags, copy=copy, track=track)
            frames.append(("recv", _bytes(got)))
            return got

    class CountingContext(zmq.Context):
        _socket_class = CountingSocket

    ctx = CountingContext()
    try:
        yield ctx, frames
    finally:
        ctx.destroy(linger=0)


def test_a_socket_class_that_overrides_send_and_recv_takes_pyzmq_and_keeps_them(
    counting_ctx,
) -> None:
    ctx, frames = counting_ctx
    ep = _inproc()
    pub = pybus.Publisher(ep, registry=False, context=ctx)
    sub = pybus.Subscriber(ep, ["#"], registry=False, context=ctx)
    server = pybus.Server("tcp://127.0.0.1:*", registry=False, context=ctx)
    server.add_handler("echo", lambda p: p)
    server.start()
    client = pybus.Client(server.endpoint, timeout_s=10.0, registry=False, context=ctx)
    try:
        _pubsub_round_trip(pub, sub, topic="io.custom")
        assert client.request("echo", b"ping-through-override") == b"ping-through-override"
        assert {o: x.io_path for o, x in (("publisher", pub), ("subscriber", sub),
                ("server", server), ("client", client))} == dict.fromkeys(
            ("publisher", "subscriber", "server", "client"), "pyzmq")
        # the overrides carried the data frames: the publisher's topic frame was sent and
        # received through them, and the request went out and came back through them
        assert ("send", b"io.custom") in frames
        assert ("recv", b"io.custom") in frames
        assert until(lambda: sum(k == "send" and b"ping-through-override" in f
                                 for k, f in frames) >= 2, timeout=10)  # request, reply
        assert sum(k == "recv" and b"ping-through-override" in f for k, f in frames) >= 2
    finally:
        client.close()
        server.stop()
        sub.close()
        pub.close(linger_ms=0)


@needs_fast
def test_a_publisher_with_history_takes_pyzmq_one_without_takes_libzmq() -> None:
    ep_h, ep_p = _inproc(), _inproc()
    hist = pybus.Publisher(ep_h, history=16, history_endpoint=_inproc(), registry=False)
    plain = pybus.Publisher(ep_p, registry=False)
    subs = [pybus.Subscriber(ep_h, ["#"], registry=False),
            pybus.Subscriber(ep_p, ["#"], registry=False)]
    try:
        _pubsub_round_trip(hist, subs[0])
        _pubsub_round_trip(plain, subs[1])
        assert hist.io_path == "pyzmq"
        assert plain.io_path == "libzmq"
        assert subs[0].io_path == subs[1].io_path == "libzmq"
    finally:
        for s in subs:
            s.close()
        hist.close(linger_ms=0)
        plain.close(linger_ms=0)


@needs_fast
def test_a_subscriber_with_publish_permissions_takes_pyzmq() -> None:
    server, alice = pybus.keypair(), pybus.keypair()
    subs, pubs = [], []
    try:
        for permissions in ({alice[0]: {"publish": ["io.*"]}}, None):
            curve = Curve.server(server[1], allow=[alice[0]], permissions=permissions)
            sub = pybus.Subscriber("tcp://127.0.0.1:*", ["#"], bind=True, security=curve,
                                   registry=False)
            subs.append(sub)
            pub = pybus.Publisher(sub.endpoints, connect=True, registry=False,
                                  security=Curve.client(alice[1], server[0]))
            pubs.append(pub)
            _pubsub_round_trip(pub, sub, topic="io.perm")
        assert subs[0].io_path == "pyzmq"   # reads each frame's User-Id
        assert subs[1].io_path == "libzmq"  # CURVE alone keeps the fast path
        assert pubs[0].io_path == pubs[1].io_path == "libzmq"
    finally:
        for p in pubs:
            p.close(linger_ms=0)
        for s in subs:
            s.close()


def test_a_libzmq_of_another_version_is_refused_with_both_versions_named():
    # the one library-detection decision that a test can drive without loading a second
    # libzmq into the process: the loader refuses a library whose version is not pyzmq's
    from pybus._native import _zmqfast

    assert _zmqfast.version_mismatch((4, 3, 5), (4, 3, 5), "/x/libzmq.so.5") == ""
    why = _zmqfast.version_mismatch((4, 3, 4), (4, 3, 5), "/x/libzmq.so.5")
    assert why == "libzmq 4.3.4 found at /x/libzmq.so.5 is not the 4.3.5 pyzmq reports"
    if _zmqfast.AVAILABLE:  # and the library in use passed that very check
        found = tuple(int(x) for x in zmq.zmq_version().split("."))
        assert _zmqfast.version_mismatch(found, zmq.zmq_version_info(),
                                         _zmqfast.library_path()) == ""
