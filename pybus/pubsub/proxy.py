"""The many-to-many forwarder: ZeroMQ's steerable XSUB/XPUB proxy in a thread.

Publishers connect to the *frontend* (an XSUB socket), subscribers to the *backend* (an XPUB
socket). ZeroMQ's own ``zmq_proxy_steerable`` forwards messages frontend -> backend and
subscriptions backend -> frontend, so subscriptions still filter at the publishers, pybus's
hello subscriptions reach them (``Publisher.wait_for_subscribers`` counts subscribers behind
the proxy), and frames pass untouched, so subscribers' sequence-gap accounting still holds end
to end. Nothing here is a home-made broker: the Python thread only starts the C loop and
steers it through its control socket (PAUSE, RESUME, TERMINATE, STATISTICS).

With per-key topic permissions (a ``Curve.server(..., permissions=...)`` on either side) the C
loop cannot be used, since it never shows a message to Python: the proxy then runs the checked
loop of ``pybus.pubsub._proxy_checked`` over the same sockets and control commands.

Loss: ZeroMQ's XPUB drops, per subscriber, what exceeds that subscriber's send high-water
mark (``sndhwm``), and does not report it to the proxy -- the subscriber sees it, exactly, as
sequence gaps (``stats()["lost"]``), and other subscribers are not affected. Reliable
publishers (the default) pace to the subscribers behind the proxy end to end: their marks pass
downstream and the subscribers' acks upstream (docs/wire.md, "Flow control"), so nothing
reaches that mark while the reliable publishers' windows together stay within half of it (one
publisher with the defaults: 240 frames of the default 1000). On the frontend side TCP flow
control pushes back to the publishers, whose own high-water marks bound memory.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import zmq

from .._lifecycle import Closeable
from ..errors import ClosedError, TimeoutError, ValidationError, check_positive_int, from_zmq
from ..metrics.samples import RawSample
from ..transport import sockets as _sockets
from . import _base as base
from ._proxy_checked import PAUSE, RESUME, STAT_KEYS, CheckedLoop

__all__ = ["Proxy"]

log = logging.getLogger("pybus.proxy")

_proxy_seq = iter(range(1, 1 << 62))

def _eps(value: str | Sequence[str], what: str) -> list[str]:
    eps = [value] if isinstance(value, str) else list(value)
    if not eps or not all(isinstance(e, str) and "://" in e for e in eps):
        raise ValidationError(
            f"{what} must be an endpoint like tcp://*:5559 (or a list of them), got {value!r}"
        )
    return eps


def _check_security(sec: Any, what: str) -> None:
    if sec is None:
        return
    from ..transport.security import Curve

    if not isinstance(sec, Curve):
        raise ValidationError(f"{what} must be a pybus.Curve, got {type(sec).__name__}")
    if not sec.is_server:
        raise ValidationError(
            f"{what} must be Curve.server(...): the proxy binds and peers authenticate to it"
        )


class Proxy(Closeable):
    """Forward pub/sub traffic between many publishers and many subscribers.

    Parameters
    ----------
    frontend : str or list of str
        Endpoint(s) the XSUB side binds; publishers connect here (``Publisher(ep,
        connect=True)``).
    backend : str or list of str
        Endpoint(s) the XPUB side binds; subscribers connect here.
    capture : str, optional
        Endpoint of a PUB socket that gets a copy of every message (and subscription) the
        proxy forwards (a tap for debugging or recording; slow tap readers lose copies, never
        the proxy).
    security : pybus.Curve, optional
        ``Curve.server`` for both sides; ``frontend_security`` / ``backend_security``
        override it per side (e.g. different allowlists for publishers and subscribers).
    liveness : pybus.Liveness, optional
        Heartbeats, reconnection and peer events for both sides.
    sndhwm : int
        Backend high-water mark per subscriber, in messages; beyond it a stalled subscriber
        loses messages (its sequence gaps).
    rcvhwm : int
        Frontend high-water mark per publisher, in messages.
    max_message_bytes : int
        ``MAXMSGSIZE`` of both sides: larger frames are refused before allocation (the
        sender is disconnected).
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    start : bool
        Start forwarding at once (else call :meth:`start`).
    registry : optional
        Metrics registry (``pybus.metrics``); ``False`` to not report.
    checked : bool, optional
        Forward in pybus's checked Python loop instead of ZeroMQ's C loop. Default (None):
        checked exactly when a side's ``Curve`` has ``permissions`` (the frontend's enforce
        publish rights, the backend's subscribe rights); ``False`` with permissions is an
        error. The checked loop keeps pause/resume/terminate, statistics and the capture tap,
        and adds ``stats()["forbidden"]`` (messages dropped because their publisher's key may
        not publish the topic) and ``stats()["denied_subscriptions"]``. It is slower than the
        C loop (``bench/bench_permissions.py`` measures by how much).

    Examples
    --------
    >>> with pybus.Proxy("tcp://*:5559", "tcp://*:5560") as proxy:   # doctest: +SKIP
    ...     proxy.wait()
    """

    def __init__(
        self,
        frontend: str | Sequence[str],
        backend: str | Sequence[str],
        capture: str | None = None,
        *,
        security: Any = None,
        frontend_security: Any = None,
        backend_security: Any = None,
        liveness: Any = None,
        sndhwm: int = 1000,
        rcvhwm: int = 1000,
        max_message_bytes: int = base.DEFAULT_MAX_BATCH_BYTES
        + base.DEFAULT_MAX_MESSAGE_BYTES
        + base.FRAME_OVERHEAD_BYTES,
        context: zmq.Context[Any] | None = None,
        start: bool = True,
        registry: Any = None,
        checked: bool | None = None,
    ) -> None:
        self._closed = True
        front_eps = _eps(frontend, "frontend")
        back_eps = _eps(backend, "backend")
        if capture is not None:
            _eps(capture, "capture")
        fsec = frontend_security if frontend_security is not None else security
        bsec = backend_security if backend_security is not None else security
        _check_security(fsec, "frontend_security")
        _check_security(bsec, "backend_security")
        perms = any(x is not None and x.has_permissions for x in (fsec, bsec))
        if checked is None:
            checked = perms
        elif checked is False and perms:
            raise ValidationError(
                "checked=False with per-topic permissions: ZeroMQ's C proxy loop never shows a "
                "message to Python, so permissions need the checked loop (checked=None or True)"
            )
        self._checked = bool(checked)
        # the checked loop's permission checks, per side (None: not enforced on that side)
        pub_acl = fsec if fsec is not None and fsec.has_permissions else None
        sub_acl = bsec if bsec is not None and bsec.has_permissions else None
        for name, v in (("sndhwm", sndhwm), ("rcvhwm", rcvhwm), ("max_message_bytes",
                                                                  max_message_bytes)):
            check_positive_int(name, v)
        self._ctx = context if context is not None else zmq.Context.instance()
        self._id = next(_proxy_seq)
        ctx = self._ctx
        socks: list[zmq.Socket[Any]] = []
        try:
            front = ctx.socket(zmq.XSUB)
            socks.append(front)
            back = ctx.socket(zmq.XPUB)
            socks.append(back)
            for s in (front, back):
                s.linger = 0
                s.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            front.setsockopt(zmq.RCVHWM, rcvhwm)
            front.setsockopt(zmq.SNDHWM, 10_000)  # subscriptions upstream
            back.setsockopt(zmq.SNDHWM, sndhwm)
            back.setsockopt(zmq.RCVHWM, 10_000)  # subscriptions from subscribers
            if sub_acl is not None:
                back.setsockopt(zmq.XPUB_MANUAL, 1)  # the checked loop applies subscriptions
            self._front_watch = _sockets.configure(front, security=fsec, liveness=liveness,
                                                   receives_stream=True)
            self._back_watch = _sockets.configure(back, security=bsec, liveness=liveness)
            self.frontend: list[str] = []
            self.backend: list[str] = []
            for ep in front_eps:
                front.bind(ep)
                self.frontend.append(front.getsockopt_string(zmq.LAST_ENDPOINT))
            for ep in back_eps:
                back.bind(ep)
                self.backend.append(back.getsockopt_string(zmq.LAST_ENDPOINT))
            cap = None
            self.capture: str | None = None
            if capture is not None:
                cap = ctx.socket(zmq.PUB)
                socks.append(cap)
                cap.linger = 0
                cap.setsockopt(zmq.SNDHWM, 1000)
                cap.bind(capture)
                self.capture = cap.getsockopt_string(zmq.LAST_ENDPOINT)
            ctl_addr = f"inproc://pybus-proxy-control-{self._id}-{id(self):x}"
            ctl_in = ctx.socket(zmq.PAIR)
            socks.append(ctl_in)
            ctl_in.linger = 0
            ctl_in.bind(ctl_addr)
            ctl = ctx.socket(zmq.PAIR)
            socks.append(ctl)
            ctl.linger = 0
            ctl.connect(ctl_addr)
        except zmq.ZMQError as exc:
            for s in socks:
                s.close(0)
            raise from_zmq(exc, f"Proxy({front_eps} -> {back_eps})") from None
        except BaseException:
            for s in socks:
                s.close(0)
            raise
        self._front, self._back, self._cap, self._ctl_in, self._ctl = front, back, cap, ctl_in, ctl
        self._ctl_lock = threading.Lock()
        self._state = "stopped"
        self._thread: threading.Thread | None = None
        self._rekick = False
        self._base_stats = dict.fromkeys(STAT_KEYS, 0)
        self._drain_until: float | None = None
        #: message parts forwarded by :meth:`drain` after the loop stopped
        self.drained_messages = 0
        self._restarts = 0
        self._error: BaseException | None = None
        self._checker = CheckedLoop(pub_acl, sub_acl, self.frontend, self.backend)
        for sec in {id(x): x for x in (fsec, bsec) if x is not None}.values():
            sec._register_owner(self)
        self._securities = [x for x in (fsec, bsec) if x is not None]
        self._closed = False
        from .. import metrics as _metrics

        _metrics.attach(self, registry)
        if start:
            self.start()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Proxy:
        """Start forwarding (in a daemon thread). Returns self."""
        if self._closed:
            raise ClosedError("start() on a closed Proxy")
        if self._thread is not None:
            raise ValidationError("this Proxy was already started")
        self._thread = threading.Thread(
            target=self._run, name=f"pybus-proxy-{self._id}",
            daemon=True,
        )
        self._state = "running"
        self._thread.start()
        return self

    def _run(self) -> None:
        front, back, cap, ctl_in = self._front, self._back, self._cap, self._ctl_in
        try:
            while True:
                if self._checked:
                    self._checker.run(front, back, cap, ctl_in)
                else:
                    zmq.proxy_steerable(front, back, cap, ctl_in)
                if not self._rekick:
                    break
                # revoked key: drop every connection, let peers authenticate again, resume
                self._rekick = False
                _sockets.rebind(front, list(self.frontend), [])
                _sockets.rebind(back, list(self.backend), [])
                self._restarts += 1
        except zmq.ContextTerminated:
            pass
        except BaseException as exc:  # pragma: no cover - keep it for wait()/close()
            self._error = exc
            log.exception("pybus proxy loop failed")
        finally:
            linger_ms = 0
            if self._drain_until is not None and self._error is None:
                linger_ms = self._forward_rest(front, back, cap)
            for s in (front, cap, ctl_in):
                if s is not None:
                    s.close(0)
            back.close(linger_ms)  # drain: what is queued for subscribers still goes out

    def _forward_rest(self, front: zmq.Socket[Any], back: zmq.Socket[Any],
                      cap: zmq.Socket[Any] | None) -> int:
        """After the loop stopped for a drain: forward the publications already queued at the
        frontend (permissions still checked) until none is left or the deadline; then keep the
        backend's connections up until its subscribers have gone or the deadline (closing
        earlier would cut them off from what their kernels still buffer: a subscriber that
        writes an ack to a closed connection loses what it had not read). Return the
        milliseconds left, the backend's linger."""
        assert self._drain_until is not None
        ck = self._checker
        ck.ck = dict.fromkeys(STAT_KEYS, 0)
        while (time.monotonic() < self._drain_until
               and cast(int, front.getsockopt(zmq.EVENTS)) & zmq.POLLIN):
            ck._publications(front, back, cap)
        for k, v in ck.ck.items():
            self._base_stats[k] += v
        self.drained_messages = ck.ck[("frontend", "messages_in")]
        watch = self._back_watch
        while time.monotonic() < self._drain_until and watch is not None and watch.peers:
            # the hub thread counts disconnections; a bounded check every 50 ms
            time.sleep(0.05)
        return max(0, int((self._drain_until - time.monotonic()) * 1000))

    def drain(self, timeout_s: float = 5.0) -> None:
        """Stop taking publications, hand subscribers what the proxy already holds, close.

        The forwarding loop pauses, then stops; the publications already queued at the
        frontend are forwarded (``drained_messages`` message parts), and the backend's
        queue keeps going out to subscribers until ``timeout_s`` (its linger). In a process
        that exits next, terminate the proxy's context (with a bound) so the linger is
        honoured: ``pybus proxy`` does on SIGTERM.
        """
        if self._closed or self._thread is None or not self._thread.is_alive():
            self.close()
            return
        self._drain_until = time.monotonic() + timeout_s
        with self._ctl_lock:
            # paused, then counted: nothing moves between the statistics and the stop
            self._ctl.send(PAUSE)
            if self._ctl.poll(2000, zmq.POLLIN):
                self._ctl.recv_multipart()  # the acknowledgement
            for k, v in zip(STAT_KEYS, self._stats_raw_locked(), strict=False):
                self._base_stats[k] += v
            self._state = "draining"
        self.close(timeout=timeout_s + 1.0)

    def _command(self, cmd: bytes, reply: bool = False, timeout: float = 2.0) -> list[bytes]:
        if self._closed:
            raise ClosedError(f"{cmd.decode()} on a closed Proxy")
        with self._ctl_lock:
            if self._thread is None or not self._thread.is_alive():
                raise ClosedError("the Proxy is not running (start() it first)")
            self._ctl.send(cmd)
            # libzmq >= 4.3.5 acknowledges every command (an empty frame; STATISTICS: 8)
            if not self._ctl.poll(int(timeout * 1000), zmq.POLLIN):
                if not reply:
                    return []
                raise TimeoutError(f"the proxy did not answer {cmd.decode()} within {timeout}s")
            return cast("list[bytes]", self._ctl.recv_multipart())

    def pause(self) -> None:
        """Stop forwarding; messages queue up to the high-water marks (then publishers drop)."""
        self._command(PAUSE)
        self._state = "paused"

    def resume(self) -> None:
        """Forward again after :meth:`pause`."""
        self._command(RESUME)
        self._state = "running"

    def terminate(self, timeout: float = 2.0) -> None:
        """Stop the forwarding loop for good (the sockets close). Idempotent."""
        if self._thread is None or not self._thread.is_alive():
            return
        with self._ctl_lock:
            self._ctl.send(b"TERMINATE")
            if self._ctl.poll(int(timeout * 1000), zmq.POLLIN):
                self._ctl.recv_multipart()  # the acknowledgement
        self._thread.join(timeout)
        self._state = "terminated"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the proxy stops (terminate, close, or context end); False on timeout."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _security_rekick(self) -> None:
        """After a revocation: restart the loop with fresh connections (see Curve.revoke)."""
        if self._closed or self._thread is None or not self._thread.is_alive():
            return
        if self._front_watch is not None and self._back_watch is not None:
            self._front_watch.drop_connections()
            self._back_watch.drop_connections()
            return
        with self._ctl_lock:  # not monitored: restart the loop on rebound sockets
            raw = self._stats_raw_locked()
            for k, v in zip(STAT_KEYS, raw, strict=False):
                self._base_stats[k] += v
            self._rekick = True
            self._ctl.send(b"TERMINATE")
            if self._ctl.poll(2000, zmq.POLLIN):
                self._ctl.recv_multipart()

    # -- statistics ---------------------------------------------------------------------------

    def _stats_raw_locked(self) -> list[int]:
        self._ctl.send(b"STATISTICS")
        if not self._ctl.poll(2000, zmq.POLLIN):
            raise TimeoutError("the proxy did not answer STATISTICS within 2s")
        frames = self._ctl.recv_multipart()
        if len(frames) != 8:  # pragma: no cover - libzmq < 4.3 has no STATISTICS
            raise ValidationError("this libzmq does not report proxy STATISTICS (needs >= 4.3)")
        return [int.from_bytes(f, sys.byteorder) for f in frames]

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "proxy"

    def metrics_samples(self) -> Iterator[RawSample]:
        if self.closed:
            return
        s = self.stats()
        for side in ("frontend", "backend"):
            d = s[side]
            for direction in ("in", "out"):
                yield ("pybus_proxy_messages_total", {"side": side, "direction": direction},
                       d[f"messages_{direction}"])
                yield ("pybus_proxy_bytes_total", {"side": side, "direction": direction},
                       d[f"bytes_{direction}"])
            if d.get("peers") is not None:
                yield "pybus_peers", {"side": side}, d["peers"]
            for event, n in d.get("peer_events", {}).items():
                yield "pybus_peer_events_total", {"side": side, "event": event}, n
        if s.get("checked"):
            yield "pybus_messages_dropped_total", {"reason": "forbidden"}, s["forbidden"]
        rejected: dict[str, int] = {}
        for a in s["auth"]:
            for reason, n in a["rejected_by_reason"].items():
                rejected[reason] = rejected.get(reason, 0) + n
        for reason, n in rejected.items():
            yield "pybus_auth_rejected_total", {"reason": reason}, n

    def metrics_readiness(self) -> tuple[bool, str]:
        state = "closed" if self.closed else self.stats()["state"]
        return (True, "") if state == "running" else (False, f"proxy is {state}")

    def stats(self) -> dict[str, Any]:
        """ZeroMQ's proxy statistics plus peer events.

        ``frontend`` / ``backend``: ``messages_in``, ``bytes_in``, ``messages_out``,
        ``bytes_out`` -- ZeroMQ counts message *parts* (a pybus message is two: topic and
        batch frame); the frontend's ``messages_in`` are publications, the backend's
        ``messages_in`` subscriptions. ``peers``: connections up on each side; ``state``.
        ``checked``: the checked Python loop runs (permissions); ``forbidden``: messages it
        dropped because their publisher's key may not publish the topic (``forbidden_by_key``
        by Z85 key); ``denied_subscriptions``: subscriptions it refused.
        """
        totals = dict(self._base_stats)
        if not self._closed and self._thread is not None and self._thread.is_alive():
            with self._ctl_lock:
                if self._thread.is_alive():
                    for k, v in zip(STAT_KEYS, self._stats_raw_locked(), strict=False):
                        totals[k] += v
        out: dict[str, Any] = {"frontend": {}, "backend": {}}
        for (side, key), v in totals.items():
            out[side][key] = v
        for side, w in (("frontend", self._front_watch), ("backend", self._back_watch)):
            out[side]["peers"] = w.peers if w is not None else None
            out[side]["peer_events"] = dict(w.events) if w is not None else {}
        out["state"] = self._state
        out["restarts"] = self._restarts
        out["checked"] = self._checked
        ck = self._checker
        out["forbidden"] = ck.forbidden
        out["forbidden_by_key"] = dict(ck.forbidden_by_key)
        out["denied_subscriptions"] = ck.denied_subscriptions
        out["auth"] = [s.stats() for s in self._securities]
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 2.0) -> None:
        """Terminate the loop and close every socket. Idempotent."""
        if self._closed:
            return
        try:
            self.terminate(timeout)
        finally:
            self._closed = True
            self._state = "closed"
            with self._ctl_lock:
                self._ctl.close(0)
            if self._thread is None:  # never started: the sockets are still ours
                for s in (self._front, self._back, self._cap, self._ctl_in):
                    if s is not None:
                        s.close(0)

    def __repr__(self) -> str:
        return f"<pybus.Proxy {self._state} {self.frontend} -> {self.backend}>"
