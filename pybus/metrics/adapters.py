"""Adapters from pybus objects' counters and ``stats()`` to the metric families.

Each adapter reads what the object already keeps (plain counters, updated per batch) and yields
``(logical_name, labels, value)``; the registry adds the ``name`` label and caps topics. Classes are
named by string so this module imports none of them (no import cycles).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .registry import HdrValue, RawSample, register_adapter

_NS = 1e-9


def _topic(t: str) -> str:
    # The subscriber folds its own untracked topics into "<other>"; report them with ours.
    return "other" if t == "<other>" else t


def _transport_samples(obj: Any, s: dict[str, Any]) -> Iterator[RawSample]:
    """Peer events of a socket's monitor and its CURVE server's rejections (pybus.security)."""
    for event, n in s.get("peer_events", {}).items():
        yield "pybus_peer_events_total", {"side": "socket", "event": event}, n
    sec = getattr(obj, "_security", None)
    if sec is not None and getattr(sec, "is_server", False):
        for reason, n in sec.stats()["rejected_by_reason"].items():
            yield "pybus_auth_rejected_total", {"reason": reason}, n


class _PublisherAdapter:
    kind = "publisher"

    def samples(self, pub: Any) -> Iterator[RawSample]:
        s = pub.stats()
        by_topic = getattr(pub, "_published_by_topic", None)
        if by_topic:
            for t, n in dict(by_topic).items():  # keys are the topic frames (ASCII bytes)
                yield "pybus_messages_published_total", {"topic": t.decode("ascii")}, n
        yield "pybus_published_bytes_total", {}, s["bytes"]
        yield "pybus_batches_total", {}, s["batches"]
        for reason, n in s["dropped"].items():
            yield "pybus_messages_dropped_total", {"reason": reason}, n
        yield "pybus_subscribers", {}, s["subscribers"]
        yield "pybus_publisher_evictions_total", {}, s["evictions"]
        yield "pybus_publisher_in_flight_bytes", {}, s["in_flight_bytes"]
        yield "pybus_queue_depth", {}, s["pending"]
        sizes = getattr(pub, "_batch_sizes", None)
        if sizes is not None:
            yield "pybus_batch_size_messages", {}, HdrValue(sizes, 1.0, s["published"])
        yield from _transport_samples(pub, s)

    def readiness(self, pub: Any) -> tuple[bool, str]:
        return (False, "publisher is closed") if pub.closed else (True, "")


class _SubscriberAdapter:
    kind = "subscriber"

    def samples(self, sub: Any) -> Iterator[RawSample]:
        s = sub.stats()
        for t, n in s["received_by_topic"].items():
            yield "pybus_messages_received_total", {"topic": _topic(t)}, n
        yield "pybus_messages_lost_total", {}, s["lost"]
        for reason, n in s.get("dropped", {}).items():
            yield "pybus_messages_dropped_total", {"reason": reason}, n
        yield "pybus_messages_out_of_order_total", {}, s["out_of_order"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_queue_depth", {}, s["buffered"]
        for key, fam in (("gaps", "pybus_sequence_gaps_total"),
                         ("bytes", "pybus_received_bytes_total"),
                         ("batches", "pybus_batches_received_total")):
            if key in s:
                yield fam, {}, s[key]
        lat = getattr(sub, "_latency", None)
        if lat is not None:
            yield "pybus_end_to_end_latency_seconds", {}, HdrValue(lat, _NS)
        yield from _transport_samples(sub, s)

    def readiness(self, sub: Any) -> tuple[bool, str]:
        return (False, "subscriber is closed") if sub.closed else (True, "")


class _BreakerAdapter:
    kind = "circuit_breaker"

    def samples(self, cb: Any) -> Iterator[RawSample]:
        # .state (not stats()["state"]): an open breaker past reset_timeout reads as half-open
        state = str(cb.state.value)
        s = cb.stats()
        for st in ("closed", "open", "half_open"):
            yield "pybus_circuit_breaker_state", {"state": st}, 1 if st == state else 0
        yield "pybus_circuit_breaker_calls_total", {"outcome": "success"}, s["successes"]
        yield "pybus_circuit_breaker_calls_total", {"outcome": "failure"}, s["failures"]
        yield "pybus_circuit_breaker_opened_total", {}, s["opened"]
        yield "pybus_circuit_breaker_rejected_total", {}, s["rejected"]

    def readiness(self, cb: Any) -> tuple[bool, str]:
        if str(cb.state.value) == "open":
            return False, f"circuit breaker is open; probes in {cb.retry_after:.1f} s"
        return True, ""


class _RateLimiterAdapter:
    kind = "rate_limiter"

    def samples(self, rl: Any) -> Iterator[RawSample]:
        s = rl.stats()
        yield "pybus_rate_limited_total", {}, s["rejected"]
        yield "pybus_rate_limiter_granted_total", {}, s["granted"]

    def readiness(self, rl: Any) -> tuple[bool, str]:
        return True, ""


class _KeyedRateLimiterAdapter:
    kind = "rate_limiter"

    def samples(self, krl: Any) -> Iterator[RawSample]:
        # The per-key buckets are not registered themselves (there may be thousands); their
        # counters are summed here, plus what evicted buckets had counted.
        with krl._lock:
            buckets = list(krl._buckets.values())
            granted = getattr(krl, "_evicted_granted", 0)
            rejected = getattr(krl, "_evicted_rejected", 0)
        for b in buckets:
            granted += b._granted
            rejected += b._rejected
        yield "pybus_rate_limited_total", {}, rejected
        yield "pybus_rate_limiter_granted_total", {}, granted

    def readiness(self, krl: Any) -> tuple[bool, str]:
        return True, ""


class _RetryAdapter:
    kind = "retry_policy"

    def samples(self, rp: Any) -> Iterator[RawSample]:
        s = rp.stats()
        yield "pybus_retries_total", {}, s["retries"]
        yield "pybus_retries_exhausted_total", {}, s["exhausted"]

    def readiness(self, rp: Any) -> tuple[bool, str]:
        return True, ""


class _DlqAdapter:
    kind = "dlq"

    def samples(self, dlq: Any) -> Iterator[RawSample]:
        if dlq._closed:
            return
        s = dlq.stats()
        yield "pybus_dlq_size", {}, s["entries"]
        yield "pybus_dlq_evicted_total", {}, s["evictions"]

    def readiness(self, dlq: Any) -> tuple[bool, str]:
        return True, ""


class _ProxyAdapter:
    kind = "proxy"

    def samples(self, px: Any) -> Iterator[RawSample]:
        if px.closed:
            return
        s = px.stats()
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

    def readiness(self, px: Any) -> tuple[bool, str]:
        if px.closed or px.stats()["state"] != "running":
            return False, f"proxy is {'closed' if px.closed else px.stats()['state']}"
        return True, ""


_QUEUE_EVENTS = ("put", "recovered", "dispatched", "acked", "nacked", "redelivered",
                 "dead_lettered", "ack_timeouts")
_WORKER_EVENTS = ("handled", "acked", "nacked", "duplicates")


class _WorkQueueAdapter:
    kind = "work_queue"

    def samples(self, q: Any) -> Iterator[RawSample]:
        s = q.stats()
        for ev in _QUEUE_EVENTS:
            if ev in s:
                yield "pybus_tasks_total", {"event": ev}, s[ev]
        yield "pybus_dead_lettered_total", {}, s["dead_lettered"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_in_flight", {}, s["in_flight"]
        yield "pybus_queue_depth", {}, s["queue_depth"]
        yield "pybus_workers", {}, s["workers"]
        yield from _transport_samples(q, s)

    def readiness(self, q: Any) -> tuple[bool, str]:
        return (False, "work queue is closed") if q._closed else (True, "")


class _WorkerAdapter:
    kind = "worker"

    def samples(self, w: Any) -> Iterator[RawSample]:
        s = w.stats()
        for ev in _WORKER_EVENTS:
            yield "pybus_tasks_total", {"event": ev}, s[ev]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        lat = getattr(w, "_handler_latency", None)
        if lat is not None:
            yield "pybus_handler_latency_seconds", {}, HdrValue(lat, _NS)
        yield from _transport_samples(w, s)

    def readiness(self, w: Any) -> tuple[bool, str]:
        if w._stopping:
            return False, "worker is stopped"
        if not w._ready.is_set():
            return False, "worker has no session with its queue yet"
        return True, ""


class _RpcServerAdapter:
    kind = "rpc_server"

    def samples(self, srv: Any) -> Iterator[RawSample]:
        s = srv.stats()
        for key, outcome in (("requests", "received"), ("replies", "replied"),
                             ("handler_errors", "handler_error"),
                             ("unknown_method", "unknown_method"),
                             ("busy_rejected", "busy_rejected"), ("unroutable", "unroutable")):
            yield "pybus_rpc_requests_total", {"role": "server", "outcome": outcome}, s[key]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_in_flight", {}, s["inflight"]
        yield "pybus_handler_latency_seconds", {}, HdrValue(srv._handler_latency, _NS)
        yield from _transport_samples(srv, s)

    def readiness(self, srv: Any) -> tuple[bool, str]:
        return (False, "rpc server is closed") if srv._closed else (True, "")


class _RpcClientAdapter:
    kind = "rpc_client"

    def samples(self, cl: Any) -> Iterator[RawSample]:
        s = cl.stats()
        for key, outcome in (("requests", "sent"), ("replies", "replied"),
                             ("remote_errors", "remote_error"), ("timeouts", "timeout"),
                             ("late_replies", "late_reply")):
            yield "pybus_rpc_requests_total", {"role": "client", "outcome": outcome}, s[key]
        yield "pybus_retries_total", {}, s["retries"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_rpc_latency_seconds", {}, HdrValue(cl._rpc_latency, _NS)
        yield from _transport_samples(cl, s)

    def readiness(self, cl: Any) -> tuple[bool, str]:
        return (False, "rpc client is closed") if cl._closed else (True, "")


register_adapter("pybus.rpc.endpoints.Server", _RpcServerAdapter())
register_adapter("pybus.rpc.endpoints._ClientBase", _RpcClientAdapter())
register_adapter("pybus.workqueue.queue.WorkQueue", _WorkQueueAdapter())
register_adapter("pybus.workqueue.worker.Worker", _WorkerAdapter())
register_adapter("pybus.pubsub.publisher.Publisher", _PublisherAdapter())
register_adapter("pybus.pubsub.subscriber.Subscriber", _SubscriberAdapter())
register_adapter("pybus.policy.breaker.CircuitBreaker", _BreakerAdapter())
register_adapter("pybus.policy.ratelimit.RateLimiter", _RateLimiterAdapter())
register_adapter("pybus.policy.ratelimit.KeyedRateLimiter", _KeyedRateLimiterAdapter())
register_adapter("pybus.policy.retry.RetryPolicy", _RetryAdapter())
register_adapter("pybus.store.dlq.DeadLetterQueue", _DlqAdapter())
register_adapter("pybus.pubsub.proxy.Proxy", _ProxyAdapter())
