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


def _two_processes(tmp_path, first: list[str], second: list[str],
                   stdin_after: bool = False) -> tuple[list[dict], list[dict]]:
    """Run ``tracing_procs.py first``, read the endpoint it prints, run ``second ENDPOINT``;
    return both processes' JSON lines (``stdin_after``: tell the first to stop once the second
    is done)."""
    env = dict(os.environ, PYTHONPATH=HERE)
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    a = subprocess.Popen([sys.executable, PROCS, *first], stdin=subprocess.PIPE, **kw)
    b = None
    try:
        line = ""
        while "endpoint" not in line:
            line = a.stdout.readline()
            assert line, a.stderr.read()
        b = subprocess.Popen([sys.executable, PROCS, *second, json.loads(line)["endpoint"]], **kw)
        b_out, b_err = b.communicate(timeout=60)
        assert b.returncode == 0, b_err
        a_out, a_err = a.communicate("stop\n" if stdin_after else None, timeout=60)
        assert a.returncode == 0, a_err
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    return _json_lines(a_out), _json_lines(b_out)


def test_consumer_span_is_the_child_of_the_producer_span_across_processes(tmp_path):
    p_out, c_out = _two_processes(tmp_path, ["publish"], ["consume"])
    (sent,) = [s for s in p_out if s.get("kind") == "PRODUCER"]
    got = [r for r in c_out if "headers" in r][0]
    (handled,) = [s for s in c_out if s.get("name") == "process orders.created"]
    (received,) = [s for s in c_out if s.get("name") == "receive orders.created"]
    # the W3C header carries the producer span's ids, and the caller's own header survives
    version, trace_id, span_id, _flags = got["headers"]["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", sent["trace_id"], sent["span_id"])
    assert got["headers"]["k"] == "v" and got["payload"] == {"id": 7}
    for span in (handled, received):  # the subscriber's own span and the application's
        assert span["kind"] == "CONSUMER"
        assert (span["trace_id"], span["parent_id"]) == (sent["trace_id"], sent["span_id"])
        assert span["attributes"]["messaging.message.id"].endswith(":1")
    assert sent["name"] == "publish orders.created"
    assert sent["attributes"]["messaging.system"] == "pybus"
    assert sent["attributes"]["messaging.destination.name"] == "orders.created"
    assert received["attributes"]["messaging.batch.message_count"] == 1
    assert received["attributes"]["messaging.operation.type"] == "receive"


def test_server_span_is_the_child_of_the_client_span_across_processes(tmp_path):
    s_out, c_out = _two_processes(tmp_path, ["serve"], ["call"], stdin_after=True)
    assert [r["result"] for r in c_out if "result" in r] == [5]
    (client,) = [s for s in c_out if s.get("kind") == "CLIENT"]
    (server,) = [s for s in s_out if s.get("kind") == "SERVER"]
    assert (server["trace_id"], server["parent_id"]) == (client["trace_id"], client["span_id"])
    for span in (client, server):
        assert span["name"] == "add"
        assert span["attributes"]["rpc.system"] == "pybus"
        assert span["attributes"]["rpc.method"] == "add"


def test_a_replayed_dead_letter_stays_in_its_trace_across_processes(tmp_path):
    q_out, w_out = _two_processes(tmp_path, ["queue", str(tmp_path / "dead.db")], ["work"])
    sends = [s for s in q_out if s.get("kind") == "PRODUCER"]
    handled = [s for s in w_out if s.get("kind") == "CONSUMER"]
    assert len(sends) == 2 and len(handled) == 2  # the put and the replay; two deliveries
    first = [s for s in sends if s["parent_id"] is None]
    (put,) = first
    (replay,) = [s for s in sends if s is not put]
    # the replay continues the original trace: child of the put, and the deliveries' parents
    assert (replay["trace_id"], replay["parent_id"]) == (put["trace_id"], put["span_id"])
    parents = sorted(s["parent_id"] for s in handled)
    assert parents == sorted([put["span_id"], replay["span_id"]])
    assert {s["trace_id"] for s in handled} == {put["trace_id"]}


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
