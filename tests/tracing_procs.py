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


def serve() -> None:
    """A Server with an ``add`` handler; say where, serve until a line arrives on stdin."""
    exporter = _exporter()
    import pybus

    with pybus.Server("tcp://127.0.0.1:*", registry=False) as srv:
        srv.add_handler("add", lambda p: p["a"] + p["b"])
        print(json.dumps({"endpoint": srv.endpoint}), flush=True)
        sys.stdin.readline()
    _dump(exporter)


def call(endpoint: str) -> None:
    """One request, its result, then the spans."""
    exporter = _exporter()
    import pybus

    with pybus.Client(endpoint, timeout_s=30) as c:
        print(json.dumps({"result": c.request("add", {"a": 2, "b": 3})}), flush=True)
    _dump(exporter)


def queue_and_replay(dlq_path: str) -> None:
    """Put one task that the worker (another process) fails once, so it is dead-lettered
    after its one attempt; then replay the dead letter and wait until it is done."""
    exporter = _exporter()
    import pybus

    dlq = pybus.DeadLetterQueue(dlq_path, registry=False)
    with pybus.WorkQueue("tcp://127.0.0.1:*", dlq=dlq, registry=False,
                         retry=pybus.RetryPolicy.fixed(0.0, max_attempts=1)) as q:
        print(json.dumps({"endpoint": q.endpoint}), flush=True)
        q.put("img.resize", {"path": "a.png"})
        assert q.join(timeout=30) and len(dlq) == 1
        assert dlq.replay(to=q) == 1
        assert q.join(timeout=30) and len(dlq) == 0
    dlq.close()
    _dump(exporter)


def work_twice(endpoint: str) -> None:
    """A Worker whose handler fails the first delivery and succeeds the second."""
    import threading

    exporter = _exporter()
    import pybus

    calls = []
    second = threading.Event()

    def handle(msg):  # type: ignore[no-untyped-def]
        calls.append(msg.payload)
        if len(calls) == 1:
            raise RuntimeError("the first attempt fails")
        second.set()

    w = pybus.Worker(endpoint, handle, registry=False).start()
    assert second.wait(30), calls
    w.stop()  # finishes and acks the delivery in hand
    _dump(exporter)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"publish": publish_one, "consume": consume_one, "serve": serve, "call": call,
     "queue": queue_and_replay, "work": work_twice}[mode](*args)
