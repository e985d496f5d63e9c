"""Peer events of the RPC sockets: the Server's ROUTER and the Client/AsyncClient DEALERs are
monitored like every pybus socket (``Liveness(on_peer=...)``, ``stats()["peer_events"]``,
``pybus_peer_events_total``), across Lazy Pirate resets, without leaking monitor sockets.

Each test uses its own ZeroMQ context, so the context's hub (the thread that reads monitors)
starts from zero watched monitors and must return to zero once everything is closed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import pybus
from pybus import AsyncClient, Client, Liveness, RetryPolicy, Server
from pybus.transport.sockets import watched_monitors

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import until  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class Events:
    """Thread-safe recorder for on_peer (called from the hub thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, str]] = []

    def __call__(self, event: str, endpoint: str) -> None:
        with self._lock:
            self.items.append((event, endpoint))

    def count(self, event: str, endpoint: str | None = None) -> int:
        with self._lock:
            return sum(1 for e, ep in self.items if e == event and endpoint in (None, ep))


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def _gated_echo() -> tuple[object, list[bytes]]:
    """A handler whose first call blocks until the second arrives (a timed-out attempt)."""
    gate = threading.Event()
    calls: list[bytes] = []

    def handler(p: bytes) -> bytes:
        calls.append(p)
        if len(calls) == 1:
            gate.wait(5)
        else:
            gate.set()
        return p

    return handler, calls


def test_server_and_client_see_connect_disconnect_and_a_lazy_pirate_reset(
    ctx: zmq.Context,
) -> None:
    assert watched_monitors(ctx) == 0
    srv_ev, cli_ev = Events(), Events()
    reg = pybus.metrics.Registry()
    srv = Server("tcp://127.0.0.1:0", workers=2, context=ctx, registry=reg,
                 liveness=Liveness(on_peer=srv_ev))
    # the default Server behaviour stays: heartbeats only with an explicit Liveness
    assert srv._sock.getsockopt(zmq.HEARTBEAT_IVL) == 1000
    handler, calls = _gated_echo()
    srv.add_handler("echo", handler)
    srv.start()
    try:
        c = Client(srv.endpoint, timeout_s=0.5, context=ctx, registry=reg,
                   retry=RetryPolicy("fixed", initial_s=0.0, max_attempts=3),
                   liveness=Liveness(on_peer=cli_ev))
        try:
            assert until(lambda: cli_ev.count("connected", srv.endpoint) == 1)
            assert until(lambda: srv_ev.count("accepted") == 1)
            assert watched_monitors(ctx) == 2  # the ROUTER's and the DEALER's
            # first attempt times out (the handler holds it): Lazy Pirate closes the DEALER,
            # opens a new one, and the retry gets through
            assert c.request("echo", b"x") == b"x"
            assert len(calls) == 2 and c.stats()["reconnects"] == 1
            # the new socket connects (same watch, same callback); the server sees the old one
            # leave and the new one arrive
            assert until(lambda: cli_ev.count("connected", srv.endpoint) == 2)
            assert until(lambda: srv_ev.count("accepted") == 2 and
                         srv_ev.count("disconnected") == 1)
            # the old DEALER's monitor ended with it: still one per live socket
            assert until(lambda: watched_monitors(ctx) == 2)
            st = c.stats()
            assert st["peer_events"]["connected"] == 2
            # ZeroMQ reports no "disconnected" for a socket its owner closes: the watch takes
            # the old socket's connection off when that socket's monitor stops
            assert "disconnected" not in st["peer_events"]
            assert until(lambda: c.stats()["peers"] == 1)
            assert srv.stats()["peer_events"]["accepted"] == 2
            assert until(lambda: srv.stats()["peers"] == 1)
            fams = {f.name: f for f in text_string_to_metric_families(reg.render().decode())}
            ev = {(s.labels["name"], s.labels["event"]): s.value
                  for s in fams["pybus_peer_events"].samples}
            assert sorted(v for (_, e), v in ev.items() if e == "connected") == [2]
            assert sorted(v for (_, e), v in ev.items() if e == "accepted") == [2]
        finally:
            c.close()
        assert until(lambda: srv_ev.count("disconnected") == 2)
        assert until(lambda: srv.stats()["peers"] == 0)
        assert until(lambda: watched_monitors(ctx) == 1)
    finally:
        srv.stop()
    assert until(lambda: watched_monitors(ctx) == 0)  # nothing leaked


def test_client_sees_the_server_go_and_come_back(ctx: zmq.Context) -> None:
    cli_ev = Events()
    srv = Server("tcp://127.0.0.1:0", context=ctx, registry=False)
    srv.add_handler("echo", lambda p: p)
    srv.start()
    ep = srv.endpoint
    with Client(ep, timeout_s=2.0, context=ctx, registry=False,
                liveness=Liveness(on_peer=cli_ev, reconnect_ivl_ms=20,
                                  reconnect_ivl_max_ms=100)) as c:
        assert c.request("echo", b"a") == b"a"
        srv.stop()
        assert until(lambda: cli_ev.count("disconnected", ep) == 1)
        srv2 = Server(ep, context=ctx, registry=False)
        srv2.add_handler("echo", lambda p: p)
        srv2.start()
        try:
            assert until(lambda: cli_ev.count("connected", ep) == 2)
            assert c.request("echo", b"b") == b"b"
        finally:
            srv2.stop()
    assert until(lambda: watched_monitors(ctx) == 0)


