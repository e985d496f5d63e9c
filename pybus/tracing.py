"""OpenTelemetry tracing, through the OpenTelemetry API as a library should (``pip install
'pybus[otel]'``; docs/tracing.md).

pybus never configures OpenTelemetry: spans flow when the application has set a tracer
provider, and nothing happens otherwise. Each endpoint object decides once, when it is made,
whether to trace (:func:`active`): without the package, with ``PYBUS_TRACING=0``, or with no
provider set, its hot path is exactly the untraced one, not a check per message.

Spans follow the OpenTelemetry messaging semantic conventions, with ``messaging.system`` =
``pybus``: a PRODUCER span per publish or put (``send <topic>``), a CONSUMER span per
delivered message (``process <topic>``), a CLIENT and a SERVER span per RPC call
(``<method>``, ``rpc.system`` = ``pybus``). The W3C ``traceparent`` (with ``tracestate`` and
``baggage``) travels in the message headers, so a consumer's span is the child of the
producer's, across processes, redeliveries and DLQ replays (a replay keeps the headers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ._version import __version__

__all__ = ["SYSTEM", "TRACE_HEADERS", "active", "consume", "produce", "received",
           "rpc_client", "rpc_server", "traced_receive"]

#: ``messaging.system`` (and ``rpc.system``) of every pybus span
SYSTEM = "pybus"
#: the header names the W3C propagators write (they travel with the message)
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

try:  # the optional extra
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace

    _OTEL = True
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    _OTEL = False


def active() -> bool:
    """Should an object made now trace? The package is installed, ``PYBUS_TRACING`` is not
    ``0``, and the application has set a tracer provider (the API's default proxy or no-op
    provider means nobody listens)."""
    if not _OTEL or os.environ.get("PYBUS_TRACING", "1") == "0":
        return False
    provider = _trace.get_tracer_provider()
    return not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))


def _tracer() -> Any:
    return _trace.get_tracer("pybus", __version__)


def _base(destination: str, operation: str, kind: str) -> dict[str, Any]:
    return {"messaging.system": SYSTEM, "messaging.destination.name": destination,
            "messaging.operation.name": operation, "messaging.operation.type": kind}


@contextmanager
def produce(destination: str, headers: Mapping[str, Any] | None,
            operation: str = "send") -> Iterator[tuple[Any, dict[str, Any]]]:
    """A PRODUCER span around one publish or put; yields (span, the headers to send: the
    caller's plus the trace context). Set ``messaging.message.id`` on the span when known.

    A message sent again with the trace context it already carries (a dead letter replayed
    outside any span) stays in its trace: the new span is the child of the one in its
    headers."""
    context = None
    if not _trace.get_current_span().get_span_context().is_valid:
        context = _parent(headers)
    with _tracer().start_as_current_span(
            f"{operation} {destination}", context=context, kind=_trace.SpanKind.PRODUCER,
            attributes=_base(destination, operation, "send")) as span:
        out = dict(headers) if headers else {}
        _propagate.inject(out)
        yield span, out


def _parent(headers: Mapping[str, Any] | None) -> Any:
    if not headers:
        return None
    carrier = {k: v for k in TRACE_HEADERS if isinstance(v := headers.get(k), str)}
    return _propagate.extract(carrier) if carrier else None


@contextmanager
def consume(destination: str, headers: Mapping[str, Any] | None, message_id: str = "",
            batch_size: int | None = None, operation: str = "process") -> Iterator[Any]:
    """A CONSUMER span for handling one delivered message, the child of the span whose
    context its headers carry (a root span when they carry none)."""
    attrs = _base(destination, operation, operation)
    if message_id:
        attrs["messaging.message.id"] = message_id
    if batch_size is not None:
        attrs["messaging.batch.message_count"] = batch_size
    with _tracer().start_as_current_span(
            f"{operation} {destination}", context=_parent(headers),
            kind=_trace.SpanKind.CONSUMER, attributes=attrs) as span:
        yield span


@contextmanager
def rpc_client(method: str, headers: Mapping[str, Any] | None = None
               ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A CLIENT span around one request; yields (span, headers with the trace context)."""
    with _tracer().start_as_current_span(
            method, kind=_trace.SpanKind.CLIENT,
            attributes={"rpc.system": SYSTEM, "rpc.method": method}) as span:
        out = dict(headers) if headers else {}
        _propagate.inject(out)
        yield span, out


@contextmanager
def rpc_server(method: str, headers: Mapping[str, Any] | None) -> Iterator[Any]:
    """A SERVER span around one handler call, the child of the client's span."""
    token = None
    parent = _parent(headers)
    try:
        if parent is not None:
            token = _context.attach(parent)
        with _tracer().start_as_current_span(
                method, kind=_trace.SpanKind.SERVER,
                attributes={"rpc.system": SYSTEM, "rpc.method": method}) as span:
            yield span
    finally:
        if token is not None:
            _context.detach(token)


def received(messages: list[Any]) -> None:
    """A CONSUMER ``receive <topic>`` span for each message a Subscriber handed out, the
    child of its producer's span, with its id and the size of the batch it came in.

    The spans mark the delivery (they end at once); the handling is the application's, which
    wraps it in :func:`consume` when it wants a span around it."""
    tracer, n = _tracer(), len(messages)
    for m in messages:
        raw = getattr(m, "message", m)  # a TypedMessage wraps the Message
        attrs = _base(raw.topic, "receive", "receive")
        attrs["messaging.message.id"] = f"{raw.publisher_id:016x}:{raw.seq}"
        attrs["messaging.batch.message_count"] = n
        tracer.start_span(f"receive {raw.topic}", context=_parent(raw.headers),
                          kind=_trace.SpanKind.CONSUMER, attributes=attrs).end()


def traced_receive(recv: Any, recv_batch: Any) -> tuple[Any, Any]:
    """A Subscriber's ``recv`` and ``recv_batch`` with :func:`received` spans (chosen once,
    at construction, when :func:`active`)."""

    def recv_traced(timeout: float | None = None) -> Any:
        m = recv(timeout)
        received([m])
        return m

    def recv_batch_traced(max_messages: int = 10_000, timeout: float | None = None) -> Any:
        got = recv_batch(max_messages, timeout)
        if got:
            received(got)
        return got

    return recv_traced, recv_batch_traced
