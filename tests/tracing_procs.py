"""Child processes for the tracing tests: each sets up the OpenTelemetry SDK with an
in-memory exporter (as an application would), does one side of a pybus exchange, and prints
its finished spans as JSON lines on stdout."""

from __future__ import annotations

import json
import sys


def _exporter():  # type: ignore[no-untyped-def]
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def _dump(exporter) -> None:  # type: ignore[no-untyped-def]
    for s in exporter.get_finished_spans():
        print(json.dumps({
            "name": s.name, "kind": s.kind.name,
            "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
            "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
            "attributes": dict(s.attributes or {}),
        }), flush=True)


def publish_one() -> None:
    """Bind a Publisher on a free port, say where, publish one message once a subscriber
    came, then print the spans."""
    exporter = _exporter()
    import pybus

    with pybus.Publisher("tcp://127.0.0.1:*", registry=False) as pub:
        print(json.dumps({"endpoint": pub.endpoints[0]}), flush=True)
        assert pub.wait_for_subscribers(1, timeout=30) == 1
        pub.publish("orders.created", {"id": 7}, {"k": "v"})
        pub.flush(timeout=30)
    _dump(exporter)


def consume_one(endpoint: str) -> None:
    """Receive one message and handle it in a consumer span; print the message's headers and
    the spans."""
    exporter = _exporter()
    import pybus
    from pybus import tracing

    with pybus.Subscriber(endpoint, topics=["orders.#"], registry=False) as sub:
        print(json.dumps({"subscribed": True}), flush=True)
        m = sub.recv(timeout=30)
        with tracing.consume(m.topic, m.headers, f"{m.publisher_id:016x}:{m.seq}"):
            pass
        print(json.dumps({"headers": m.headers, "payload": m.payload}), flush=True)
    _dump(exporter)


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        publish_one()
    else:
        consume_one(sys.argv[2])
