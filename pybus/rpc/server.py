"""The request/reply server: :class:`Server`, a ZeroMQ ROUTER that binds.

Implements the server side of ``docs/wire-reqrep.md`` ("Request/reply"; the codec is
:mod:`pybus.wire.reqrep`): one serving loop per I/O path (pyzmq, or libzmq called directly),
handlers run inline or in a worker pool whose replies come back to the I/O thread over inproc,
admission control (``max_in_flight``, ``rate_limit``) and the counters it reports.

Example
-------
>>> server = Server("ipc:///tmp/calc")                     # doctest: +SKIP
>>> @server.handler("add")
... def add(args):
...     return args[0] + args[1]
>>> server.start()
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from .. import metrics as _metrics
from .. import tracing
from .._lifecycle import Closeable
from .._native import Histogram
from .._signals import graceful_signals
from ..errors import (
    ClosedError,
    ErrorCode,
    FrameError,
    ValidationError,
    check_positive_int,
    from_zmq,
)
from ..metrics.samples import RawSample, ReadyUntilClosed
from ..policy.ratelimit import KeyedRateLimiter, RateLimiter
from ..transport.channel import REASON_KIND, REASON_MULTIPART, ServerChannel
from ..transport.iopath import IOPath
from ..transport.sockets import (
    DEFAULT_LIVENESS,
    Liveness,
    SocketWatch,
    apply_liveness,
    secure_and_watch,
)
from ..wire.reqrep import (
    FLAG_MSGPACK,
    HEADER,
    KIND_CONTROL,
    KIND_ERROR,
    KIND_REPLY,
    MAX_MESSAGE_BYTES,
    WIRE_VERSION,
    decode_payload,
    encode_payload,
    error_body,
    error_payload,
    method_bytes,
)
from ._common import (
    LATENCY_MAX_NS,
    NOBLOCK,
    SNDMORE_NOBLOCK,
    InFlightLimit,
    rpc_samples,
    watch_stats,
)
from ._drain import drain_replies
from ._handlers import LogLimiter, headed, typed, unknown_method_body

__all__ = ["Server", "Handler"]

Handler = Callable[[Any], Any]

# In-process control messages (KIND_CONTROL + the server's token + one of these)
_CTRL_STOP = b"S"
_CTRL_FORWARD = b"F"
# The server's receive timeout while idle: bounds how long stop() can take even
# if its wake-up message were lost; costs nothing while requests flow.
_IDLE_CHECK_MS = 100

_log = logging.getLogger("pybus.rpc")


class Server(Closeable, IOPath, InFlightLimit, ReadyUntilClosed):
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
    max_in_flight : int
        With workers, requests queued or running at once; beyond it a request is
        answered at once with a retryable ``BackpressureError``. ``max_inflight=`` is its
        deprecated old name (a DeprecationWarning; removed in the next release).
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
        max_in_flight: int = 1024,
        rate_limit: RateLimiter | KeyedRateLimiter | None = None,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        liveness: Liveness | None = None,
        max_inflight: int | None = None,
        drain_timeout_s: float = 10.0,
    ) -> None:
        max_in_flight = self._in_flight_option("Server", max_in_flight, max_inflight, 1024,
                                               liveness)
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
        check_positive_int("max_in_flight", max_in_flight)
        if (isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int)
                or max_message_bytes < 64):
            raise ValidationError(
                f"max_message_bytes must be an int >= 64, got {max_message_bytes!r}"
            )
        if isinstance(drain_timeout_s, bool) or not isinstance(drain_timeout_s, (int, float)) \
                or not 0 <= drain_timeout_s < float("inf"):
            raise ValidationError(f"drain_timeout_s must be a finite number of seconds >= 0, "
                                  f"got {drain_timeout_s!r}")
        self.drain_timeout_s = float(drain_timeout_s)
        self._ctx = context or zmq.Context.instance()
        self._handlers: dict[bytes, Handler] = {}
        # decided once (pybus.tracing): a traced request's handler runs in a SERVER span
        self._traced = tracing.active()
        self.workers = workers
        self.max_in_flight = max_in_flight
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
        self._handler_latency = Histogram(1, LATENCY_MAX_NS, 2)
        self._warn = LogLimiter(_log)
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
        self._io_path = ServerChannel.open(sock).io_path
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
        """Register ``fn`` under ``name`` (replacing any earlier one).

        A handler whose argument is annotated with a type (``def add(args: AddArgs) ->
        Sum``: a msgspec Struct, dataclass, TypedDict or pydantic model) gets the request's
        payload converted into it; one that does not fit is answered with a
        ``ValidationError`` the client raises, and the handler is not called."""
        if not callable(fn):
            raise ValidationError(f"handler for {name!r} must be callable, got {fn!r}")
        fn = typed(fn)
        key = method_bytes(name)
        # Copy-on-write so the I/O thread reads a dict nobody mutates.
        handlers = dict(self._handlers)
        handlers[key] = fn
        self._handlers = handlers

    def handler_for(self, name: str) -> Handler | None:
        """The handler registered under ``name``, or None."""
        return self._handlers.get(name.encode())

    @property
    def methods(self) -> list[str]:
        """Registered method names, sorted."""
        return sorted(k.decode() for k in self._handlers)

    # -- stats --------------------------------------------------------------------------
    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "rpc_server"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        return rpc_samples(
            "server", s, (("requests", "received"), ("replies", "replied"),
                          ("handler_errors", "handler_error"),
                          ("unknown_method", "unknown_method"),
                          ("busy_rejected", "busy_rejected"), ("unroutable", "unroutable")),
            [("pybus_in_flight", {}, s["inflight"])],
            ("pybus_handler_latency_seconds", self._handler_latency), self._security)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, replies, handler_errors, unknown_method, decode_errors
        (malformed frames dropped; ``decode_error_reasons`` splits them by reason),
        unroutable (replies whose client had gone), busy_rejected, inflight, and the socket
        monitor's ``peer_events`` (event name -> count) and ``peers`` (connections up)."""
        out: dict[str, Any] = dict(self._stats)
        out["decode_error_reasons"] = dict(self._decode_reasons)
        out["inflight"] = self._inflight
        out.update(watch_stats(self._watch))
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
            self._claim_running()
            self._thread = threading.Thread(
                target=self._serve, name=f"pybus-rpc-server {self.endpoint}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self, handle_signals: bool = True) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another thread.

        Called in the main thread with ``handle_signals``, the first SIGTERM or SIGINT stops
        it gracefully (requests already handed to the worker pool get their replies, within
        ``drain_timeout_s``; new ones are answered with a retryable ``ClosedError`` so their
        clients retry elsewhere) and it returns; a second one ends the process at once."""
        with self._lock:
            self._claim_running()
        try:
            with graceful_signals(self._request_stop, handle_signals,
                                  f"pybus server {self.endpoint}", self.drain_timeout_s):
                self._serve()
        finally:
            self._shutdown()

    def _claim_running(self) -> None:
        """Mark the server running (the caller holds _lock); a stopped or running one refuses."""
        if self._closed:
            raise ClosedError(f"RPC server {self.endpoint} is stopped; create a new one")
        if self._running:
            raise ValidationError("RPC server is already running")
        self._running = True

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving, close the socket and the worker pool; idempotent.

        Waits up to ``timeout`` seconds (default ``drain_timeout_s`` + 1) for the I/O loop
        to finish its current request and forward the replies of pooled ones. Safe to call
        from a handler (the loop then ends after it).
        """
        with self._lock:
            if self._closed:
                return
            running = self._running
        if not running:
            self._closed = True
            self._shutdown()
            return
        self._request_stop()
        if threading.get_ident() == self._io_ident:
            return  # inside a handler: the loop sees _closed when it returns
        if timeout is None:
            timeout = self.drain_timeout_s + 1.0
        if not self._loop_done.wait(timeout):
            _log.error("pybus rpc server %s: I/O loop did not stop in %g s", self.endpoint, timeout)
            return
        if self._thread is not None:
            self._thread.join(timeout)
            self._shutdown()
        # serve_forever's own thread runs _shutdown on its way out.

    def _request_stop(self) -> None:
        """Ask the I/O loop to stop, without waiting (also called from a signal handler)."""
        self._closed = True
        # Wake the loop at once; should the wake-up not get through, the loop's
        # receive timeout (_IDLE_CHECK_MS) still notices _closed.
        try:
            waker = self._ctx.socket(zmq.DEALER)
        except zmq.ZMQError:
            return
        try:
            waker.setsockopt(zmq.LINGER, 200)
            waker.connect(self._ctrl_endpoint)
            waker.send(self._ctrl_prefix + _CTRL_STOP, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            waker.close()

    def _drain_replies(self, deadline: float) -> None:
        drain_replies(self, deadline, self._ctrl_prefix + _CTRL_FORWARD)  # rpc/_drain.py

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

    # -- the I/O loop -------------------------------------------------------------------
    def _serve(self) -> None:
        self._io_ident = threading.get_ident()
        try:
            self._loop()
            if self._pool is not None:  # pooled: replies may still be on their way
                self._drain_replies(time.monotonic() + self.drain_timeout_s)
        finally:
            self._loop_done.set()

    def _loop(self) -> None:
        """The I/O loop, one for both I/O paths: the channel reads a request and judges its
        header (in C on the libzmq path), the decisions and their counters are here."""
        if self.workers and self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix="pybus-rpc-worker"
            )
        chan = ServerChannel.open(self._sock)
        self._io_path = chan.io_path
        recv_request, send_reply = chan.recv_request, chan.send_reply
        pool = self._pool  # set above, cleared only by _shutdown after the loop ends
        stats = self._stats
        ctrl_prefix = self._ctrl_prefix
        forward_marker = ctrl_prefix + _CTRL_FORWARD
        stop_marker = ctrl_prefix + _CTRL_STOP
        multipart, kind_reason = REASON_MULTIPART, REASON_KIND
        # Module globals and builtins as locals: in this long-running loop CPython 3.11
        # left the LOAD_GLOBALs unspecialised (callgrind: ~13 dict lookups per request).
        flag_msgpack, kind_reply, kind_error = FLAG_MSGPACK, KIND_REPLY, KIND_ERROR
        type_, bytes_, closed_error = type, bytes, ClosedError
        self._sock.setsockopt(zmq.RCVTIMEO, _IDLE_CHECK_MS)
        while not self._closed:
            try:
                r = recv_request()
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
                        chan.discard_rest()
                    except zmq.ZMQError as exc:
                        if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                            break
                        raise
                elif reason == kind_reason and data == stop_marker:
                    break
                self._bad_frame(reason)
                continue
            stats["requests"] += 1
            fn = self._handlers.get(method)
            # Admission, routing, then the handler. What each decision counts and answers is
            # in the methods called here; only the common case is inlined (a call there would
            # cost every request).
            if self.rate_limit is not None and not self._admit(ident):
                kind, rflags, body = kind_error, flag_msgpack, self._rate_limited(ident)
            elif fn is None:
                kind, rflags, body = kind_error, flag_msgpack, self._unknown_method(method)
            else:
                try:
                    if flags > flag_msgpack:  # a header block (trace context) comes first
                        fn, flags, data = headed(fn, method, flags, data, self._traced)
                    arg = decode_payload(flags, data) if flags else data
                except FrameError as exc:
                    kind, rflags, body = kind_error, flag_msgpack, self._undecodable(exc)
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
                        kind, rflags, body = kind_error, flag_msgpack, self._handler_failed(exc)
            err = send_reply(ident, cid, kind, rflags, body)
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
            sock.send(client, SNDMORE_NOBLOCK)
            sock.send(reply, NOBLOCK)
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
                self._handler_latency.record(took if took < LATENCY_MAX_NS else LATENCY_MAX_NS)
            if type(result) is bytes:
                return HEADER.pack(WIRE_VERSION, KIND_REPLY, 0, 0, cid) + result
            flags, body = encode_payload(result)
            return HEADER.pack(WIRE_VERSION, KIND_REPLY, flags, 0, cid) + body
        except Exception as exc:  # noqa: BLE001 - every handler error goes back to the client
            return HEADER.pack(WIRE_VERSION, KIND_ERROR, FLAG_MSGPACK, 0, cid) + (
                self._handler_failed(exc)
            )

    # -- per-request decisions (the loop; the worker pool) --------------------------------
    def _admit(self, ident: bytes) -> bool:
        """Admission control (only with a rate limit): may this client's request be served?"""
        limiter = self.rate_limit
        if isinstance(limiter, KeyedRateLimiter):
            return limiter.try_acquire(ident)
        assert limiter is not None
        return limiter.try_acquire()

    def _undecodable(self, exc: FrameError) -> bytes:
        """A request's payload flagged msgpack does not decode: counted as a malformed frame
        (reason ``payload``); the ERROR body answering it (its correlation id is known)."""
        self._bad_frame("payload")
        return error_payload(exc)

    def _handler_failed(self, exc: Exception) -> bytes:
        """A handler raised ``exc``: counted; the ERROR body that takes it to the client."""
        with self._lock:  # worker threads share the counter
            self._stats["handler_errors"] += 1
        return error_payload(exc)

    def _rate_limited(self, ident: bytes) -> bytes:
        """A request refused by admission control: counted; the (retryable) ERROR body."""
        self._stats["rate_limited"] += 1
        limiter = self.rate_limit
        bucket = limiter.bucket(ident) if isinstance(limiter, KeyedRateLimiter) else limiter
        assert bucket is not None
        wait = bucket.retry_after()
        return error_body(
            "RateLimitError",
            f"rate limit exceeded ({bucket.rate:g} requests/s, burst {bucket.burst:g}); "
            f"next token in {wait:.3g} s",
            ErrorCode.RATE_LIMITED,
            True,
        )

    def _unknown_method(self, name: bytes) -> bytes:
        """A request for a method no handler has: counted; the ERROR body naming those known."""
        self._stats["unknown_method"] += 1
        return unknown_method_body(name.decode("utf-8", "replace"), self.methods)

    # -- worker pool --------------------------------------------------------------------
    def _submit(self, fn: Handler, arg: Any, ident: bytes, cid: int) -> None:
        if self._inflight >= self.max_in_flight:
            self._stats["busy_rejected"] += 1
            body = error_body(
                "BackpressureError",
                f"server busy: {self._inflight} requests in flight "
                f"(max_in_flight={self.max_in_flight}); retry later",
                ErrorCode.BACKPRESSURE,
                True,
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
