"""One place where every pybus socket gets its transport options: security, liveness, limits.

Every endpoint-taking class calls :func:`configure` on each socket it creates, *before* bind or
connect (CURVE options and monitors must be in place before the first handshake). It sets

- ZMTP heartbeats (``HEARTBEAT_IVL`` / ``HEARTBEAT_TIMEOUT`` / ``HEARTBEAT_TTL``): a peer that
  goes silent (a pulled cable, a host that died without a FIN) is detected within the timeout
  and its connection closed, instead of waiting for TCP's retransmission timers (minutes);
- bounded exponential reconnection (``RECONNECT_IVL`` doubling up to ``RECONNECT_IVL_MAX``);
- ``MAXMSGSIZE`` when the caller knows its largest frame (ZeroMQ refuses a larger frame from
  its header, before allocating it, and disconnects the peer that sent it);
- CURVE (:class:`pybus.Curve`), whose server side is checked by the context's ZAP handler;
- a socket monitor whose events (connected, accepted, disconnected, handshake failed, ...) are
  counted per socket and passed to an ``on_peer(event, endpoint)`` callback.

The ZAP handler and the monitor readers of one ZeroMQ context run in one daemon thread per
context (the *hub*). ZAP requests are answered at once (the ZAP ROUTER is in the hub's poll
set); monitor sockets are PAIRs connected in the caller's thread, so no event is lost between
``configure`` and the hub picking the socket up. The hub exits when its context is terminated
(ZeroMQ interrupts its poll with ETERM, and the hub closes its sockets so ``term`` completes).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import zmq

from .._native import _zmqfast
from ..errors import ValidationError

__all__ = ["Liveness", "SocketWatch", "configure", "PEER_EVENTS"]

log = logging.getLogger("pybus.sockets")

@runtime_checkable
class SocketSecurity(Protocol):
    """What this module needs of a socket's ``security=``: :class:`pybus.Curve` implements it.

    Declared here, not imported, so that the transport knows nothing above it
    (``pybus.transport.security`` imports this module for its ZAP handler, not the reverse).
    """

    domain: bytes

    @property
    def is_server(self) -> bool: ...

    def apply(self, sock: zmq.Socket[Any], context: zmq.Context[Any] | None = None) -> None: ...

    def _authorize(
        self, mechanism: bytes, creds: list[bytes], address: str
    ) -> tuple[bool, str, bytes]: ...

    def _handshake_failed(self, event: str, endpoint: str) -> None: ...


#: ``on_peer(event, endpoint)``: ``event`` is one of :data:`PEER_EVENTS`.
PeerCallback = Callable[[str, str], None]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"

_EVENT_NAMES: dict[int, str] = {
    zmq.EVENT_CONNECTED: "connected",
    zmq.EVENT_CONNECT_DELAYED: "connect_delayed",
    zmq.EVENT_CONNECT_RETRIED: "connect_retried",
    zmq.EVENT_LISTENING: "listening",
    zmq.EVENT_BIND_FAILED: "bind_failed",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_ACCEPT_FAILED: "accept_failed",
    zmq.EVENT_CLOSED: "closed",
    zmq.EVENT_CLOSE_FAILED: "close_failed",
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
}
#: Event names counted by :class:`SocketWatch` and passed to ``on_peer``.
PEER_EVENTS: tuple[str, ...] = tuple(dict.fromkeys(_EVENT_NAMES.values()))

# How often the hub looks for newly registered monitors when nothing else wakes it.
_HUB_POLL_MS = 50


@dataclass(frozen=True)
class Liveness:
    """Heartbeat, reconnection and peer-event options of a socket.

    Parameters
    ----------
    heartbeat_ivl_ms : int
        Send a ZMTP PING after this much silence on a connection (0 disables heartbeats).
    heartbeat_timeout_ms : int
        Close the connection when no traffic arrived this long after a PING.
    heartbeat_ttl_ms : int
        Ask the peer to close its side after this much silence from us (0: peer's default).
    reconnect_ivl_ms : int
        First reconnection delay; it doubles on each failed attempt ...
    reconnect_ivl_max_ms : int
        ... up to this bound. The defaults bring a connection back within about a second of
        its link returning.
    tcp_keepalive_idle_s, tcp_keepalive_intvl_s, tcp_keepalive_cnt : int
        TCP keepalive (kernel probes on an idle connection; 0 idle: off). Sockets that receive
        the data stream (Subscriber, the proxy's frontend, the work queue's ROUTER) detect a
        dead peer this way rather than with ZMTP heartbeats: libzmq <= 4.3.5 can abort
        (``Assertion failed: _input_stopped``, zeromq/libzmq#3937, #4767) when a heartbeat
        timeout hits a connection whose receive queue is full -- a slow consumer. Heartbeats
        stay on the sending sides (Publisher, the proxy's backend, Worker), which notice a
        dead subscriber and free its queue.
    connect_timeout_ms : int
        Give up a TCP connection attempt after this long (0: the kernel's SYN retries, which
        back off to minutes) and try again after the reconnection delay, so a host whose link
        returns is reached within about ``connect_timeout_ms + reconnect_ivl_max_ms``.
    monitor : bool
        Watch the socket's peer events (one PAIR socket per watched socket).
    on_peer : callable, optional
        ``on_peer(event, endpoint)`` called from the context's hub thread for every event
        (``connected``, ``accepted``, ``disconnected``, ``handshake_succeeded``,
        ``handshake_failed``, ``handshake_failed_auth``, ``connect_retried``, ...). Keep it
        short; exceptions are logged and ignored.
    """

    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 3000
    heartbeat_ttl_ms: int = 3000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 1000
    connect_timeout_ms: int = 1000
    tcp_keepalive_idle_s: int = 10
    tcp_keepalive_intvl_s: int = 2
    tcp_keepalive_cnt: int = 3
    monitor: bool = True
    on_peer: PeerCallback | None = None

    def __post_init__(self) -> None:
        for name in ("heartbeat_ivl_ms", "heartbeat_timeout_ms", "heartbeat_ttl_ms",
                     "reconnect_ivl_ms", "reconnect_ivl_max_ms", "connect_timeout_ms",
                     "tcp_keepalive_idle_s", "tcp_keepalive_intvl_s", "tcp_keepalive_cnt"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 6_553_500:
                raise ValidationError(f"Liveness.{name} must be an int in 0..6553500 ms, got {v!r}")
        if self.heartbeat_ttl_ms % 100:
            raise ValidationError(
                f"Liveness.heartbeat_ttl_ms must be a multiple of 100 ms (ZMTP sends it in "
                f"deciseconds), got {self.heartbeat_ttl_ms}"
            )
        if self.reconnect_ivl_max_ms and self.reconnect_ivl_max_ms < self.reconnect_ivl_ms:
            raise ValidationError(
                f"Liveness.reconnect_ivl_max_ms ({self.reconnect_ivl_max_ms}) must be 0 or >= "
                f"reconnect_ivl_ms ({self.reconnect_ivl_ms})"
            )
        if self.on_peer is not None and not callable(self.on_peer):
            raise ValidationError("Liveness.on_peer must be callable(event, endpoint)")


DEFAULT_LIVENESS = Liveness()


@contextlib.contextmanager
def _borrowed_socket(fd: int) -> Iterator[socket.socket]:
    """A :class:`socket.socket` over ZeroMQ's descriptor ``fd``, which it never closes.

    A monitor event's descriptor is read after the fact: by then its number may have been
    closed and reused by anything in the process (a pipe, a file). So no copy is made (a
    ``dup`` of a reused number, leaked when the socket constructor refused it, once held a
    child process's stdin open forever); the socket constructor raises OSError when ``fd``
    is no longer a socket, and the descriptor is detached, never closed, on the way out.
    """
    s = socket.socket(fileno=fd)
    try:
        yield s
    finally:
        s.detach()


class SocketWatch:
    """Peer-event counters of one socket (filled by the hub thread).

    Attributes
    ----------
    events : dict of str to int
        How many times each event happened (see :data:`PEER_EVENTS`).
    """

    def __init__(self, on_peer: PeerCallback | None) -> None:
        self.events: dict[str, int] = {}
        self._on_peer = on_peer
        self.last_event: tuple[str, str] | None = None
        # live connections: OS file descriptor -> (local, peer) address, to drop them on revoke
        self._conns: dict[int, tuple[Any, Any]] = {}
        self._conns_lock = threading.Lock()
        self.dropped_connections = 0
        self._hub: _Hub | None = None
        # connections up per monitored socket (one watch may outlive several sockets, e.g. a
        # Lazy Pirate client's): ZeroMQ reports no "disconnected" for the connections of a
        # socket its owner closes, so they are taken off when that socket's monitor stops
        self._up: dict[int, int] = {}
        self._ended_with_socket = 0

    @property
    def peers(self) -> int:
        """Connections up now (connected + accepted - disconnected, less those that ended
        with a socket closed by its owner), as far as events tell."""
        e = self.events
        return max(0, e.get("connected", 0) + e.get("accepted", 0) - e.get("disconnected", 0)
                   - self._ended_with_socket)

    def _monitor_stopped(self, src: int) -> None:
        """Hub thread: the socket behind monitor ``src`` is closed, with its connections."""
        self._ended_with_socket += max(0, self._up.pop(src, 0))

    def _track(self, name: str, fd: int, endpoint: str) -> None:
        """Hub thread: remember each connection's descriptor and addresses (TCP/IPC only)."""
        if name in ("accepted", "connected"):
            try:
                with _borrowed_socket(fd) as s:
                    addrs = (s.getsockname(), s.getpeername())
            except OSError:
                return
            # the descriptor must still be this event's connection (not a number reused since):
            # a tcp connection's local (accepted) or peer (connected) port is the endpoint's
            if endpoint.startswith("tcp://"):
                port = endpoint.rsplit(":", 1)[-1]
                side = addrs[0] if name == "accepted" else addrs[1]
                if not (isinstance(side, tuple) and str(side[1]) == port):
                    return
            with self._conns_lock:
                self._conns[fd] = addrs
        elif name in ("disconnected", "closed"):
            with self._conns_lock:
                self._conns.pop(fd, None)

    def drop_connections(self) -> int:
        """Shut down every live connection of the socket (ZeroMQ then closes its side).

        Used after a key is revoked: established CURVE sessions are never re-authenticated,
        so they are cut and their peers reconnect through ZAP again. Each descriptor is
        checked to still be the same connection (same local and peer address) before it is
        shut down, so a descriptor number reused meanwhile is left alone. Returns how many
        connections were shut down.
        """
        hub = self._hub
        if hub is not None and hub.alive:
            hub.sync()
        with self._conns_lock:
            conns = list(self._conns.items())
        n = 0
        for fd, addrs in conns:
            try:
                with _borrowed_socket(fd) as s:
                    if (s.getsockname(), s.getpeername()) != addrs:
                        continue
                    s.shutdown(socket.SHUT_RDWR)
                    n += 1
            except OSError:
                continue
        self.dropped_connections += n
        return n

    def _event(self, name: str, endpoint: str, src: int = 0) -> None:
        if name in ("connected", "accepted"):
            self._up[src] = self._up.get(src, 0) + 1
        elif name == "disconnected":
            self._up[src] = self._up.get(src, 0) - 1
        self.events[name] = self.events.get(name, 0) + 1
        self.last_event = (name, endpoint)
        cb = self._on_peer
        if cb is not None:
            try:
                cb(name, endpoint)
            except Exception:
                log.exception("pybus on_peer callback raised")

    def stats(self) -> dict[str, Any]:
        return {"peers": self.peers, "events": dict(self.events)}


class _Hub:
    """The per-context thread: answers ZAP requests and reads socket monitors."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self._ctx_ref = weakref.ref(ctx)
        # sockets handed over to the hub thread: ("zap", ROUTER) or ("mon", PAIR, watch, curves)
        self._new: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._domains: dict[bytes, weakref.ref[SocketSecurity]] = {}
        self._lock = threading.Lock()
        self._zap: zmq.Socket[Any] | None = None
        self.stray_zap = 0  # requests for a domain no live Curve owns (rejected)
        #: Monitor sockets the hub thread reads now (written by that thread only).
        self.watched = 0
        # monitors handed over (watch()) and not yet picked up by the hub thread
        self._pending_monitors = 0
        # set (under _lock) when the hub decides to exit: it then accepts nothing more
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pybus-hub", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def add_domain(self, curve: SocketSecurity) -> bool:
        """Route ZAP requests of ``curve.domain`` to ``curve``; bind the ZAP handler once.

        The ROUTER is created and bound here, in the caller's thread, so that the handler
        exists before the caller's socket can handshake (requests wait in its queue until the
        hub thread picks it up), then handed over to the hub thread.
        """
        with self._lock:
            if self._closing:
                return False
            self._domains[curve.domain] = weakref.ref(curve)
            if self._zap is not None:
                return True
            ctx = self._ctx_ref()
            if ctx is None:  # pragma: no cover
                return True
            zap = ctx.socket(zmq.ROUTER)
            zap.linger = 0
            try:
                zap.bind(ZAP_ENDPOINT)
            except zmq.ZMQError as exc:
                zap.close(0)
                from ..errors import TransportError

                raise TransportError(
                    f"cannot start pybus's ZAP handler in this ZeroMQ context ({exc}); another "
                    f"authenticator (e.g. zmq.auth) already serves it: use one or the other"
                ) from None
            self._zap = zap
            self._new.put(("zap", zap))
            return True

    def sync(self, timeout: float = 1.0) -> bool:
        """Wait until the hub has read every monitor event queued so far."""
        done = threading.Event()
        self._new.put(("sync", done))
        return done.wait(timeout)

    def watch(self, mon: zmq.Socket[Any], watch: SocketWatch, curves: list[SocketSecurity]) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._pending_monitors += 1
            self._new.put(("mon", mon, watch, curves))
            return True

    @property
    def monitors(self) -> int:
        """Monitor sockets this hub reads or was handed and will read."""
        with self._lock:
            return self.watched + self._pending_monitors

    def _ctx_gone(self) -> bool:
        ctx = self._ctx_ref()
        return ctx is None or ctx.closed

    def _run(self) -> None:
        poller = zmq.Poller()
        zap: zmq.Socket[Any] | None = None
        monitors: dict[zmq.Socket[Any], tuple[SocketWatch, list[SocketSecurity]]] = {}
        watched = False
        try:
            while True:
                if not monitors and zap is None and (watched or self._ctx_gone()):
                    # every watched socket is closed, or nothing was ever handed over (a ZAP
                    # endpoint another authenticator holds) and the context is gone: exit (an
                    # empty poll set would never see the context terminate), unless something
                    # was handed over meanwhile
                    with self._lock:
                        if self._new.empty():
                            self._closing = True
                            break
                while True:
                    try:
                        item = self._new.get_nowait()
                    except queue.Empty:
                        break
                    if item[0] == "sync":  # read every monitor now, then release the caller
                        for mon, (w, curves) in list(monitors.items()):
                            if not self._read_monitor(mon, w, curves):
                                poller.unregister(mon)
                                del monitors[mon]
                                mon.close(0)
                        self.watched = len(monitors)
                        item[1].set()
                        continue
                    if item[0] == "zap":
                        zap = item[1]
                    else:
                        monitors[item[1]] = (item[2], item[3])
                        watched = True
                        with self._lock:
                            self.watched = len(monitors)
                            self._pending_monitors -= 1
                    poller.register(item[1], zmq.POLLIN)
                for sock, _ in poller.poll(_HUB_POLL_MS):
                    if sock is zap:
                        self._answer_zap(zap)
                    else:
                        if not self._read_monitor(sock, *monitors[sock]):
                            poller.unregister(sock)
                            del monitors[sock]
                            sock.close(0)
                            self.watched = len(monitors)
        except zmq.ContextTerminated:
            pass
        except Exception:  # pragma: no cover - keep the reason in the log
            log.exception("pybus hub thread failed")
        finally:
            with self._lock:
                self._closing = True
            while True:  # sockets handed over but never picked up are ours to close too
                try:
                    item = self._new.get_nowait()
                except queue.Empty:
                    break
                if item[0] == "sync":
                    item[1].set()
                else:
                    item[1].close(0)
            for mon in monitors:
                mon.close(0)
            with self._lock:
                self.watched = 0
                self._pending_monitors = 0
            with self._lock:
                if self._zap is not None:
                    self._zap.close(0)
            with _HUBS_LOCK:
                for key, hub in list(_HUBS.items()):
                    if hub is self:
                        del _HUBS[key]

    def _read_monitor(
        self, mon: zmq.Socket[Any], watch: SocketWatch, curves: list[SocketSecurity]
    ) -> bool:
        while True:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if len(frames) < 2 or len(frames[0]) < 6:
                continue
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_MONITOR_STOPPED:
                watch._monitor_stopped(id(mon))
                return False
            name = _EVENT_NAMES.get(event)
            if name is None:
                continue
            endpoint = frames[1].decode("utf-8", "replace")
            if name in ("accepted", "connected", "disconnected", "closed"):
                watch._track(name, int.from_bytes(frames[0][2:6], "little"), endpoint)
            watch._event(name, endpoint, id(mon))
            if name.startswith("handshake_failed"):
                for c in curves:
                    c._handshake_failed(name, endpoint)

    def _answer_zap(self, zap: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # [routing id, b"", version, request id, domain, address, identity, mechanism, creds]
            if len(frames) < 8 or frames[2] != b"1.0":
                continue  # not a ZAP request: nothing sensible to answer
            ident, request_id, domain, address, mechanism = (
                frames[0], frames[3], frames[4], frames[5], frames[7]
            )
            creds = frames[8:]
            with self._lock:
                ref = self._domains.get(domain)
            curve = ref() if ref is not None else None
            if curve is None:
                self.stray_zap += 1
                status, text, user = b"400", b"unknown ZAP domain", b""
            else:
                ok, text_s, user = curve._authorize(
                    mechanism, creds, address.decode("utf-8", "replace")
                )
                status, text = (b"200", b"OK") if ok else (b"400", text_s.encode())
            zap.send_multipart([ident, b"", b"1.0", request_id, status, text, user, b""])


_HUBS: dict[int, _Hub] = {}
_MONITOR_SEQ = itertools.count(1)
_HUBS_LOCK = threading.Lock()


#: Whether sockets created from now on do their hot-path I/O through
#: ``pybus._native._zmqfast`` (straight into the libzmq pyzmq loaded) instead of pyzmq's
#: Python-level send/recv (RPC client and server, work queue and worker). False when that
#: library could not be resolved or verified, or when ``PYBUS_NO_ZMQ_FASTPATH=1`` was set at
#: import; tests set it to exercise both paths.
FASTPATH: bool = _zmqfast.AVAILABLE


def fast_path() -> dict[str, Any]:
    """Which I/O path this process's new sockets take, and why.

    Returns ``{"enabled": bool, "reason": str, "library": str}``: ``enabled`` is True when the
    hot paths call libzmq directly (the fast path; see "The libzmq fast path" in
    docs/operations.md), ``reason`` says why not when it is off (empty when on), ``library``
    is the file libzmq was resolved from (empty when it was not).
    """
    reason = _zmqfast.UNAVAILABLE_REASON or ("" if FASTPATH else "disabled in this process")
    return {"enabled": FASTPATH, "reason": reason, "library": _zmqfast.library_path()}


def fast_address(sock: zmq.Socket[Any]) -> int:
    """``sock.underlying`` when the fast path may drive ``sock``, else 0.

    Only plain pyzmq sockets qualify: a subclass (zmq.green, a user's socket_class) may
    override send/recv to cooperate with an event loop, which a blocking C call would bypass.
    The address dies with the socket: re-read it whenever the socket is replaced.
    """
    if FASTPATH and type(sock) is zmq.Socket:
        return int(sock.underlying)
    return 0


def hub_for(ctx: zmq.Context[Any]) -> _Hub:
    """The hub of ``ctx``, started on first use (and again after it exited)."""
    with _HUBS_LOCK:
        hub = _HUBS.get(id(ctx))
        if hub is not None and hub.alive and hub._ctx_ref() is ctx:
            return hub
        hub = _Hub(ctx)
        _HUBS[id(ctx)] = hub
        return hub


def check_options(security: Any, liveness: Any) -> None:
    """Validate ``security=`` / ``liveness=`` arguments early (in a constructor)."""
    if liveness is not None and not isinstance(liveness, Liveness):
        raise ValidationError(f"liveness must be a pybus.Liveness, got {type(liveness).__name__}")
    if security is not None:
        if not isinstance(security, SocketSecurity):
            raise ValidationError(
                f"security must be a pybus.Curve (Curve.server(...) or Curve.client(...)), got "
                f"{type(security).__name__}"
            )


def apply_liveness(
    sock: zmq.Socket[Any], lv: Liveness, *, heartbeats: bool = True, reconnect: bool = True
) -> None:
    """Set ``lv``'s heartbeat, TCP keepalive and reconnection options on ``sock``.

    The option-setting part of :func:`configure`, for sockets that take their security hook
    and monitor from :func:`secure_and_watch` instead (the RPC sockets, whose CURVE is a hook
    and whose client sockets are replaced on every Lazy Pirate reset, keeping one
    :class:`SocketWatch`). Call it once per socket, before bind/connect.

    Parameters
    ----------
    sock : zmq.Socket
        The socket (not yet bound or connected).
    lv : Liveness
        The options to apply (``lv.monitor`` and ``lv.on_peer`` are not used here).
    heartbeats : bool
        Set the ZMTP heartbeat options (False for sockets that receive into a queue the
        application may let fill up; see :class:`Liveness`).
    reconnect : bool
        Set ``RECONNECT_IVL`` / ``RECONNECT_IVL_MAX`` / ``CONNECT_TIMEOUT`` (False when the
        caller keeps its own reconnection settings).
    """
    if heartbeats and lv.heartbeat_ivl_ms:
        sock.setsockopt(zmq.HEARTBEAT_IVL, lv.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, lv.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, lv.heartbeat_ttl_ms)
    if lv.tcp_keepalive_idle_s:
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, lv.tcp_keepalive_idle_s)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, lv.tcp_keepalive_intvl_s))
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, max(1, lv.tcp_keepalive_cnt))
    if reconnect:
        sock.setsockopt(zmq.RECONNECT_IVL, lv.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, lv.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, lv.connect_timeout_ms)


def check_rpc_liveness(liveness: Any) -> None:
    """Validate an RPC object's ``liveness=`` (a :class:`Liveness` or None)."""
    if liveness is None:
        return
    if not isinstance(liveness, Liveness):
        raise ValidationError(f"liveness must be a pybus.Liveness, got {type(liveness).__name__}")


def secure_and_watch(
    sock: zmq.Socket[Any],
    security: Any,
    liveness: Liveness | None,
    *,
    context: zmq.Context[Any] | None = None,
    into: SocketWatch | None = None,
) -> SocketWatch | None:
    """Apply an RPC object's ``security=`` hook and start its socket monitor (before
    bind/connect); the liveness *options* are set by the caller (:func:`apply_liveness`).

    ``security`` is any ``hook(socket)``; a :class:`pybus.Curve` server is applied directly so
    that its failed handshakes are counted by this socket's one monitor (ZeroMQ keeps a single
    monitor per socket: a second would silence the first). ``into`` keeps counting into an
    existing :class:`SocketWatch` (a Lazy Pirate client replaces its socket but keeps its
    counters); the old socket's monitor ends with that socket (ZeroMQ sends
    ``MONITOR_STOPPED`` when it is closed, and the hub then closes its end).

    Returns the socket's :class:`SocketWatch`, or None when ``liveness.monitor`` is False.
    """
    lv = DEFAULT_LIVENESS if liveness is None else liveness
    curves: list[SocketSecurity] = []
    if security is not None:
        if isinstance(security, SocketSecurity):
            security.apply(sock, context)
            if security.is_server:
                curves.append(security)
        else:
            security(sock)
    if not lv.monitor:
        if curves:  # as the Curve hook always did: its failed handshakes are counted
            watch(sock, None, curves, context)
        return None
    return watch(sock, lv.on_peer, curves, context, into=into)


def watched_monitors(ctx: zmq.Context[Any]) -> int:
    """How many socket monitors the hub of ``ctx`` reads (or was handed and will read);
    0 without a hub. A closed socket's monitor leaves this count once the hub has seen its
    MONITOR_STOPPED event (asynchronously)."""
    with _HUBS_LOCK:
        hub = _HUBS.get(id(ctx))
    if hub is None or hub._ctx_ref() is not ctx:
        return 0
    return hub.monitors


def configure(
    sock: zmq.Socket[Any],
    *,
    security: SocketSecurity | None = None,
    liveness: Liveness | None = None,
    max_msg_bytes: int | None = None,
    context: zmq.Context[Any] | None = None,
    receives_stream: bool = False,
    into: SocketWatch | None = None,
) -> SocketWatch | None:
    """Apply pybus's transport options to a fresh socket (before bind/connect).

    Parameters
    ----------
    sock : zmq.Socket
        The socket (not yet bound or connected).
    security : pybus.Curve, optional
        CURVE server or client settings; ``None`` leaves the socket in plaintext (NULL).
    liveness : Liveness, optional
        Heartbeats, reconnection and monitoring; default :data:`DEFAULT_LIVENESS`.
    max_msg_bytes : int, optional
        ``MAXMSGSIZE``: larger frames are refused before allocation.
    context : zmq.Context, optional
        The socket's context when ``sock.context`` does not tell (a shadow socket).
    receives_stream : bool
        The socket receives a data stream into a bounded queue the application may let fill
        up: no ZMTP heartbeats (see :class:`Liveness`), TCP keepalive only.
    into : SocketWatch, optional
        Count this socket's events into an existing watch (a socket that replaces another,
        e.g. a worker's new session), so the owner's counters and ``on_peer`` carry on.

    Returns
    -------
    SocketWatch or None
        The socket's peer-event counters (None when ``liveness.monitor`` is False).
    """
    lv = DEFAULT_LIVENESS if liveness is None else liveness
    if not isinstance(lv, Liveness):
        raise ValidationError(f"liveness must be a pybus.Liveness, got {type(lv).__name__}")
    apply_liveness(sock, lv, heartbeats=not receives_stream)
    if max_msg_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, int(max_msg_bytes))
    curves: list[SocketSecurity] = []
    if security is not None:
        if not isinstance(security, SocketSecurity):
            raise ValidationError(
                f"security must be a pybus.Curve (Curve.server(...) or Curve.client(...)), got "
                f"{type(security).__name__}"
            )
        security.apply(sock, context)
        if security.is_server:
            curves.append(security)
    if not lv.monitor:
        return None
    return watch(sock, lv.on_peer, curves, context, into=into)


def watch(sock: zmq.Socket[Any], on_peer: PeerCallback | None = None,
          curves: list[SocketSecurity] | None = None, context: zmq.Context[Any] | None = None,
          *, into: SocketWatch | None = None) -> SocketWatch:
    """Monitor ``sock``'s peer events (before bind/connect); returns its counters.

    ``into``: count into this existing :class:`SocketWatch` (its ``on_peer`` is kept) rather
    than a new one, e.g. for the successive sockets of one Lazy Pirate client.
    """
    w = into if into is not None else SocketWatch(on_peer)
    curves = curves or []
    ctx = context if context is not None else sock.context
    hub = hub_for(ctx)
    # unique per monitor: an old socket's monitor endpoint may still be bound while its
    # socket is being reaped, and Python may reuse the old socket object's id
    addr = f"inproc://pybus-monitor-{next(_MONITOR_SEQ)}-{id(sock):x}-{id(w):x}"
    sock.monitor(addr, zmq.EVENT_ALL)
    mon = ctx.socket(zmq.PAIR)
    mon.linger = 0
    mon.connect(addr)  # connected here, so no event is lost before the hub reads it
    while not hub.watch(mon, w, curves):  # that hub was exiting: a new one takes over
        hub = hub_for(ctx)
    w._hub = hub
    return w


def rebind(sock: zmq.Socket[Any], bound: list[str], connected: list[str]) -> None:
    """Drop ``sock``'s connections by unbinding/rebinding (disconnecting/reconnecting).

    The fallback of :meth:`SocketWatch.drop_connections` for sockets without a monitor: it
    closes listeners and outgoing connections, but libzmq does not always close connections
    already accepted on an unbound endpoint, so it is best effort. The caller must own ``sock``.
    """
    for ep in bound:
        try:
            sock.unbind(ep)
        except zmq.ZMQError:
            pass
    for ep in connected:
        try:
            sock.disconnect(ep)
        except zmq.ZMQError:
            pass
    for ep in bound:
        # unbind completes in ZeroMQ's I/O thread: the port may be busy for a moment
        deadline = time.monotonic() + 2.0
        while True:
            try:
                sock.bind(ep)
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
    for ep in connected:
        sock.connect(ep)


from ..errors import BackpressureError  # noqa: E402


class SlowConsumerError(BackpressureError):
    """A subscriber with ``slow_consumer="close"`` fell behind and closed itself.

    Raised by ``recv``/``recv_batch`` once the subscriber detected that it lost messages
    (a sequence gap: the publisher or a proxy dropped frames at its high-water mark) or lagged
    more than ``max_lag_s`` behind the publisher's clock (the ZeroMQ guide's "Suicidal Snail":
    better to stop and be restarted or alerted than to consume stale data silently).
    ``reason`` is ``"gap"`` or ``"lag"``; ``stats`` is the subscriber's last ``stats()``.
    """

    retryable = False

    def __init__(self, message: str, reason: str = "gap", stats: dict[str, Any] | None = None):
        super().__init__(message, reason=reason)
        self.reason = reason
        self.stats = stats or {}