def test_async_client_peer_events_across_a_reset(ctx: zmq.Context) -> None:
    srv_ev, cli_ev = Events(), Events()
    srv = Server("tcp://127.0.0.1:0", workers=2, context=ctx, registry=False,
                 liveness=Liveness(on_peer=srv_ev))
    handler, calls = _gated_echo()
    srv.add_handler("echo", handler)
    srv.start()

    async def main() -> dict[str, object]:
        async with AsyncClient(srv.endpoint, timeout_s=0.5, context=ctx, registry=False,
                               retry=RetryPolicy("fixed", initial_s=0.0, max_attempts=3),
                               liveness=Liveness(on_peer=cli_ev)) as ac:
            assert await ac.request("echo", b"y") == b"y"
            for _ in range(500):  # bounded: the hub thread reports asynchronously
                if cli_ev.count("connected", srv.endpoint) == 2:
                    break
                await asyncio.sleep(0.01)
            return ac.stats()

    try:
        st = asyncio.run(main())
        assert len(calls) == 2 and st["reconnects"] == 1
        assert cli_ev.count("connected", srv.endpoint) == 2
        assert st["peer_events"]["connected"] == 2  # type: ignore[index]
        assert until(lambda: srv_ev.count("accepted") == 2 and
                     srv_ev.count("disconnected") == 2)
    finally:
        srv.stop()
    assert until(lambda: watched_monitors(ctx) == 0)


def test_monitor_false_opens_no_monitor(ctx: zmq.Context) -> None:
    srv = Server("tcp://127.0.0.1:0", context=ctx, registry=False,
                 liveness=Liveness(monitor=False))
    srv.add_handler("echo", lambda p: p)
    srv.start()
    try:
        with Client(srv.endpoint, timeout_s=2.0, context=ctx, registry=False,
                    liveness=Liveness(monitor=False)) as c:
            assert c.request("echo", b"z") == b"z"
            assert watched_monitors(ctx) == 0
            assert c.stats()["peer_events"] == {} and c.stats()["peers"] is None
        assert srv.stats()["peer_events"] == {}
    finally:
        srv.stop()


def test_work_queue_and_worker_export_peer_events() -> None:
    # (already monitored before RPC was; their events are now in stats() and the metrics)
    q_ev, w_ev = Events(), Events()
    reg = pybus.metrics.Registry()
    q = pybus.WorkQueue("tcp://127.0.0.1:*", registry=reg, liveness=Liveness(on_peer=q_ev))
    done = threading.Event()
    w = pybus.Worker(q.endpoint, lambda msg: done.set(), registry=reg,
                     liveness=Liveness(on_peer=w_ev))
    try:
        w.start()
        q.put("t.x", {"n": 1})
        assert done.wait(10)
        assert until(lambda: q_ev.count("accepted") >= 1 and w_ev.count("connected") >= 1)
        assert q.stats()["peer_events"]["accepted"] == q_ev.count("accepted")
        assert w.stats()["peer_events"]["connected"] == w_ev.count("connected")
        fams = {f.name: f for f in text_string_to_metric_families(reg.render().decode())}
        kinds = {s.labels["event"] for s in fams["pybus_peer_events"].samples}
        assert {"accepted", "connected"} <= kinds
    finally:
        w.stop()
        q.close()


def test_curve_server_hook_shares_the_one_monitor_and_revoke_cuts_clients(
    ctx: zmq.Context,
) -> None:
    srv_pub, srv_sec = pybus.keypair()
    good, bad = pybus.keypair(), pybus.keypair()
    curve = pybus.Curve.server(srv_sec, allow=[good[0], bad[0]])
    srv_ev = Events()
    srv = Server("tcp://127.0.0.1:0", security=curve, context=ctx, registry=False,
                 liveness=Liveness(on_peer=srv_ev))
    srv.add_handler("echo", lambda p: p)
    srv.start()
    try:
        # one monitor for the ROUTER: on_peer and the Curve's handshake counting share it
        assert watched_monitors(ctx) == 1
        plain = Client(srv.endpoint, timeout_s=0.3, context=ctx, registry=False,
                       liveness=Liveness(monitor=False))
        with pytest.raises(pybus.TimeoutError):
            plain.request("echo", b"no")
        plain.close()
        assert until(lambda: srv_ev.count("handshake_failed") >= 1 and
                     curve.stats()["rejected_by_reason"]["handshake"] >= 1)
        cb = Client(srv.endpoint, timeout_s=2.0, context=ctx, registry=False,
                    security=pybus.Curve.client(bad[1], srv_pub))
        assert cb.request("echo", b"ok") == b"ok"
        assert until(lambda: srv.stats()["peers"] == 1)
        curve.revoke(bad[0])  # the server's live connection of the revoked key is cut
        assert until(lambda: srv_ev.count("disconnected") >= 1)
        assert until(lambda: curve.stats()["rejected_by_reason"]["revoked"] >= 1)
        with pytest.raises(pybus.TimeoutError):
            cb.request("echo", b"again", timeout=0.3)
        cb.close()
    finally:
        srv.stop()
    assert until(lambda: watched_monitors(ctx) == 0)
