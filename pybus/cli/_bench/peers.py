"""The peers measured side by side with pybus (``--peers``): raw pyzmq always, pynng (Pub0/Sub0)
and eclipse-zenoh (peer mode, tcp loopback) when installed. Here: their sending side in the
parent (:class:`_PeerPub`) and their subscriber in a child (:func:`_peer_sub_ready`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from .common import _CHILD_TIMEOUT_S, _IDLE_S, BenchError, _recv


def available_peers() -> tuple[str, ...]:
    """Peers whose Python package is importable here (pyzmq always is)."""
    import importlib.util

    return ("pyzmq",) + tuple(
        name for name, mod in (("pynng", "pynng"), ("zenoh", "zenoh"))
        if importlib.util.find_spec(mod) is not None)


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def _zenoh_session(listen: str | None = None, connect: str | None = None) -> Any:
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    if listen:
        conf.insert_json5("listen/endpoints", f'["{listen}"]')
    if connect:
        conf.insert_json5("connect/endpoints", f'["{connect}"]')
    return zenoh.open(conf)


def _peer_sub(system: str, addr: str) -> tuple[Callable[[float], bytes | None], Callable[[], Any]]:
    """A subscriber of ``system`` on ``addr``: (recv(timeout) -> bytes or None, close)."""
    if system == "pynng":
        import pynng

        # nng drops at a full receive buffer (default 0-1 messages): give it room
        s = pynng.Sub0(dial=addr, recv_timeout=int(_IDLE_S * 1000), recv_buffer_size=8192)
        s.subscribe(b"bench.")

        def recv_nng(_t: float) -> bytes | None:
            try:
                return bytes(s.recv())
            except pynng.Timeout:
                return None

        return recv_nng, s.close
    if system == "zenoh":
        import queue

        q: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        sess = _zenoh_session(connect=addr)
        sub = sess.declare_subscriber("bench/**", lambda smp: q.put(smp.payload.to_bytes()))

        def recv_z(t: float) -> bytes | None:
            try:
                return q.get(timeout=t)
            except queue.Empty:
                return None

        def close_z() -> None:
            sub.undeclare()
            sess.close()

        return recv_z, close_z
    raise BenchError(f"unknown peer {system!r}")


def _peer_sub_ready(system: str, addr: str, conn: Any
                    ) -> tuple[Callable[[float], bytes | None], Callable[[], Any]]:
    """:func:`_peer_sub`, after the handshake: the parent sends "bench.hello" until told
    ready."""
    recv, close = _peer_sub(system, addr)
    while recv(_CHILD_TIMEOUT_S) != b"bench.hello":
        pass
    conn.send(("ready",))
    return recv, close


class _PeerPub:
    """The sending side of a peer: ``send(bytes)``, an address for the child, ``close()``;
    ``sndhwm`` (pyzmq only): the PUB socket's high-water mark (None: ZeroMQ's default)."""

    def __init__(self, system: str, sndhwm: int | None = None) -> None:
        self.system = system
        if system == "pyzmq":
            self._ctx = zmq.Context()
            self._s = self._ctx.socket(zmq.PUB)
            self._s.setsockopt(zmq.LINGER, 0)
            if sndhwm is not None:  # before bind: a listener copies the options it binds with
                self._s.setsockopt(zmq.SNDHWM, sndhwm)
            self._s.bind("tcp://127.0.0.1:*")
            self.addr = self._s.getsockopt_string(zmq.LAST_ENDPOINT)
            self.send = self._s.send
            return
        port = _free_port()
        if system == "pynng":
            import pynng

            self.addr = f"tcp://127.0.0.1:{port}"
            self._s = pynng.Pub0(listen=self.addr, send_buffer_size=8192)
            self.send = self._s.send
        elif system == "zenoh":
            listen = f"tcp/127.0.0.1:{port}"
            self.addr = listen
            self._sess = _zenoh_session(listen=listen)
            import zenoh

            # BLOCK, as pybus' default on_full="block": a full queue waits instead of dropping
            self._pub = self._sess.declare_publisher(
                "bench/data", congestion_control=zenoh.CongestionControl.BLOCK)
            self.send = self._pub.put
        else:
            raise BenchError(f"unknown peer {system!r}")

    def hello(self, conn: Any, proc: Any) -> None:
        deadline = time.monotonic() + _CHILD_TIMEOUT_S
        while not conn.poll(0.01):
            if time.monotonic() > deadline or not proc.is_alive():
                raise BenchError(f"{self.system} subscriber never saw the handshake")
            self.send(b"bench.hello")
        _recv(conn, proc, 1, f"{self.system} handshake")

    def close(self) -> None:
        if self.system == "pyzmq":
            self._s.close(0)
            self._ctx.term()
        elif self.system == "pynng":
            self._s.close()
        else:
            self._pub.undeclare()
            self._sess.close()
