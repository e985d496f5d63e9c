"""Request/reply over ZeroMQ ROUTER/DEALER: :class:`Server` and :class:`Client`.

The wire format is specified byte by byte in ``docs/wire-reqrep.md``
("Request/reply"). In short, every request and reply is ONE ZeroMQ frame::

    version:u8 | kind:u8 | flags:u8 | method_len:u8 | correlation_id:u64le | method | payload

(the ROUTER adds the peer identity frame in front, as ZeroMQ always does).

The client is a "Lazy Pirate": it waits for the reply with a timeout, and when
an attempt times out and its retry policy allows another one, it closes the
socket (linger 0) and opens a fresh one before sending again, so nothing stale
stays queued towards a dead server. Every request carries a new correlation
id; a reply whose id is not the one awaited (a late reply to an abandoned
attempt) is dropped and counted, never returned.

Example
-------
>>> server = Server("ipc:///tmp/calc")                     # doctest: +SKIP
>>> @server.handler("add")
... def add(args):
...     return args[0] + args[1]
>>> server.start()
>>> with Client("ipc:///tmp/calc", timeout=1.0) as client:
...     client.request("add", [1, 2])
3
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import msgpack
import zmq
from zmq.backend import Socket as _ZmqBackendSocket

from .. import metrics as _metrics
from .._native import Histogram, _zmqfast
from ..errors import (
    BusError,
    ClosedError,
    ErrorCode,
    FrameError,
    RemoteError,
    RetryExhaustedError,
    TimeoutError,
    ValidationError,
    from_zmq,
)
from ..metrics.samples import NS, HdrValue, RawSample, transport_samples
from ..policy.breaker import CircuitBreaker
from ..policy.ratelimit import KeyedRateLimiter, RateLimiter
from ..policy.retry import RetryPolicy
from ..transport import sockets as _sockets
from ..transport.sockets import (
    DEFAULT_LIVENESS,
    Liveness,
    SocketWatch,
    apply_liveness,
    check_rpc_liveness,
    secure_and_watch,
)

__all__ = ["Server", "Client", "Handler"]

Handler = Callable[[Any], Any]

# -- wire constants (docs/wire-reqrep.md, "Request/reply") ------------------------------
WIRE_VERSION = 1
KIND_REQUEST = 0x01
KIND_REPLY = 0x02
KIND_ERROR = 0x03
KIND_CONTROL = 0x7F  # in-process only (inproc), never valid from the network
FLAG_MSGPACK = 0x01
HEADER = struct.Struct("<BBBBQ")
HEADER_SIZE = HEADER.size  # 12
MAX_METHOD_BYTES = 255
# Largest frame an RPC socket accepts by default (ZeroMQ MAXMSGSIZE): bounded memory per peer.
MAX_MESSAGE_BYTES = 64 << 20
_CID_MASK = (1 << 64) - 1
_CTRL_STOP = b"S"
_CTRL_FORWARD = b"F"
_BYTES_TYPES = (bytes, bytearray, memoryview)
# Plain ints: pyzmq's flag constants are IntEnum members, converted on every call.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_PACK = HEADER.pack
_perf_counter_ns = time.perf_counter_ns
_monotonic = time.monotonic
_UNPACK_FROM = HEADER.unpack_from
# The server's receive timeout while idle: bounds how long stop() can take even
# if its wake-up message were lost; costs nothing while requests flow.
_IDLE_CHECK_MS = 100

_log = logging.getLogger("pybus.rpc")

_EAGAIN = int(zmq.EAGAIN)
_fast_call = _zmqfast.call
_fast_send_request = _zmqfast.send_request
_fast_recv_reply = _zmqfast.recv_reply
# (0: use pyzmq's calls; see pybus.transport.sockets.FASTPATH for when the fast path is on)
_fast_address = _sockets.fast_address


def _send_of(sock: zmq.Socket[Any]) -> Callable[..., Any]:
    """The unbound ``send`` to call as ``send(sock, data, flags)`` on the hot paths.

    pyzmq's ``zmq.Socket.send`` is a Python wrapper (routing_id/group handling we
    never use) around the compiled ``send``; calling the compiled one directly saves
    ~0.25 us per frame. A socket class that overrides ``send`` (zmq.green, a
    user's ``socket_class``) keeps its override.
    """
    send = type(sock).send
    if send is zmq.Socket.send and issubclass(zmq.Socket, _ZmqBackendSocket):
        return _ZmqBackendSocket.send  # type: ignore[no-any-return]
    return send  # type: ignore[no-any-return]


def encode_payload(payload: Any) -> tuple[int, bytes]:
    """Return (flags, bytes) for a payload: bytes go raw, anything else msgpack."""
    if type(payload) is bytes:
        return 0, payload
    if isinstance(payload, _BYTES_TYPES):
        return 0, bytes(payload)
    try:
        return FLAG_MSGPACK, msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"payload of type {type(payload).__name__} cannot be sent: {exc}; "
            "send bytes or msgpack-serialisable data (dict, list, str, int, float, bool, None)"
        ) from exc


def decode_payload(flags: int, body: bytes | memoryview) -> Any:
    """Inverse of :func:`encode_payload`; raises FrameError on corrupt msgpack."""
    if flags & FLAG_MSGPACK:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise FrameError(f"payload flagged msgpack does not decode: {exc}") from exc
    return bytes(body)


def method_bytes(name: str) -> bytes:
    """Validate and encode a method name (1-255 UTF-8 bytes)."""
    if not isinstance(name, str):
        raise ValidationError(f"method name must be a str, got {type(name).__name__}")
    b = name.encode("utf-8")
    if not 1 <= len(b) <= MAX_METHOD_BYTES:
        raise ValidationError(
            f"method name {name!r} is {len(b)} bytes; allowed: 1-{MAX_METHOD_BYTES} UTF-8 bytes"
        )
    return b


def error_payload(exc: BaseException) -> bytes:
    """The msgpack map an ERROR reply carries (type, message, code, retryable)."""
    if isinstance(exc, RemoteError):
        d = {
            "type": exc.remote_type,
            "message": exc.remote_message,
            "code": int(exc.remote_code),
            "retryable": exc.retryable,
        }
    elif isinstance(exc, BusError):
        d = {
            "type": type(exc).__name__,
            "message": exc.message,
            "code": int(exc.code),
            "retryable": bool(exc.retryable),
        }
    else:
        d = {
            "type": type(exc).__name__,
            "message": str(exc),
            "code": int(ErrorCode.UNKNOWN),
            "retryable": False,
        }
    return msgpack.packb(d, use_bin_type=True)


def remote_error(body: bytes | memoryview) -> RemoteError:
    """Build the RemoteError an ERROR reply describes."""
    try:
        d = msgpack.unpackb(body, raw=False)
        return RemoteError(
            str(d.get("message", "")),
            remote_type=str(d.get("type", "Exception")),
            remote_code=int(d.get("code", int(ErrorCode.UNKNOWN))),
            retryable=bool(d.get("retryable", False)),
        )
    except Exception as exc:  # a corrupt error body still must not pass silently
        return RemoteError(
            f"the server sent an error reply that does not decode ({exc})",
            remote_type="FrameError",
            remote_code=int(ErrorCode.FRAME),
        )


def _check_timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValidationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


#: Latencies above this (1 hour, in ns) are recorded as this.
_LATENCY_MAX_NS = 3_600_000_000_000


class _LogLimiter:
    """Log a recurring warning at most once per interval (the rest are only counted)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.interval_s:
            self._last[key] = now
            _log.warning(msg, *args)


# ======================================================================================
# Server
# ======================================================================================
class Server:
    """A request/reply server on a ZeroMQ ROUTER socket (binds).

    Parameters
    ----------
    endpoint : str
        Where to bind: ``tcp://HOST:PORT`` (port 0 or ``*`` picks one; see
        :attr:`endpoint`), ``ipc://PATH`` or ``inproc://NAME``.
    security : callable(socket) or None
        Applied to the ROUTER before it binds (e.g. a :class:`pybus.Curve` server; its
        allowlist, counters and ``revoke`` then cover this server's connections).
    liveness : pybus.Liveness or None
        ZMTP heartbeats (``HEARTBEAT_IVL`` / ``TIMEOUT`` / ``TTL``), TCP keepalive and
        reconnection options of the ROUTER, set once before it binds. Default (None): TCP
        keepalive of :class:`~pybus.Liveness` only, no ZMTP heartbeats -- the ROUTER receives
        every client's requests into one queue that a slow handler lets fill up, and libzmq
        <= 4.3.5 can abort when a heartbeat timeout hits such a connection (zeromq/libzmq#3937);
        pass a Liveness to have heartbeats anyway. The ROUTER is monitored like every pybus
        socket (unless ``monitor=False``): clients' ``accepted`` / ``disconnected`` / handshake
        events go to ``on_peer(event, endpoint)`` (called from the context's hub thread), are
        counted in ``stats()["peer_events"]`` and exported as ``pybus_peer_events_total``.
    workers : int
        0 (default) runs handlers inline in the I/O thread - the lowest
        latency; N > 0 runs them in a pool of N threads, so slow handlers do not
        hold up other requests.
    max_message_bytes : int
        Largest request frame accepted (ZeroMQ's ``MAXMSGSIZE``, default 64 MiB): a larger one
        is refused before allocation and its sender disconnected.
    max_inflight : int
        With workers, requests queued or running at once; beyond it a request is
        answered at once with a retryable ``BackpressureError``.
    rate_limit : RateLimiter, KeyedRateLimiter or None
        Admission control, never blocking the I/O thread: a request without a
        token is answered at once with a retryable ``RateLimitError``. A
        :class:`~pybus.KeyedRateLimiter` keeps one bucket per client (keyed by
        its ZeroMQ routing identity).
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    context : zmq.Context or None
        Default: the process-wide ``zmq.Context.instance()``.

    Notes
    -----
    Binding an ``ipc://`` path that another live server uses takes it over
    (ZeroMQ replaces the socket file); tcp reports "address in use" as a
    :class:`~pybus.TransportError`.

    A handler is called with the request payload as it was sent (bytes, or
    the msgpack-decoded object) and returns the reply payload (bytes go raw,
    anything else is msgpack-encoded). An exception it raises goes back to the
    client as :class:`~pybus.RemoteError` with its type, message and code.
    """

    def __init__(
        self,
        endpoint: str,
        security: Callable[[zmq.Socket[Any]], Any] | None = None,
        *,
        workers: int = 0,
        max_inflight: int = 1024,
        rate_limit: RateLimiter | KeyedRateLimiter | None = None,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        liveness: Liveness | None = None,
    ) -> None:
        check_rpc_liveness(liveness)
        if rate_limit is not None and not isinstance(rate_limit, (RateLimiter, KeyedRateLimiter)):
            raise ValidationError(
                f"rate_limit must be a RateLimiter, a KeyedRateLimiter (per client) or None, "
                f"got {rate_limit!r}"
            )
        self.rate_limit = rate_limit
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValidationError(
                f"endpoint {endpoint!r} is not valid; endpoints look like tcp://HOST:PORT, "
                "ipc://PATH or inproc://NAME"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValidationError(f"workers must be an int >= 0 (0 = inline), got {workers!r}")
        if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or max_inflight < 1:
            raise ValidationError(f"max_inflight must be an int >= 1, got {max_inflight!r}")
        if (isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int)
                or max_message_bytes < 64):
            raise ValidationError(
                f"max_message_bytes must be an int >= 64, got {max_message_bytes!r}"
            )
        self._ctx = context or zmq.Context.instance()
        self._handlers: dict[bytes, Handler] = {}
        self.workers = workers
        self.max_inflight = max_inflight
        self._token = os.urandom(16)
        self._ctrl_prefix = HEADER.pack(WIRE_VERSION, KIND_CONTROL, 0, 0, 0) + self._token
        self._ctrl_endpoint = f"inproc://pybus-rpc-{id(self):x}-{self._token.hex()[:8]}"
        self._stats: dict[str, int] = {
            "requests": 0,
            "replies": 0,
            "handler_errors": 0,
            "unknown_method": 0,
            "decode_errors": 0,
            "unroutable": 0,
            "busy_rejected": 0,
            "rate_limited": 0,
        }
        self._decode_reasons: dict[str, int] = {}
        # time in handler code, ns (2 significant figures); exported by pybus.metrics
        self._handler_latency = Histogram(1, _LATENCY_MAX_NS, 2)
        self._warn = _LogLimiter()
        self._thread: threading.Thread | None = None
        self._io_ident: int | None = None
        self._running = False
        self._closed = False
        self._shut = False
        self._loop_done = threading.Event()
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker_socks: list[zmq.Socket[Any]] = []
        self._worker_local = threading.local()
        self._inflight = 0
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Without ROUTER_MANDATORY a reply to a vanished client disappears
            # silently; with it we get EHOSTUNREACH and can count it.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # a larger frame is refused by ZeroMQ from its header, before allocation, and the
            # peer that sent it is disconnected
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if liveness is None:
                apply_liveness(sock, DEFAULT_LIVENESS, heartbeats=False, reconnect=False)
            else:
                apply_liveness(sock, liveness)
            # the security hook, then the monitor (one per socket: a Curve server's failed
            # handshakes are counted by the same one)
            self._watch: SocketWatch | None = secure_and_watch(
                sock, security, liveness, context=self._ctx
            )
            sock.bind(endpoint)
            # Read the resolved endpoint (tcp port 0 -> real port) before the
            # control bind below overwrites LAST_ENDPOINT.
            self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            sock.bind(self._ctrl_endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise from_zmq(exc, f"cannot bind RPC server to {endpoint!r}") from exc
        self._sock = sock
        # "libzmq" or "pyzmq": the I/O path of the serving loop (io_path); decided again when
        # the loop starts
        self._io_path = "libzmq" if _fast_address(sock) else "pyzmq"
        self._security = security
        register = getattr(security, "_register_owner", None)
        if register is not None and getattr(security, "is_server", False):
            register(self)  # Curve.revoke cuts this server's connections too
        _metrics.attach(self, registry)

    def _security_rekick(self) -> None:
        """After a Curve revocation: shut down every live connection so clients go through
        ZAP again (their Lazy Pirate retry reconnects; the revoked key is refused)."""
        if self._watch is not None and not self._closed:
            self._watch.drop_connections()

    # -- registration -------------------------------------------------------------------
    def handler(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator registering ``fn(payload) -> reply`` under ``name``."""
        method_bytes(name)  # fail at decoration time, not at first call

        def register(fn: Handler) -> Handler:
            self.add_handler(name, fn)
            return fn

        return register

    def add_handler(self, name: str, fn: Handler) -> None:
        """Register ``fn`` under ``name`` (replacing any earlier one)."""
        if not callable(fn):
            raise ValidationError(f"handler for {name!r} must be callable, got {fn!r}")
        key = method_bytes(name)
        # Copy-on-write so the I/O thread reads a dict nobody mutates.
        handlers = dict(self._handlers)
        handlers[key] = fn
        self._handlers = handlers

    @property
    def methods(self) -> list[str]:
        """Registered method names, sorted."""
        return sorted(k.decode() for k in self._handlers)

    @property
    def io_path(self) -> str:
        """``"libzmq"`` when this object's hot-path socket I/O calls libzmq directly (the fast
        path), ``"pyzmq"`` when it goes through pyzmq; see "The libzmq fast path" in
        docs/operations.md for when each is taken."""
        return self._io_path

    # -- stats --------------------------------------------------------------------------
    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "rpc_server"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for key, outcome in (("requests", "received"), ("replies", "replied"),
                             ("handler_errors", "handler_error"),
                             ("unknown_method", "unknown_method"),
                             ("busy_rejected", "busy_rejected"), ("unroutable", "unroutable")):
            yield "pybus_rpc_requests_total", {"role": "server", "outcome": outcome}, s[key]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_in_flight", {}, s["inflight"]
        yield "pybus_handler_latency_seconds", {}, HdrValue(self._handler_latency, NS)
        yield from transport_samples(s, self._security)

    def metrics_readiness(self) -> tuple[bool, str]:
        return (False, "rpc server is closed") if self._closed else (True, "")

    def stats(self) -> dict[str, Any]:
        """Counters: requests, replies, handler_errors, unknown_method, decode_errors
        (malformed frames dropped; ``decode_error_reasons`` splits them by reason),
        unroutable (replies whose client had gone), busy_rejected, inflight, and the socket
        monitor's ``peer_events`` (event name -> count) and ``peers`` (connections up)."""
        out: dict[str, Any] = dict(self._stats)
        out["decode_error_reasons"] = dict(self._decode_reasons)
        out["inflight"] = self._inflight
        w = self._watch
        out["peer_events"] = dict(w.events) if w is not None else {}
        out["peers"] = w.peers if w is not None else None
        return out

    def _bad_frame(self, reason: str) -> None:
        self._stats["decode_errors"] += 1
        self._decode_reasons[reason] = self._decode_reasons.get(reason, 0) + 1
        self._warn.warn(
            "decode:" + reason,
            "pybus rpc server %s: dropped a malformed frame (%s); counted in stats()",
            self.endpoint,
            reason,
        )

    # -- lifetime -----------------------------------------------------------------------
    def start(self) -> Server:
        """Serve in a background thread; returns self."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"RPC server {self.endpoint} is stopped; create a new one")
            if self._running:
                raise ValidationError("RPC server is already running")
            self._running = True
            self._thread = threading.Thread(
                target=self._serve, name=f"pybus-rpc-server {self.endpoint}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another thread."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"RPC server {self.endpoint} is stopped; create a new one")
            if self._running:
                raise ValidationError("RPC server is already running")
            self._running = True
        try:
            self._serve()
        finally:
            self._shutdown()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and the worker pool; idempotent.

        Waits up to ``timeout`` seconds for the I/O loop to finish its current
        request. Safe to call from a handler (the loop then ends after it).
        """
        with self._lock:
            if self._closed:
                return
            running = self._running
            self._closed = True
        if not running:
            self._shutdown()
            return
        if threading.get_ident() == self._io_ident:
            return  # inside a handler: the loop sees _closed when it returns
        # Wake the loop at once; should the wake-up not get through, the loop's
        # receive timeout (_IDLE_CHECK_MS) still notices _closed.
        waker = self._ctx.socket(zmq.DEALER)
        try:
            waker.setsockopt(zmq.LINGER, 200)
            waker.connect(self._ctrl_endpoint)
            waker.send(self._ctrl_prefix + _CTRL_STOP, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            waker.close()
        if not self._loop_done.wait(timeout):
            _log.error("pybus rpc server %s: I/O loop did not stop in %g s", self.endpoint, timeout)
            return
        if self._thread is not None:
            self._thread.join(timeout)
            self._shutdown()
        # serve_forever's own thread runs _shutdown on its way out.

    def _shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for s in self._worker_socks:
            s.close(0)
        self._worker_socks.clear()
        self._sock.close(0)
        self._running = False

    close = stop

    def __enter__(self) -> Server:
        if not self._running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the I/O loop -------------------------------------------------------------------
    def _serve(self) -> None:
        self._io_ident = threading.get_ident()
        try:
            self._loop()
        finally:
            self._loop_done.set()

    def _loop(self) -> None:
        if self.workers and self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix="pybus-rpc-worker"
            )
        sock = self._sock
        addr = _fast_address(sock)
        self._io_path = "libzmq" if addr else "pyzmq"
        if addr:
            self._loop_fast(addr)
            return
        recv = sock.recv
        zsend = _send_of(sock)
        getsockopt = sock.getsockopt
        unpack_from = HEADER.unpack_from
        pack = HEADER.pack
        pool = self._pool  # set above, cleared only by _shutdown after the loop ends
        stats = self._stats
        ctrl_prefix = self._ctrl_prefix
        forward_marker = ctrl_prefix + _CTRL_FORWARD
        stop_marker = ctrl_prefix + _CTRL_STOP
        RCVMORE, MORE_NOBLOCK, NOBLOCK = zmq.RCVMORE, _SNDMORE_NOBLOCK, _NOBLOCK
        # Module globals and builtins as locals: in this long-running loop CPython 3.11
        # left the LOAD_GLOBALs unspecialised (callgrind: ~13 dict lookups per request).
        header_size, wire_version, flag_msgpack = HEADER_SIZE, WIRE_VERSION, FLAG_MSGPACK
        kind_request, kind_reply, kind_error = KIND_REQUEST, KIND_REPLY, KIND_ERROR
        len_, type_, bytes_ = len, type, bytes
        sock.setsockopt(zmq.RCVTIMEO, _IDLE_CHECK_MS)
        while not self._closed:
            try:
                try:
                    ident = recv()
                except zmq.Again:
                    continue  # idle: re-check _closed
                # The body as a zmq.Frame only to read its "more" flag: pyzmq's
                # getsockopt(RCVMORE) costs about twice a Frame (~8.7k vs ~4.9k
                # instructions: it builds a SocketOption enum on every call).
                zframe = recv(0, False)
                frame = zframe.bytes
                if zframe.more:
                    if frame == forward_marker:
                        self._forward_worker_reply()
                        continue
                    # A well-formed request is a single frame after the identity.
                    while getsockopt(RCVMORE):
                        recv()
                    self._bad_frame("multipart")
                    continue
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    break
                raise
            if len_(frame) < header_size:
                self._bad_frame("short")
                continue
            version, kind, flags, mlen, cid = unpack_from(frame)
            if version != wire_version:
                self._bad_frame("version")
                continue
            if flags & ~flag_msgpack:
                self._bad_frame("flags")  # reserved bits must be zero
                continue
            if kind != kind_request:
                if frame == stop_marker:
                    break
                self._bad_frame("kind")
                continue
            end = header_size + mlen
            if mlen == 0 or len_(frame) < end:
                self._bad_frame("method")
                continue
            stats["requests"] += 1
            fn = self._handlers.get(frame[header_size:end])
            if self.rate_limit is not None and not self._admit(ident):
                stats["rate_limited"] += 1
                reply = pack(wire_version, kind_error, flag_msgpack, 0, cid) + self._limited(ident)
            elif fn is None:
                stats["unknown_method"] += 1
                reply = pack(wire_version, kind_error, flag_msgpack, 0, cid) + self._unknown(
                    frame[header_size:end]
                )
            else:
                try:
                    arg = decode_payload(flags, frame[end:]) if flags else frame[end:]
                except FrameError as exc:
                    self._bad_frame("payload")
                    reply = pack(wire_version, kind_error, flag_msgpack, 0, cid)
                    reply += error_payload(exc)
                else:
                    if pool is not None:
                        self._submit(fn, arg, ident, cid)
                        continue
                    # _call inlined: this is the per-request hot path.
                    try:
                        result = fn(arg)
                        if type_(result) is bytes_:
                            reply = pack(wire_version, kind_reply, 0, 0, cid) + result
                        else:
                            rflags, body = encode_payload(result)
                            reply = pack(wire_version, kind_reply, rflags, 0, cid) + body
                    except Exception as exc:  # noqa: BLE001 - goes back to the client
                        stats["handler_errors"] += 1
                        reply = pack(wire_version, kind_error, flag_msgpack, 0, cid)
                        reply += error_payload(exc)
            try:
                zsend(sock, ident, MORE_NOBLOCK)
                zsend(sock, reply, NOBLOCK)
                stats["replies"] += 1
            except zmq.ZMQError as exc:
                self._send_failed(exc)

    def _loop_fast(self, addr: int) -> None:
        """The I/O loop on ``_zmqfast``: the request is read and its header judged in C, the
        reply header written in C; the decisions (and their counters) stay here, in the same
        order as the pyzmq loop (_loop)."""
        sock = self._sock
        recv = sock.recv
        getsockopt = sock.getsockopt
        recv_request = _zmqfast.recv_request
        send_reply = _zmqfast.send_reply
        pool = self._pool  # set by _loop, cleared only by _shutdown after the loop ends
        stats = self._stats
        ctrl_prefix = self._ctrl_prefix
        forward_marker = ctrl_prefix + _CTRL_FORWARD
        stop_marker = ctrl_prefix + _CTRL_STOP
        multipart, kind_reason = _zmqfast.REASON_MULTIPART, _zmqfast.REASON_KIND
        RCVMORE = zmq.RCVMORE
        # Module globals and builtins as locals (see _loop).
        flag_msgpack, kind_reply, kind_error = FLAG_MSGPACK, KIND_REPLY, KIND_ERROR
        type_, bytes_, closed_error = type, bytes, ClosedError
        sock.setsockopt(zmq.RCVTIMEO, _IDLE_CHECK_MS)
        while not self._closed:
            try:
                r = recv_request(addr)
            except closed_error:
                break
            if r is None:
                continue  # idle: re-check _closed
            reason, ident, cid, flags, method, data = r
            if reason is not None:
                if reason == multipart:
                    try:
                        if data == forward_marker:
                            self._forward_worker_reply()
                            continue
                        # A well-formed request is a single frame after the identity.
                        while getsockopt(RCVMORE):
                            recv()
                    except zmq.ZMQError as exc:
                        if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                            break
                        raise
                elif reason == kind_reason and data == stop_marker:
                    break
                self._bad_frame(reason)
                continue
            stats["requests"] += 1
            # reason None: method is the bytes name (recv_request's contract)
            fn = self._handlers.get(method)  # type: ignore[arg-type]
            if self.rate_limit is not None and not self._admit(ident):
                stats["rate_limited"] += 1
                kind, rflags, body = kind_error, flag_msgpack, self._limited(ident)
            elif fn is None:
                stats["unknown_method"] += 1
                kind, rflags, body = kind_error, flag_msgpack, self._unknown(method)  # type: ignore[arg-type]
            else:
                try:
                    arg = decode_payload(flags, data) if flags else data
                except FrameError as exc:
                    self._bad_frame("payload")
                    kind, rflags, body = kind_error, flag_msgpack, error_payload(exc)
                else:
                    if pool is not None:
                        self._submit(fn, arg, ident, cid)
                        continue
                    try:
                        result = fn(arg)
                        if type_(result) is bytes_:
                            kind, rflags, body = kind_reply, 0, result
                        else:
                            rflags, body = encode_payload(result)
                            kind = kind_reply
                    except Exception as exc:  # noqa: BLE001 - goes back to the client
                        stats["handler_errors"] += 1
                        kind, rflags, body = kind_error, flag_msgpack, error_payload(exc)
            err = send_reply(addr, ident, cid, kind, rflags, body)
            if err:
                self._send_failed(zmq.ZMQError(err))
            else:
                stats["replies"] += 1

    def _forward_worker_reply(self) -> None:
        """A worker thread's reply, [marker][client identity][reply], after its marker was read:
        send it on to the client (only the I/O thread may touch the ROUTER)."""
        sock = self._sock
        client = sock.recv()
        reply = sock.recv() if sock.getsockopt(zmq.RCVMORE) else b""
        self._inflight -= 1
        try:
            sock.send(client, _SNDMORE_NOBLOCK)
            sock.send(reply, _NOBLOCK)
            self._stats["replies"] += 1
        except zmq.ZMQError as exc:
            self._send_failed(exc)

    def _send_failed(self, exc: zmq.ZMQError) -> None:
        if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
            # The client went away (or stopped reading) before its reply: drop, count.
            self._stats["unroutable"] += 1
        elif exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
            self._closed = True
        else:
            raise from_zmq(exc, "RPC server reply") from exc

    def _call(self, fn: Handler, arg: Any, cid: int) -> bytes:
        t0 = time.perf_counter_ns()
        try:
            try:
                result = fn(arg)
            finally:
                took = time.perf_counter_ns() - t0
                self._handler_latency.record(took if took < _LATENCY_MAX_NS else _LATENCY_MAX_NS)
            if type(result) is bytes:
                return HEADER.pack(WIRE_VERSION, KIND_REPLY, 0, 0, cid) + result
            flags, body = encode_payload(result)
            return HEADER.pack(WIRE_VERSION, KIND_REPLY, flags, 0, cid) + body
        except Exception as exc:  # noqa: BLE001 - every handler error goes back to the client
            with self._lock:  # worker threads share the counter
                self._stats["handler_errors"] += 1
            return HEADER.pack(WIRE_VERSION, KIND_ERROR, FLAG_MSGPACK, 0, cid) + error_payload(exc)

    def _admit(self, ident: bytes) -> bool:
        limiter = self.rate_limit
        if isinstance(limiter, KeyedRateLimiter):
            return limiter.try_acquire(ident)
        assert limiter is not None
        return limiter.try_acquire()

    def _limited(self, ident: bytes) -> bytes:
        limiter = self.rate_limit
        bucket = limiter.bucket(ident) if isinstance(limiter, KeyedRateLimiter) else limiter
        assert bucket is not None
        wait = bucket.retry_after()
        return msgpack.packb(
            {
                "type": "RateLimitError",
                "message": f"rate limit exceeded ({bucket.rate:g} requests/s, burst "
                f"{bucket.burst:g}); next token in {wait:.3g} s",
                "code": int(ErrorCode.RATE_LIMITED),
                "retryable": True,
            }
        )

    def _unknown(self, name: bytes) -> bytes:
        shown = name.decode("utf-8", "replace")
        known = ", ".join(self.methods) or "(none)"
        return msgpack.packb(
            {
                "type": "UnknownMethodError",
                "message": f"no handler named {shown!r} on this server; registered: {known}",
                "code": int(ErrorCode.UNKNOWN_METHOD),
                "retryable": False,
            }
        )

    # -- worker pool --------------------------------------------------------------------
    def _submit(self, fn: Handler, arg: Any, ident: bytes, cid: int) -> None:
        if self._inflight >= self.max_inflight:
            self._stats["busy_rejected"] += 1
            body = msgpack.packb(
                {
                    "type": "BackpressureError",
                    "message": f"server busy: {self._inflight} requests in flight "
                    f"(max_inflight={self.max_inflight}); retry later",
                    "code": int(ErrorCode.BACKPRESSURE),
                    "retryable": True,
                }
            )
            reply = HEADER.pack(WIRE_VERSION, KIND_ERROR, FLAG_MSGPACK, 0, cid) + body
            try:
                self._sock.send(ident, zmq.SNDMORE | zmq.NOBLOCK)
                self._sock.send(reply, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                self._send_failed(exc)
            return
        self._inflight += 1
        assert self._pool is not None
        self._pool.submit(self._work, fn, arg, ident, cid)

    def _work(self, fn: Handler, arg: Any, ident: bytes, cid: int) -> None:
        reply = self._call(fn, arg, cid)
        sock = getattr(self._worker_local, "sock", None)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._ctrl_endpoint)
            self._worker_local.sock = sock
            with self._lock:
                self._worker_socks.append(sock)
        # Only the I/O thread may touch the ROUTER: hand the reply over inproc.
        sock.send(self._ctrl_prefix + _CTRL_FORWARD, zmq.SNDMORE)
        sock.send(ident, zmq.SNDMORE)
        sock.send(reply)


# ======================================================================================
# Client
# ======================================================================================
def _open_dealer(
    ctx: zmq.Context[Any],
    endpoint: str,
    security: Callable[[zmq.Socket[Any]], Any] | None,
    socket_class: Any = None,
    liveness: Liveness | None = None,
) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER) if socket_class is None else socket_class(ctx, zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        # IMMEDIATE: queue only on completed connections, so a request to a dead
        # server is not parked in a pipe and replayed when it comes back.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if liveness is None:
            # Lazy Pirate defaults: reconnect fast to a server that comes back; heartbeats
            # and keepalive of the default Liveness notice one that died silently.
            sock.setsockopt(zmq.RECONNECT_IVL, 20)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            apply_liveness(sock, DEFAULT_LIVENESS, reconnect=False)
        else:
            apply_liveness(sock, liveness)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if security is not None:
            security(sock)
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise from_zmq(exc, f"cannot connect RPC client to {endpoint!r}") from exc
    return sock


class _ClientBase:
    """Validation, stats and policy plumbing shared by Client and AsyncClient."""

    _security: Any = None  # the socket's security, set by each client

    def __init__(
        self,
        endpoint: str,
        timeout: float,
        retry: RetryPolicy | None,
        breaker: CircuitBreaker | None,
        rate_limit: RateLimiter | None,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValidationError(
                f"endpoint {endpoint!r} is not valid; endpoints look like tcp://HOST:PORT, "
                "ipc://PATH or inproc://NAME"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError(f"retry must be a pybus.RetryPolicy or None, got {retry!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ValidationError(f"breaker must be a CircuitBreaker or None, got {breaker!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimiter):
            raise ValidationError(f"rate_limit must be a RateLimiter or None, got {rate_limit!r}")
        self.endpoint = endpoint
        self.timeout = _check_timeout("timeout", timeout)
        self.retry = retry
        self.breaker = breaker
        self.rate_limit = rate_limit
        self._plain = retry is None and breaker is None and rate_limit is None
        # Random start: ids from two client incarnations on one server never collide.
        self._cid = int.from_bytes(os.urandom(8), "little")
        self._methods: dict[str, bytes] = {}
        self._closed = False
        self._stats: dict[str, int] = {
            "requests": 0,
            "replies": 0,
            "remote_errors": 0,
            "timeouts": 0,
            "retries": 0,
            "reconnects": 0,
            "late_replies": 0,
            "decode_errors": 0,
        }
        # round trips of successful requests, ns (2 significant figures), for pybus.metrics
        self._rpc_latency = Histogram(1, _LATENCY_MAX_NS, 2)
        # peer events of every DEALER this client opens (one SocketWatch across resets)
        self._watch: SocketWatch | None = None
        self._monitor_ctx: zmq.Context[Any] | None = None

    def _secure_and_watch(self, sock: zmq.Socket[Any]) -> None:
        """The hook ``_open_dealer`` applies to each new DEALER (before it connects): the
        user's ``security`` hook, then the socket monitor, counting into the one ``_watch``
        this client keeps across Lazy Pirate resets (a closed socket's monitor ends with it)."""
        self._watch = secure_and_watch(
            sock, getattr(self, "_security", None), getattr(self, "_liveness", None),
            context=self._monitor_ctx, into=self._watch,
        )

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "rpc_client"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for key, outcome in (("requests", "sent"), ("replies", "replied"),
                             ("remote_errors", "remote_error"), ("timeouts", "timeout"),
                             ("late_replies", "late_reply")):
            yield "pybus_rpc_requests_total", {"role": "client", "outcome": outcome}, s[key]
        yield "pybus_retries_total", {}, s["retries"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_rpc_latency_seconds", {}, HdrValue(self._rpc_latency, NS)
        yield from transport_samples(s, self._security)

    def metrics_readiness(self) -> tuple[bool, str]:
        return (False, "rpc client is closed") if self._closed else (True, "")

    def stats(self) -> dict[str, Any]:
        """Counters: requests, replies, remote_errors, timeouts (attempts that got no
        reply in time), retries, reconnects (Lazy Pirate socket resets),
        late_replies (replies to abandoned attempts, dropped), decode_errors
        (malformed frames dropped), and the socket monitor's ``peer_events`` (event name ->
        count, over every socket the client opened) and ``peers`` (connections up)."""
        out: dict[str, Any] = dict(self._stats)
        w = self._watch
        out["peer_events"] = dict(w.events) if w is not None else {}
        out["peers"] = w.peers if w is not None else None
        return out

    def _method(self, name: str) -> bytes:
        mb = self._methods.get(name)
        if mb is None:
            mb = method_bytes(name)
            if len(self._methods) < 1024:  # bounded cache
                self._methods[name] = mb
        return mb

    def _next_cid(self) -> int:
        self._cid = (self._cid + 1) & _CID_MASK
        return self._cid

    def _attempt_timeout(self, timeout: float, remaining: float | None) -> float:
        if remaining is None:
            return timeout
        return max(0.001, min(timeout, remaining))

    def _parse_reply(self, reply: bytes, cid: int) -> tuple[bool, Any]:
        """(True, value) for our reply; (False, None) for one to drop (counted).
        Raises RemoteError for our error reply, FrameError for our corrupt reply."""
        if len(reply) < HEADER_SIZE:
            self._stats["decode_errors"] += 1
            return False, None
        version, kind, flags, _mlen, rcid = HEADER.unpack_from(reply)
        if version != WIRE_VERSION or kind not in (KIND_REPLY, KIND_ERROR) or flags & ~FLAG_MSGPACK:
            self._stats["decode_errors"] += 1
            return False, None
        if rcid != cid:
            self._stats["late_replies"] += 1
            return False, None
        if kind == KIND_REPLY:
            self._stats["replies"] += 1
            if flags & FLAG_MSGPACK:
                try:
                    return True, decode_payload(flags, reply[HEADER_SIZE:])
                except FrameError:
                    self._stats["decode_errors"] += 1
                    raise
            return True, reply[HEADER_SIZE:]
        self._stats["remote_errors"] += 1
        raise remote_error(reply[HEADER_SIZE:])

    def _exhausted(self, ex: RetryExhaustedError, name: str, timeout: float) -> BusError:
        if isinstance(ex.last_error, TimeoutError):
            err = TimeoutError(
                f"no reply to {name!r} from {self.endpoint} after {ex.attempts} attempts "
                f"({timeout:g} s each); is the server running?",
                attempts=ex.attempts,
            )
            return err
        return ex


class Client(_ClientBase, _zmqfast.ClientCore):
    """A request/reply client on a ZeroMQ DEALER socket (connects).

    Parameters
    ----------
    endpoint : str
        The server's endpoint.
    timeout : float
        Seconds to wait for each attempt's reply.
    retry : RetryPolicy or None
        Attempts and backoff; without it a request is tried once. Between
        attempts that timed out the socket is closed and reopened (Lazy Pirate).
    breaker : CircuitBreaker or None
        Consulted before every attempt; records each attempt's outcome.
    rate_limit : RateLimiter or None
        One token per attempt, waited for up to the attempt's timeout.
    security : callable(socket) or None
        Applied to each new DEALER before it connects (e.g. CURVE client keys).
    liveness : pybus.Liveness or None
        Heartbeat, TCP keepalive and reconnection options of each DEALER, set once when it is
        opened. Default (None): the heartbeats and keepalive of :class:`~pybus.Liveness` with
        the client's own fast reconnection (``RECONNECT_IVL`` 20 ms up to 1 s); a given
        Liveness also sets its reconnection options. Each DEALER is monitored (unless
        ``monitor=False``): ``on_peer(event, endpoint)`` gets its ``connected`` /
        ``disconnected`` / handshake events, called from the context's hub thread, and
        ``stats()["peer_events"]`` counts them over every socket the client opened (a Lazy
        Pirate reset replaces the socket; the old one's monitor ends with it).
    context : zmq.Context or None
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).

    Notes
    -----
    One request is in flight at a time (a lock serialises threads); use
    several clients or :class:`pybus.AsyncClient` for concurrent requests.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimiter | None = None,
        *,
        security: Callable[[zmq.Socket[Any]], Any] | None = None,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        liveness: Liveness | None = None,
    ) -> None:
        check_rpc_liveness(liveness)
        super().__init__(endpoint, timeout, retry, breaker, rate_limit)
        self._ctx = context or zmq.Context.instance()
        self._security = security
        self._liveness = liveness
        # (the request lock is ClientCore's: _acquire / _release)
        self._monitor_ctx = self._ctx
        self._sock = _open_dealer(self._ctx, endpoint, self._secure_and_watch, liveness=liveness)
        self._send = _send_of(self._sock)
        # The socket's address for _zmqfast (0: use pyzmq's calls); replaced with the socket.
        self._addr = _fast_address(self._sock)
        self._io_path = "libzmq" if self._addr else "pyzmq"  # io_path
        self._rcvtimeo_ms = -1
        # ClientCore.request's state, in C fields: the correlation id is _cid_base + _seq
        # (mod 2**64: the same sequence as _next_cid's), counters merged by stats(), and the
        # timeout RCVTIMEO is set for (0: none yet).
        self._cid_base = self._cid
        self._seq = 0
        self._n_requests = 0
        self._n_replies = 0
        self._fast_timeout = 0.0
        _metrics.attach(self, registry)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["requests"] += self._n_requests
        out["replies"] += self._n_replies
        return out

    stats.__doc__ = _ClientBase.stats.__doc__

    @property
    def io_path(self) -> str:
        """``"libzmq"`` when this object's hot-path socket I/O calls libzmq directly (the fast
        path), ``"pyzmq"`` when it goes through pyzmq; see "The libzmq fast path" in
        docs/operations.md for when each is taken."""
        return self._io_path

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket (and anything queued on it), open a fresh one.

        The new socket's monitor counts into the same ``_watch``; the old one's monitor stops
        with the old socket (ZeroMQ sends MONITOR_STOPPED, the hub closes its end)."""
        self._addr = 0
        self._sock.close(0)
        self._sock = _open_dealer(
            self._ctx, self.endpoint, self._secure_and_watch, liveness=self._liveness
        )
        self._send = _send_of(self._sock)
        self._addr = _fast_address(self._sock)
        self._io_path = "libzmq" if self._addr else "pyzmq"
        self._rcvtimeo_ms = -1
        self._fast_timeout = 0.0
        self._stats["reconnects"] += 1

    # request() is ClientCore.request (compiled): its common case in C, the rest here.
    def _request(self, name: str, payload: Any, timeout: float | None) -> Any:
        """The whole of :meth:`request` (ClientCore.request calls this for every case it does
        not handle itself)."""
        if self._closed:
            raise ClosedError(f"RPC client for {self.endpoint} is closed")
        mb = self._methods.get(name)
        if mb is None:
            mb = self._method(name)
        if type(payload) is bytes:
            flags, body = 0, payload
        else:
            flags, body = encode_payload(payload)
        t = self.timeout if timeout is None else _check_timeout("timeout", timeout)
        self._acquire()
        try:
            if self._closed:
                raise ClosedError(f"RPC client for {self.endpoint} is closed")
            self._n_requests += 1
            t0 = _perf_counter_ns()
            if self._plain:
                result = self._attempt(name, mb, flags, body, t, t0)
            else:
                result = self._with_policies(name, mb, flags, body, t)
            took = _perf_counter_ns() - t0
            self._rpc_latency.record(took if took < _LATENCY_MAX_NS else _LATENCY_MAX_NS)
            return result
        finally:
            self._release()

    def _with_policies(self, name: str, mb: bytes, flags: int, body: bytes, t: float) -> Any:
        run = self.retry.start() if self.retry is not None else None
        breaker = self.breaker
        while True:
            if run is not None:
                if run.begin_attempt() > 1:
                    self._stats["retries"] += 1
                t_attempt = self._attempt_timeout(t, run.remaining())
            else:
                t_attempt = t
            try:
                if self.rate_limit is not None:
                    self.rate_limit.acquire(timeout=t_attempt)
                if breaker is None:
                    return self._attempt(name, mb, flags, body, t_attempt, _perf_counter_ns())
                breaker.check()
                t0 = breaker.clock()
                try:
                    result = self._attempt(
                        name, mb, flags, body, t_attempt, _perf_counter_ns()
                    )
                except BaseException as exc:
                    breaker.record_exception(exc, breaker.clock() - t0)
                    raise
                breaker.record_success(breaker.clock() - t0)
                return result
            except Exception as exc:
                if run is None:
                    raise
                try:
                    delay = run.failed(exc)
                except RetryExhaustedError as ex:
                    err = self._exhausted(ex, name, t)
                    if err is ex:
                        raise
                    raise err from ex
                timed_out = isinstance(exc, TimeoutError)
            if timed_out:
                self._reset()
            if delay > 0:
                assert self.retry is not None
                self.retry.sleep(delay)

    def _attempt(
        self, name: str, mb: bytes, flags: int, body: bytes, t: float, t0: int
    ) -> Any:
        """One attempt: send, wait up to ``t`` s counted from ``t0`` (perf_counter_ns)."""
        addr = self._addr
        if not addr:
            return self._attempt_pyzmq(name, mb, flags, body, t)
        # The whole timeout is left (to well under the 1 ms granularity): no clock read
        # before the first wait, and RCVTIMEO stays unchanged from request to request; once
        # it is set for the client's own timeout, ClientCore.request takes over.
        ms = int(t * 1000) + 1
        if ms != self._rcvtimeo_ms:
            self._sock.setsockopt(zmq.RCVTIMEO, ms)
            self._rcvtimeo_ms = ms
        self._fast_timeout = t if t == self.timeout else 0.0
        seq = self._seq = self._seq + 1
        try:
            reply = _fast_call(addr, self._cid_base, seq, flags, mb, body)
        except BusError as exc:
            raise self._remap(exc, name) from exc.__cause__
        if type(reply) is bytes:  # our raw-bytes reply, judged in C: the common case
            self._n_replies += 1
            return reply
        cid = (self._cid_base + seq) & _CID_MASK
        return self._attempt_rest(name, mb, flags, body, t, t0, cid, reply)

    def _remap(self, exc: BusError, name: str) -> BusError:
        """The error the pyzmq path raises for the same ZeroMQ error (its message names the
        request and the endpoint)."""
        cause = exc.__cause__
        if isinstance(cause, zmq.ZMQError):
            return from_zmq(cause, f"request {name!r} to {self.endpoint}")
        return exc

    def _attempt_rest(
        self,
        name: str,
        mb: bytes,
        flags: int,
        body: bytes,
        t: float,
        t0: int,
        cid: int,
        reply: bytes | bytearray | int | None,
    ) -> Any:
        """_attempt after its first wait ended without our raw reply (or its send failed)."""
        addr = self._addr
        if type(reply) is int:  # not sent
            if reply != _EAGAIN:
                exc = zmq.ZMQError(reply)
                raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
            # IMMEDIATE and no live connection (yet): wait for one, within the timeout.
            if not self._sock.poll(max(1, int(t * 1000)), zmq.POLLOUT):
                self._stats["timeouts"] += 1
                raise TimeoutError(
                    f"cannot reach an RPC server at {self.endpoint} within {t:g} s "
                    "(no connection); is it running?"
                ) from None
            err = _fast_send_request(addr, cid, flags, mb, body)
            if err:
                exc = zmq.ZMQError(err)
                raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
            reply = None
        while True:
            if reply is not None:
                # No RCVMORE check: a DEALER has no identity frames to keep in step, so each
                # frame of a (malformed) multipart reply is judged alone.
                ok, value = self._parse_reply(bytes(reply), cid)  # type: ignore[arg-type]
                if ok:
                    return value
            remaining = t - (_perf_counter_ns() - t0) * 1e-9
            if remaining <= 0:
                break
            ms = int(remaining * 1000) + 1
            if ms != self._rcvtimeo_ms:
                self._sock.setsockopt(zmq.RCVTIMEO, ms)
                self._rcvtimeo_ms = ms
                self._fast_timeout = 0.0
            try:
                reply = _fast_recv_reply(addr, cid)
            except BusError as exc:
                raise self._remap(exc, name) from exc.__cause__
            if type(reply) is bytes:
                self._n_replies += 1
                return reply
        self._stats["timeouts"] += 1
        raise TimeoutError(f"no reply to {name!r} from {self.endpoint} within {t:g} s")

    def _attempt_pyzmq(self, name: str, mb: bytes, flags: int, body: bytes, t: float) -> Any:
        seq = self._seq = self._seq + 1  # one id sequence whichever path sends
        cid = (self._cid_base + seq) & _CID_MASK
        frame = _PACK(WIRE_VERSION, KIND_REQUEST, flags, len(mb), cid) + mb + body
        deadline = _monotonic() + t
        sock = self._sock
        try:
            self._send(sock, frame, _NOBLOCK)
        except zmq.Again:
            # IMMEDIATE and no live connection (yet): wait for one, within the timeout.
            if not sock.poll(max(1, int(t * 1000)), zmq.POLLOUT):
                self._stats["timeouts"] += 1
                raise TimeoutError(
                    f"cannot reach an RPC server at {self.endpoint} within {t:g} s "
                    "(no connection); is it running?"
                ) from None
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
            remaining = deadline - _monotonic()
            ms = int(remaining * 1000) + 1 if remaining > 0 else 0
        except zmq.ZMQError as exc:
            raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
        else:
            # Sent at once: the whole timeout is left (to well under the 1 ms
            # granularity), so the first wait needs no clock read; the receive
            # timeout then stays unchanged from request to request (no setsockopt).
            ms = int(t * 1000) + 1
        recv = sock.recv
        while ms > 0:
            if ms != self._rcvtimeo_ms:
                sock.setsockopt(zmq.RCVTIMEO, ms)
                self._rcvtimeo_ms = ms
            try:
                reply = recv()
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
            # No RCVMORE check (0.8 us): a DEALER has no identity frames to keep in
            # step, so each frame of a (malformed) multipart reply is judged alone.
            if len(reply) >= HEADER_SIZE:
                version, kind, rflags, _mlen, rcid = _UNPACK_FROM(reply)
                # The common case (our raw-bytes reply) inline; _parse_reply does the rest.
                if rcid == cid and kind == KIND_REPLY and rflags == 0 and version == WIRE_VERSION:
                    self._stats["replies"] += 1
                    return reply[HEADER_SIZE:]
            ok, value = self._parse_reply(reply, cid)
            if ok:
                return value
            remaining = deadline - _monotonic()
            ms = int(remaining * 1000) + 1 if remaining > 0 else 0
        self._stats["timeouts"] += 1
        raise TimeoutError(f"no reply to {name!r} from {self.endpoint} within {t:g} s")

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._acquire()
        try:
            if not self._closed:
                self._closed = True
                self._addr = 0
                self._sock.close(0)
        finally:
            self._release()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r}, timeout={self.timeout:g})"
