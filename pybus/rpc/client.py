"""The request/reply client: :class:`Client` (a ZeroMQ DEALER that connects) and
:class:`_ClientBase`, the validation, counters and reply parsing it shares with
:class:`pybus.rpc.aio.AsyncClient`.

Implements the client side of ``docs/wire-reqrep.md`` ("Request/reply"; the codec is
:mod:`pybus.wire.reqrep`). The client is a "Lazy Pirate": it waits for the reply with a
timeout, and when an attempt times out and its retry policy allows another one, it closes the
socket (linger 0) and opens a fresh one before sending again, so nothing stale stays queued
towards a dead server. Every request carries a new correlation id; a reply whose id is not the
one awaited (a late reply to an abandoned attempt) is dropped and counted, never returned.

Its I/O goes through a :class:`pybus.transport.channel.ClientChannel`: one compiled call per
request when the fast path is available (send, then wait for the reply with the GIL released;
our raw reply is judged in C), or pyzmq's calls with the same returns; every decision (ids,
timeouts, retries, errors) is made here.

Example
-------
>>> with Client("ipc:///tmp/calc", timeout_s=1.0) as client:   # doctest: +SKIP
...     client.request("add", [1, 2])
3
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import zmq

from .. import metrics as _metrics
from .. import tracing
from .._deprecated import renamed
from .._lifecycle import Closeable
from .._native import Histogram
from ..errors import (
    BusError,
    ClosedError,
    FrameError,
    TimeoutError,
    ValidationError,
    check_optional,
    from_zmq,
)
from ..metrics.samples import RawSample, ReadyUntilClosed
from ..policy.breaker import CircuitBreaker
from ..policy.ratelimit import RateLimiter
from ..policy.retry import RetryPolicy
from ..transport.channel import ClientChannel
from ..transport.iopath import IOPath
from ..transport.sockets import (
    DEFAULT_LIVENESS,
    Liveness,
    SocketWatch,
    apply_liveness,
    check_rpc_liveness,
    secure_and_watch,
)
from ..wire.reqrep import (
    CID_MASK,
    FLAG_MSGPACK,
    HEADER_SIZE,
    KIND_REPLY,
    MAX_MESSAGE_BYTES,
    decode_payload,
    encode_payload,
    method_bytes,
    read_reply,
    remote_error,
    with_headers,
)
from ._common import LATENCY_MAX_NS, check_timeout, rpc_samples, watch_stats
from ._guard import RequestGuard

__all__ = ["Client"]

_perf_counter_ns = time.perf_counter_ns
_EAGAIN = int(zmq.EAGAIN)


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
    return cast("zmq.Socket[Any]", sock)


class _ClientBase(ReadyUntilClosed):
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
        check_optional("retry", retry, RetryPolicy, "a pybus.RetryPolicy")
        check_optional("breaker", breaker, CircuitBreaker, "a pybus.CircuitBreaker")
        check_optional("rate_limit", rate_limit, RateLimiter, "a pybus.RateLimiter")
        self.endpoint = endpoint
        self.timeout = check_timeout("timeout", timeout)
        self.retry = retry
        self.breaker = breaker
        self.rate_limit = rate_limit
        # decided once (pybus.tracing): a traced request carries the context in a header block
        self._traced = tracing.active()
        # nothing around the attempt: Client.request's short way may take it
        self._plain = (retry is None and breaker is None and rate_limit is None
                       and not self._traced)
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
        # the retry / breaker decisions of every request (the policies are the attributes)
        self._guard = RequestGuard(endpoint, self._stats)
        # round trips of successful requests, ns (2 significant figures), for pybus.metrics
        self._rpc_latency = Histogram(1, LATENCY_MAX_NS, 2)
        self._record_latency = self._rpc_latency.record  # bound once: not per request
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
        return rpc_samples(
            "client", s, (("requests", "sent"), ("replies", "replied"),
                          ("remote_errors", "remote_error"), ("timeouts", "timeout"),
                          ("late_replies", "late_reply")),
            [("pybus_retries_total", {}, s["retries"])],
            ("pybus_rpc_latency_seconds", self._rpc_latency), self._security)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, replies, remote_errors, timeouts (attempts that got no
        reply in time), retries, reconnects (Lazy Pirate socket resets),
        late_replies (replies to abandoned attempts, dropped), decode_errors
        (malformed frames dropped), and the socket monitor's ``peer_events`` (event name ->
        count, over every socket the client opened) and ``peers`` (connections up)."""
        out: dict[str, Any] = dict(self._stats)
        out.update(watch_stats(self._watch))
        return out

    def _method(self, name: str) -> bytes:
        mb = self._methods.get(name)
        if mb is None:
            mb = method_bytes(name)
            if len(self._methods) < 1024:  # bounded cache
                self._methods[name] = mb
        return mb

    def _next_cid(self) -> int:
        self._cid = (self._cid + 1) & CID_MASK
        return self._cid

    def _parse_reply(self, reply: bytes, cid: int) -> tuple[bool, Any]:
        """(True, value) for our reply; (False, None) for one to drop (counted).
        Raises RemoteError for our error reply, FrameError for our corrupt reply."""
        head = read_reply(reply)
        if head is None:
            self._stats["decode_errors"] += 1
            return False, None
        rcid, kind, flags = head
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


