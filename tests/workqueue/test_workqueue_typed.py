"""Typed work-queue messages (issue 13): a Worker declaring a type gets it, a payload that
does not fit is dead-lettered at once with the validation message (no retries), across
processes too; and the trace context rides along with each message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import msgspec
import pydantic

import pybus
from pybus.testing import run_handler


class Resize(msgspec.Struct):
    path: str
    width: int


class ResizeModel(pydantic.BaseModel):
    path: str
    width: int


def test_annotation_and_type_and_schema_errors_dead_letter_at_once(bus, tmp_path):
    by_annotation: list[Resize] = []
    by_type: list[pybus.pubsub.TypedMessage] = []

    def handle(job: Resize) -> None:
        by_annotation.append(job)

    dlq = pybus.DeadLetterQueue(str(tmp_path / "dead.db"))
    try:
        q = bus.work_queue(dlq=dlq, retry=pybus.RetryPolicy.fixed(0.01, max_attempts=5))
        bus.worker(q, handle)
        q.put("img.resize", Resize("a.png", 100))
        q.put("img.resize", {"path": "b.png", "width": "wide"})  # does not fit
        q.put("img.resize", b"raw")  # not msgpack
        assert q.join(timeout=30)
        assert by_annotation == [Resize("a.png", 100)]
        dead = sorted(dlq.list(), key=lambda d: d.id)
        assert [d.attempts for d in dead] == [1, 1]  # no retries
        assert all(d.error_type == "ValidationError" for d in dead)
        assert "Expected `int`, got `str` - at `$.width`" in dead[0].error_message
        q2 = bus.work_queue()
        bus.worker(q2, by_type.append, type=ResizeModel)
        q2.put("img.resize", ResizeModel(path="c.png", width=7))
        assert q2.join(timeout=30)
        assert by_type[0].payload == ResizeModel(path="c.png", width=7)
        assert by_type[0].topic == "img.resize"
    finally:
        dlq.close()


def test_the_testing_kit_sees_the_worker_typed():
    got: list[Resize] = []

    def handle(job: Resize) -> None:
        got.append(job)

    w = pybus.Worker("inproc://typed-kit", handle, registry=False)
    try:
        assert run_handler(w, "img.resize", Resize("x", 1)).acked
        bad = run_handler(w, "img.resize", {"path": 1, "width": 1})
        assert not bad.acked and bad.error.retryable is False
        assert got == [Resize("x", 1)]
    finally:
        w.stop()


WORKER = textwrap.dedent("""
    import sys, msgspec, pybus

    class Resize(msgspec.Struct):
        path: str
        width: int

    def handle(job: Resize) -> None:
        print(repr(job), flush=True)
        w.stop()

    w = pybus.Worker(sys.argv[1], handle, registry=False)
    w.run()
""")


def test_typed_round_trip_with_a_worker_in_another_process(bus, tmp_path):
    q = bus.work_queue("tcp://127.0.0.1:*")
    q.put("img.resize", Resize("a.png", 640))
    out = subprocess.run([sys.executable, "-c", WORKER, q.endpoint], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Resize(path='a.png', width=640)" in out.stdout


TRACED = textwrap.dedent("""
    import json, sys, tracing_procs
    exporter = tracing_procs._exporter()
    import pybus
    done = []
    q = pybus.WorkQueue("tcp://127.0.0.1:*", registry=False)
    w = pybus.Worker(q.endpoint, done.append, registry=False).start()
    assert w.wait_ready(30)
    q.put("img.resize", {"path": "a.png"})
    assert q.join(timeout=30)
    w.stop(); q.close()
    tracing_procs._dump(exporter)
""")


def test_the_trace_context_travels_with_the_message(tmp_path):
    tests = os.path.dirname(os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", TRACED], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=tests))
    assert out.returncode == 0, out.stderr
    spans = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    (sent,) = [s for s in spans if s["kind"] == "PRODUCER"]
    (handled,) = [s for s in spans if s["kind"] == "CONSUMER"]
    assert handled["parent_id"] == sent["span_id"] and handled["trace_id"] == sent["trace_id"]
    assert sent["name"] == "send img.resize" and handled["name"] == "process img.resize"
    assert sent["attributes"]["messaging.message.id"] == handled["attributes"][
        "messaging.message.id"]
