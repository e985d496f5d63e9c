"""pybus.tracing (issue 13, OpenTelemetry): the trace context crosses processes in message
headers, spans follow the messaging conventions, and without a tracer provider the hot path
is the untraced one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pybus
from pybus import tracing

HERE = os.path.dirname(__file__)
PROCS = os.path.join(HERE, "tracing_procs.py")


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # anything else a child prints
    return out


def test_consumer_span_is_the_child_of_the_producer_span_across_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=HERE)
    producer = subprocess.Popen([sys.executable, PROCS, "publish"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    consumer = None
    try:
        first = ""
        while "endpoint" not in first:
            first = producer.stdout.readline()
            assert first, producer.stderr.read()
        endpoint = json.loads(first)["endpoint"]
        consumer = subprocess.Popen([sys.executable, PROCS, "consume", endpoint],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env, cwd=tmp_path)
        c_out, c_err = consumer.communicate(timeout=60)
        p_out, p_err = producer.communicate(timeout=60)
    finally:
        for proc in (producer, consumer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    assert producer.returncode == 0, p_err
    assert consumer.returncode == 0, c_err
    (sent,) = [s for s in _json_lines(p_out) if s.get("kind") == "PRODUCER"]
    got = [r for r in _json_lines(c_out) if "headers" in r][0]
    (handled,) = [s for s in _json_lines(c_out) if s.get("kind") == "CONSUMER"]
    # the W3C header carries the producer span's ids, and the caller's own header survives
    version, trace_id, span_id, _flags = got["headers"]["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", sent["trace_id"], sent["span_id"])
    assert got["headers"]["k"] == "v" and got["payload"] == {"id": 7}
    assert handled["trace_id"] == sent["trace_id"]
    assert handled["parent_id"] == sent["span_id"]
    assert sent["name"] == "publish orders.created"
    assert sent["attributes"]["messaging.system"] == "pybus"
    assert sent["attributes"]["messaging.destination.name"] == "orders.created"
    assert handled["name"] == "process orders.created"
    assert handled["attributes"]["messaging.message.id"].endswith(":1")


def test_without_a_provider_nothing_is_traced_and_publish_is_the_compiled_call():
    # this test process never sets a tracer provider
    assert tracing.active() is False
    with pybus.Publisher("inproc://tracing-off", registry=False) as pub:
        # the batcher's own compiled method, not a Python wrapper
        assert type(pub.publish.__self__).__name__ == "Batcher"


def test_pybus_tracing_0_turns_it_off_even_with_a_provider(tmp_path):
    code = ("import tracing_procs; tracing_procs._exporter(); "
            "from pybus import tracing; print(tracing.active())")
    out = {}
    for value in ("0", "1"):
        env = dict(os.environ, PYTHONPATH=HERE, PYBUS_TRACING=value)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
        out[value] = r.stdout.strip().splitlines()[-1]
    assert out == {"0": "False", "1": "True"}


def test_a_message_without_trace_headers_gets_a_root_consumer_span(tmp_path):
    code = ("import tracing_procs; e = tracing_procs._exporter(); "
            "from pybus import tracing\n"
            "with tracing.consume('t', {'k': 'v'}): pass\n"
            "with tracing.consume('t', None): pass\n"
            "tracing_procs._dump(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=HERE), cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    spans = [s for s in _json_lines(r.stdout) if "kind" in s]
    assert [s["parent_id"] for s in spans] == [None, None]