class Client(_ClientBase, Closeable, IOPath):
    """A request/reply client on a ZeroMQ DEALER socket (connects).

    Parameters
    ----------
    endpoint : str
        The server's endpoint.
    timeout_s : float
        Seconds to wait for each attempt's reply (``timeout=`` is its deprecated name; the
        attribute stays ``timeout``, as :meth:`request`'s per-call ``timeout``).
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
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimiter | None = None,
        *,
        security: Callable[[zmq.Socket[Any]], Any] | None = None,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        liveness: Liveness | None = None,
        timeout: float | None = None,
    ) -> None:
        check_rpc_liveness(liveness)
        timeout_s = renamed("Client", "timeout", timeout, "timeout_s", timeout_s, 5.0)
        super().__init__(endpoint, timeout_s, retry, breaker, rate_limit)
        self._ctx = context or zmq.Context.instance()
        self._security = security
        self._liveness = liveness
        self._lock = threading.Lock()  # one request at a time
        self._monitor_ctx = self._ctx
        self._open_socket()
        # the correlation id is _cid_base + _seq (mod 2**64: the same sequence as
        # _next_cid's); the request counters are merged by stats()
        self._cid_base = self._cid
        self._seq = 0
        self._n_requests = 0
        self._n_replies = 0
        _metrics.attach(self, registry)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["requests"] += self._n_requests
        out["replies"] += self._n_replies
        return out

    stats.__doc__ = _ClientBase.stats.__doc__

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket (and anything queued on it), open a fresh one.

        The new socket's monitor counts into the same ``_watch``; the old one's monitor stops
        with the old socket (ZeroMQ sends MONITOR_STOPPED, the hub closes its end)."""
        self._chan = ClientChannel(self._sock)  # pyzmq's calls: safe on a closed socket
        self._sock.close(0)
        self._open_socket()
        self._stats["reconnects"] += 1

    def _open_socket(self) -> None:
        """A fresh DEALER with its I/O (pyzmq's calls or the compiled twin, chosen once)."""
        self._sock = _open_dealer(
            self._ctx, self.endpoint, self._secure_and_watch, liveness=self._liveness
        )
        self._chan = ClientChannel.open(self._sock)
        self._io_path = self._chan.io_path
        self._rcvtimeo_ms = -1  # what RCVTIMEO is set to (-1: the socket's default)
        self._rcvtimeo_for_s = -1.0  # the attempt timeout it is set for (-1: another)

    def request(self, name: str, payload: Any = b"", timeout: float | None = None) -> Any:
        """Call ``name`` on the server and return its reply payload.

        Parameters
        ----------
        name : str
            The handler's name (1-255 UTF-8 bytes).
        payload : bytes or msgpack-serialisable
            Bytes go raw; anything else is msgpack-encoded (typed payloads included).
        timeout : float or None
            Per-attempt timeout in seconds; default the client's.

        Returns
        -------
        bytes or object
            What the handler returned (bytes raw, anything else decoded).

        Raises
        ------
        RemoteError
            The handler raised (or no handler has that name).
        TimeoutError
            No reply after every attempt the retry policy allows.
        RetryExhaustedError
            Every attempt failed with another retryable error.
        CircuitOpenError, RateLimitError
            The breaker or rate limiter refused (and retries, if any, ran out).
        ClosedError
            The client is closed.
        """
        mb = self._methods.get(name)
        if mb is None or timeout is not None or type(payload) is not bytes or not self._plain:
            return self._request(name, payload, timeout)
        # the short way of a request/reply workload (a known method, bytes, the client's own
        # timeout, nothing around the attempt): nothing to check or encode
        return self._request_frame(name, mb, 0, payload, self.timeout)

    def _request(self, name: str, payload: Any, timeout: float | None) -> Any:
        """:meth:`request` in full: any method, payload and timeout, traced or not."""
        if self._closed:
            raise ClosedError(f"RPC client for {self.endpoint} is closed")
        mb = self._methods.get(name)
        if mb is None:
            mb = self._method(name)
        if type(payload) is bytes:
            flags, body = 0, payload
        else:
            flags, body = encode_payload(payload)
        t = self.timeout if timeout is None else check_timeout("timeout", timeout)
        if self._traced:
            with tracing.rpc_client(name) as (_span, headers):
                flags, body = with_headers(flags, body, headers)
                return self._request_frame(name, mb, flags, body, t)
        return self._request_frame(name, mb, flags, body, t)

    def _request_frame(self, name: str, mb: bytes, flags: int, body: bytes, t: float) -> Any:
        """The request, encoded: one call under the client's lock, its latency recorded."""
        # acquire/release, not `with`: a Lock's __enter__/__exit__ cost ~120 ns more per call
        lock = self._lock
        lock.acquire()
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
            self._record_latency(took if took < LATENCY_MAX_NS else LATENCY_MAX_NS)
            return result
        finally:
            lock.release()

    def _with_policies(self, name: str, mb: bytes, flags: int, body: bytes, t: float) -> Any:
        """request() under a retry policy, breaker or rate limit: the decisions are the
        guard's (pybus.rpc._guard, shared with AsyncClient); the waits and resets are here."""
        guard, breaker, rate_limit = self._guard, self.breaker, self.rate_limit
        run = guard.start(self.retry)
        while True:
            t_attempt = guard.begin(run, t)
            try:
                if rate_limit is not None:
                    rate_limit.acquire(timeout=t_attempt)
                t0 = guard.admit(breaker)
                try:
                    result = self._attempt(name, mb, flags, body, t_attempt, _perf_counter_ns())
                except BaseException as exc:
                    guard.attempt_failed(breaker, exc, t0)
                    raise
                guard.succeeded(breaker, t0)
                return result
            except Exception as exc:
                delay_s, timed_out = guard.failed(run, exc, name, t)
            if timed_out:
                self._reset()
            if delay_s > 0:
                assert self.retry is not None  # failed() returns a delay only under a policy
                self.retry.sleep(delay_s)

    def _attempt(
        self, name: str, mb: bytes, flags: int, body: bytes, t: float, t0: int
    ) -> Any:
        """One attempt: send, wait up to ``t`` s counted from ``t0`` (perf_counter_ns)."""
        # The whole timeout is left (to well under the 1 ms granularity): no clock read
        # before the first wait, and RCVTIMEO stays unchanged from request to request.
        if t != self._rcvtimeo_for_s:
            self._set_rcvtimeo(int(t * 1000) + 1)
            self._rcvtimeo_for_s = t
        seq = self._seq = self._seq + 1
        try:
            reply = self._chan.call(self._cid_base, seq, flags, mb, body)
        except BusError as exc:
            raise self._remap(exc, name) from exc.__cause__
        if type(reply) is bytes:  # our raw-bytes reply, judged by the channel: the common case
            self._n_replies += 1
            return reply
        cid = (self._cid_base + seq) & CID_MASK
        return self._attempt_rest(name, mb, flags, body, t, t0, cid, reply)

    def _set_rcvtimeo(self, ms: int) -> None:
        """Set the socket's RCVTIMEO; ``_attempt`` compares the timeout it was set for (a
        float compare per request, not a conversion)."""
        self._sock.setsockopt(zmq.RCVTIMEO, ms)
        self._rcvtimeo_ms = ms
        self._rcvtimeo_for_s = -1.0

    def _remap(self, exc: BusError, name: str) -> BusError:
        """The error for a ZeroMQ error in a request: its message names the request and the
        endpoint."""
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
        chan = self._chan
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
            err = chan.send_request(cid, flags, mb, body)
            if err:
                exc = zmq.ZMQError(err)
                raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
            reply = None
        while True:
            if reply is not None:
                # No RCVMORE check: a DEALER has no identity frames to keep in step, so each
                # frame of a (malformed) multipart reply is judged alone.
                ok, value = self._parse_reply(bytes(reply), cid)
                if ok:
                    return value
            remaining = t - (_perf_counter_ns() - t0) * 1e-9
            if remaining <= 0:
                break
            ms = int(remaining * 1000) + 1
            if ms != self._rcvtimeo_ms:
                self._set_rcvtimeo(ms)
            try:
                reply = chan.recv_reply(cid)
            except BusError as exc:
                raise self._remap(exc, name) from exc.__cause__
            if type(reply) is bytes:
                self._n_replies += 1
                return reply
        self._stats["timeouts"] += 1
        raise TimeoutError(f"no reply to {name!r} from {self.endpoint} within {t:g} s")

    def close(self) -> None:
        """Close the socket; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._chan = ClientChannel(self._sock)  # pyzmq's calls: safe once closed
                self._sock.close(0)

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r}, timeout_s={self.timeout:g})"
