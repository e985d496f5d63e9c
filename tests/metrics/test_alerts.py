"""The alerts in docs/operations.md match on metric names and label values pybus exports.

The "What to alert on" table is parsed from the guide, so this test follows the doc: every
metric an alert expression names must be a declared family, and every label value an alert
matches on (``state="open"``, ``role="client"``, ``outcome="sent"``, ``event="redelivered"``,
``quantile="0.99"``, and the drop reasons the ``sum by (..., reason)`` row explains) must be
exported - non-zero - by real pybus objects put into that situation. An alert whose matcher
names a value the code never emits (a renamed reason, ``state="OPEN"``) never fires; this
catches that. The exposition is read with prometheus_client's parser, not pybus's.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pybus
from pybus import Curve, RetryPolicy
from pybus.metrics.families import FAMILIES

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain, until  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
_METRIC = re.compile(r"\b(pybus_[a-z0-9_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(\s*\w+\(\s*(pybus_[a-z0-9_]+)")
_EXPLAINED = re.compile(r"`([a-z_]+)`:")  # "`ring_full`: publishers outpace the sender"
_SUFFIXES = ("_bucket", "_count", "_sum")


def _alert_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## What to alert on", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("alert", "") or set(cells[0]) <= {"-", " "}:
            continue
        assert len(cells) == 3, f"table row with {len(cells)} cells: {line!r}"
        rows.append((cells[0], cells[1], cells[2]))
    return rows


Selector = tuple[str, tuple[tuple[str, str], ...]]  # (metric, ((label, value), ...))


def _alert_terms() -> tuple[set[str], set[Selector]]:
    """(metric names in the table, the selectors its expressions match on).

    ``pybus_x{a="1", b="2"}`` is one selector (both labels on one series);
    ``sum by (instance, reason) (rate(pybus_x[5m]))`` gives one per value of ``reason`` the
    "why" cell explains.
    """
    names: set[str] = set()
    matchers: set[Selector] = set()
    for _, expr, why in _alert_rows():
        for cell in (expr, why):
            for name, _ in _METRIC.findall(cell):
                names.add(name)
        for name, inner in _METRIC.findall(expr):
            pairs = tuple(sorted(_MATCHER.findall(inner)))
            if pairs:
                matchers.add((name, pairs))
        # `sum by (instance, reason) (rate(pybus_x[5m]))`: the values of a grouping label are
        # the ones the "why" cell explains (`ring_full`: ..., `closed`: ...)
        for by, name in _BY.findall(expr):
            for label in (x.strip() for x in by.split(",")):
                if label in ("instance", "name", "job", "le"):
                    continue
                values = _EXPLAINED.findall(why)
                assert values, f"the alert on {name} groups by {label} but names no values"
                matchers |= {(name, ((label, v),)) for v in values}
    return names, matchers


def _family_of(sample_name: str, declared: set[str]) -> str:
    if sample_name in declared:
        return sample_name
    for suf in _SUFFIXES:
        if sample_name.endswith(suf) and sample_name[: -len(suf)] in declared:
            return sample_name[: -len(suf)]
    return sample_name


def test_the_table_is_parsed_and_names_only_declared_families() -> None:
    names, matchers = _alert_terms()
    # the parser found the table (a silently empty parse would make the next test vacuous)
    assert len(_alert_rows()) >= 10
    assert matchers >= {
        ("pybus_messages_dropped_total", (("reason", "ring_full"),)),
        ("pybus_messages_dropped_total", (("reason", "closed"),)),
        ("pybus_messages_dropped_total", (("reason", "forbidden"),)),
        ("pybus_circuit_breaker_state", (("state", "open"),)),
        ("pybus_rpc_requests_total", (("outcome", "sent"), ("role", "client"))),
    }
    declared = {d.name for d in FAMILIES}
    unknown = sorted(n for n in names if _family_of(n, declared) not in declared)
    assert not unknown, f"alerts name metrics pybus does not declare: {unknown}"
    # and each matched label is one the family declares (quantile: summaries add it)
    labels = {d.name: set(d.labels) | ({"quantile"} if d.type == "summary" else set())
              for d in FAMILIES}
    for name, pairs in matchers:
        for label, _ in pairs:
            assert label in labels[_family_of(name, declared)], (name, label)


_COLLECT_ERRORS = "pybus_metrics_collect_errors_total"


def test_the_scrape_health_counter_exists_before_the_first_error() -> None:
    # `increase(pybus_metrics_collect_errors_total[15m]) > 0` needs the series to exist at 0
    # before it counts: Prometheus' increase() sees no increase in a series that appears at 1
    assert _COLLECT_ERRORS in _alert_terms()[0]
    reg = pybus.metrics.Registry()
    pub = pybus.Publisher(_inproc(), registry=reg)
    try:
        text = reg.render().decode()
    finally:
        pub.close(linger_ms=0)
    got = [s for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == _COLLECT_ERRORS]
    assert [(s.labels, s.value) for s in got] == [({"kind": "publisher"}, 0.0)]


def _inproc() -> str:
    return f"inproc://alerts-{uuid.uuid4().hex}"


def test_every_label_value_the_alerts_match_on_is_exported(tmp_path: Path, clock) -> None:
    names, matchers = _alert_terms()
    reg = pybus.metrics.Registry()
    closers: list = []
    expect: dict[Selector, float] = {}  # exact values where the test knows them
    try:
        # -- drops: ring_full (the sender is busy: it holds the send lock), no subscriber ----
        ring = pybus.Publisher(_inproc(), on_full="drop", capacity_bytes=4 << 10,
                               max_batch_bytes=1024, max_message_bytes=1024, block_timeout_s=0,
                               registry=reg)
        closers.append(lambda: ring.close(linger_ms=0))
        with ring._send_lock:
            for _ in range(40):
                ring.publish("alerts.ring", b"r" * 400)
            pending = ring._batcher.pending_records
        ring.flush()
        st = ring.stats()
        assert st["dropped"]["ring_full"] == 40 - pending > 0, st
        expect[("pybus_messages_dropped_total", (("reason", "ring_full"),))] = 40 - pending

        # -- drops: closed (pending when a reliable publisher closed: its only subscriber
        # never reads, so the window never takes them) ------------------------------------
        ep = _inproc()
        stalled_pub = pybus.Publisher(ep, on_full="drop", sndhwm=16, capacity_bytes=16 << 10,
                                      max_batch_bytes=1024, max_message_bytes=1024,
                                      block_timeout_s=0.2, slow_consumer_timeout_s=60,
                                      registry=reg)
        closers.append(lambda: stalled_pub.close(linger_ms=0))
        stalled = pybus.Subscriber(ep, registry=False)  # connected, reads nothing
        closers.append(stalled.close)
        assert stalled_pub.wait_for_subscribers(1, timeout=10) == 1
        for _ in range(2000):
            stalled_pub.publish("alerts.stalled", b"s" * 100)
            if stalled_pub.stats()["dropped"]["backpressure"]:
                break
        pending = stalled_pub.stats()["pending"]
        assert pending > 0
        stalled_pub.close(linger_ms=0)
        assert stalled_pub.stats()["dropped"]["closed"] == pending
        expect[("pybus_messages_dropped_total", (("reason", "closed"),))] = pending

        # -- drops: forbidden (a secured bound subscriber, a key that may not publish) -------
        keys = {n: pybus.keypair() for n in ("server", "alice")}
        srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]], log_interval_s=3600,
                           permissions={keys["alice"][0]: {"publish": ["orders.*"]}})
        guarded = pybus.Subscriber("tcp://127.0.0.1:*", bind=True, security=srv,
                                   registry=reg)
        closers.append(guarded.close)
        alice = pybus.Publisher(guarded.endpoints, connect=True, registry=False,
                                security=Curve.client(keys["alice"][1], keys["server"][0]))
        closers.append(lambda: alice.close(linger_ms=0))
        assert alice.wait_for_subscribers(1, timeout=10) == 1
        for i in range(5):
            alice.publish("audit.login", i)  # forbidden
            alice.publish("orders.new", i)   # allowed: tells us the frames arrived
        alice.flush()
        got = []
        assert until(lambda: bool(got.extend(guarded.recv_batch(100, timeout=0.05)))
                     or (len(got) >= 5 and guarded.stats()["dropped"]["forbidden"] >= 5),
                     timeout=15), guarded.stats()
        assert guarded.stats()["dropped"]["forbidden"] == 5
        expect[("pybus_messages_dropped_total", (("reason", "forbidden"),))] = 5

        # -- latency samples: a subscriber that received messages --------------------------
        ep = _inproc()
        lpub = pybus.Publisher(ep, registry=reg)
        closers.append(lambda: lpub.close(linger_ms=0))
        lsub = pybus.Subscriber(ep, ["#"], registry=reg)
        closers.append(lsub.close)
        assert lpub.wait_for_subscribers(1, timeout=10) == 1
        for i in range(200):
            lpub.publish("alerts.lat", i)
        lpub.flush()
        assert len(drain(lsub, 200, timeout=15)) == 200

        # -- a breaker that opened ---------------------------------------------------------
        cb = pybus.CircuitBreaker(2, name="db", reset_timeout_s=600, registry=reg)
        cb.record_failure()
        cb.record_failure()
        expect[("pybus_circuit_breaker_state", (("state", "open"),))] = 1

        # -- an RPC call that needed one retry ---------------------------------------------
        calls = []

        def flaky(p):
            calls.append(p)
            if len(calls) == 1:
                raise pybus.BackpressureError("busy")  # retryable
            return p

        server = pybus.Server("tcp://127.0.0.1:*", registry=reg)
        server.add_handler("flaky", flaky)
        server.start()
        closers.append(server.stop)
        client = pybus.Client(server.endpoint, timeout_s=10.0, registry=reg,
                              retry=RetryPolicy.fixed(0.0, max_attempts=3))
        closers.append(client.close)
        assert client.request("flaky", 7) == 7
        cst = client.stats()
        assert cst["retries"] == 1 and cst["requests"] >= 1, cst
        expect[("pybus_rpc_requests_total", (("outcome", "sent"), ("role", "client")))] = (
            cst["requests"])

        # -- a work queue that redelivered and dead-lettered -------------------------------
        dlq = pybus.DeadLetterQueue(tmp_path / "dlq.db", registry=reg)
        closers.append(dlq.close)

        def handler(m):
            if m.publisher_id == 1 or m.payload == 0:  # first delivery; message 0 always
                raise RuntimeError("transient")

        q = pybus.WorkQueue("tcp://127.0.0.1:*", retry=RetryPolicy.fixed(0.01, max_attempts=2),
                            dlq=dlq, registry=reg)
        closers.append(q.close)
        w = pybus.Worker(q.endpoint, handler, registry=reg)
        closers.append(lambda: w.stop(5.0))
        w.start()
        q.put_many([("jobs.x", i) for i in range(10)])
        assert q.join(30), q.stats()
        qs = q.stats()
        assert qs["redelivered"] == 10 and qs["dead_lettered"] == 1, qs
        assert until(lambda: dlq.stats()["entries"] == 1, timeout=10), dlq.stats()
        expect[("pybus_tasks_total", (("event", "redelivered"),))] = 10

        # -- a rate limiter that refused ---------------------------------------------------
        rl = pybus.RateLimiter(1.0, 1, clock=clock, name="rl", registry=reg)
        assert rl.try_acquire() and not rl.try_acquire()

        names_of = {id(o): n for _, n, o in reg.objects()}
        cli_name, sub_name = names_of[id(client)], names_of[id(lsub)]
        text = reg.render().decode()
    finally:
        for close in reversed(closers):
            close()

    samples: dict[str, list] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[s.name].append(s)
    # every metric an alert names is exported
    missing = sorted(n for n in names if n not in samples)
    assert not missing, f"alerted-on metrics absent from the exposition: {missing}"
    # every label value an alert matches on is exported, non-zero, in this situation
    for name, pairs in sorted(matchers):
        sel = f"{name}{{{', '.join(f'{k}={v!r}' for k, v in pairs)}}}"
        hits = [s for s in samples[name] if all(s.labels.get(k) == v for k, v in pairs)]
        assert hits, (f"{sel}: no such series; exported label sets: "
                      f"{sorted({tuple(sorted(s.labels.items())) for s in samples[name]})}")
        total = sum(s.value for s in hits)
        assert total > 0, f"{sel} is 0 in a situation that should count"
        if (name, pairs) in expect:
            assert total == expect[(name, pairs)], (sel, total)

    def value(metric: str, **labels: str) -> float:
        return sum(s.value for s in samples[metric]
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    # the rest of what the table relies on, with the values of the situations above
    assert value("pybus_retries_total", name=cli_name) == 1
    assert value("pybus_rpc_requests_total", name=cli_name, role="client",
                 outcome="sent") == cst["requests"]
    assert value("pybus_dlq_size") == 1
    assert value("pybus_rate_limited_total", name="rl") == 1
    assert value("pybus_end_to_end_latency_quantiles_seconds", name=sub_name,
                 quantile="0.99") > 0
    assert value("pybus_end_to_end_latency_seconds_count", name=sub_name) == 200
