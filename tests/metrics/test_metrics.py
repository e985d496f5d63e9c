"""pybus.metrics: registry, adapters, exposition (checked by prometheus_client and promtool)."""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

import pybus
from pybus import metrics
from pybus.metrics.families import FAMILIES, LATENCY_BUCKETS_SECONDS, QUANTILES, markdown

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in parse_text(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp: dict, metric: str, /, **labels: str) -> float:
    return smp[(metric, frozenset(labels.items()))]


def pump(pub: pybus.Publisher, sub: pybus.Subscriber, items: list[tuple[str, bytes]]) -> None:
    for topic, payload in items:
        pub.publish(topic, payload)
    pub.flush()
    got = 0
    while got < len(items):
        batch = sub.recv_batch(10_000, timeout=5.0)
        assert batch, f"received {got} of {len(items)} before the timeout"
        got += len(batch)


@pytest.fixture
def bus():
    """A busy bus in its own registry: publisher + subscriber on inproc, a breaker, a DLQ."""
    reg = metrics.Registry()
    ep = f"inproc://metrics-{uuid.uuid4().hex}"
    pub = pybus.Publisher(ep, registry=reg)
    sub = pybus.Subscriber(ep, ["#"], registry=reg)
    pub.wait_for_subscribers(1, timeout=5.0)
    yield reg, pub, sub
    sub.close()
    pub.close(linger_ms=0)


def test_exposition_parses_and_matches_object_stats(bus, tmp_path):
    reg, pub, sub = bus
    items = [(f"orders.t{i % 3}", b"x" * 64) for i in range(3000)]
    pump(pub, sub, items)
    breaker = pybus.CircuitBreaker(2, name="db", registry=reg)
    for _ in range(2):
        breaker.record_failure()
    dlq = pybus.DeadLetterQueue(tmp_path / "dlq.db", registry=reg)
    dlq.add("orders.t0", b"bad", error=ValueError("boom"))
    text = reg.render().decode()
    smp = samples(text)
    pname, sname = reg.objects()[0][1], reg.objects()[1][1]
    for i in range(3):
        topic = f"orders.t{i}"
        assert value(smp, "pybus_messages_published_total", name=pname, topic=topic) == 1000
        assert value(smp, "pybus_messages_received_total", name=sname, topic=topic) == 1000
    ps, ss = pub.stats(), sub.stats()
    assert value(smp, "pybus_published_bytes_total", name=pname) == ps["bytes"]
    assert value(smp, "pybus_batches_total", name=pname) == ps["batches"]
    assert value(smp, "pybus_received_bytes_total", name=sname) == ss["bytes"] == ps["bytes"]
    assert value(smp, "pybus_batch_size_messages_count", name=pname) == ps["batches"]
    assert value(smp, "pybus_batch_size_messages_sum", name=pname) == 3000
    assert value(smp, "pybus_batch_size_messages_bucket", name=pname, le="+Inf") == ps["batches"]
    assert value(smp, "pybus_end_to_end_latency_seconds_count", name=sname) == 3000
    assert value(smp, "pybus_messages_lost_total", name=sname) == 0
    assert value(smp, "pybus_circuit_breaker_state", name="db", state="open") == 1
    assert value(smp, "pybus_circuit_breaker_state", name="db", state="closed") == 0
    assert value(smp, "pybus_circuit_breaker_opened_total", name="db") == 1
    assert value(smp, "pybus_dlq_size", name="dlq-1") == 1
    assert value(smp, "pybus_objects", kind="publisher") == 1
    assert value(smp, "pybus_process_resident_memory_bytes") > 1e6
    assert value(smp, "pybus_process_threads") >= 1
    # every family of the table is declared, and nothing else is
    declared = {f.name for f in parse_text(text)}
    assert declared == {d.family_name if d.type == "counter" else d.name for d in FAMILIES}


def test_openmetrics_parses_with_units_and_eof(bus):
    reg, pub, sub = bus
    pump(pub, sub, [("a.b", b"y" * 64)] * 100)
    text = reg.render("openmetrics").decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in parse_om(text)}
    assert fams["pybus_messages_published"].type == "counter"
    assert fams["pybus_end_to_end_latency_seconds"].unit == "seconds"
    assert fams["pybus_end_to_end_latency_seconds"].type == "histogram"
    assert fams["pybus_end_to_end_latency_quantiles_seconds"].type == "summary"
    assert fams["pybus_published_bytes"].unit == "bytes"


# CI installs promtool and sets PYBUS_REQUIRE_PROMTOOL=1, so there a missing promtool fails
# instead of skipping silently.
@pytest.mark.skipif(shutil.which("promtool") is None
                    and not os.environ.get("PYBUS_REQUIRE_PROMTOOL"),
                    reason="promtool not installed (Debian package 'prometheus'; CI installs it)")
def test_promtool_check_metrics_clean_on_busy_bus(bus, tmp_path):
    reg, pub, sub = bus
    pump(pub, sub, [(f"t.{i % 7}", b"z" * 64) for i in range(5000)])
    srv = pybus.Server("tcp://127.0.0.1:*", registry=reg)
    srv.add_handler("echo", lambda p: p)
    srv.start()
    cl = pybus.Client(srv.endpoint, registry=reg)
    try:
        for _ in range(20):
            assert cl.request("echo", b"hi") == b"hi"
        pybus.RetryPolicy.fixed(0.0, registry=reg)
        pybus.KeyedRateLimiter(10, registry=reg).try_acquire("k")
        text = reg.render()
    finally:
        cl.close()
        srv.close()
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stdout + proc.stderr


def test_quantiles_and_max_equal_the_histograms_own(bus):
    reg, pub, sub = bus
    pump(pub, sub, [("lat.x", b"q" * 64)] * 2000)
    smp = samples(reg.render().decode())
    name = [n for k, n, _ in reg.objects() if k == "subscriber"][0]
    h = sub._latency
    for q in QUANTILES:
        got = value(smp, "pybus_end_to_end_latency_quantiles_seconds", name=name, quantile=repr(q))
        assert got == pytest.approx(h.percentile(q * 100) * 1e-9, rel=1e-12)
    assert value(smp, "pybus_end_to_end_latency_max_seconds", name=name) == pytest.approx(
        h.max * 1e-9, rel=1e-12)
    assert value(smp, "pybus_end_to_end_latency_quantiles_seconds_count", name=name) == 2000


class Timed:
    """A user object with its own HDR histogram, read through a registered adapter."""

    def __init__(self, values_ns: list[int]) -> None:
        self.h = pybus.Histogram(1, 10**11, 3)
        for v in values_ns:
            self.h.record(v)


class TimedAdapter:
    kind = "timed"

    def samples(self, obj):
        yield "pybus_handler_latency_seconds", {}, metrics.HdrValue(obj.h, 1e-9)

    def readiness(self, obj):
        return True, ""


metrics.register_adapter(f"{__name__}.Timed", TimedAdapter())


def test_histogram_buckets_are_cumulative_counts_from_the_hdr_data():
    # values far from every le bound, so each bucket's count is unambiguous
    vals = [1_700, 3_300, 3_400, 70_000, 700_000, 700_000, 2_600_000, 40_000_000, 4_000_000_000]
    reg = metrics.Registry(process=False)
    t = Timed(vals)
    reg.register(t, name="t")
    smp = samples(reg.render().decode())
    for le in LATENCY_BUCKETS_SECONDS:
        want = sum(1 for v in vals if v * 1e-9 <= le)
        assert value(smp, "pybus_handler_latency_seconds_bucket", name="t", le=repr(le)) == want
    assert value(smp, "pybus_handler_latency_seconds_bucket", name="t", le="+Inf") == len(vals)
    assert value(smp, "pybus_handler_latency_seconds_count", name="t") == len(vals)
    assert value(smp, "pybus_handler_latency_seconds_sum", name="t") == pytest.approx(
        sum(vals) * 1e-9, rel=1e-3)
    # an empty histogram: NaN quantiles, zero counts, no error
    empty = Timed([])  # registration is weak: keep a reference
    reg.register(empty, name="empty")
    smp = samples(reg.render().decode())
    assert math.isnan(value(smp, "pybus_handler_latency_quantiles_seconds", name="empty",
                            quantile="0.5"))
    assert value(smp, "pybus_handler_latency_seconds_count", name="empty") == 0


def test_topic_cap_folds_into_other_and_counts(bus):
    reg, pub, sub = bus
    reg.max_topics = 5
    items = [(f"cap.t{i:02d}", b"c") for i in range(12) for _ in range(10)]
    pump(pub, sub, items)
    smp = samples(reg.render().decode())
    pname = [n for k, n, _ in reg.objects() if k == "publisher"][0]
    pub_topics = {dict(k[1])["topic"]: v for k, v in smp.items()
                  if k[0] == "pybus_messages_published_total"}
    assert len(pub_topics) == 6 and pub_topics["other"] == 70
    assert sum(pub_topics.values()) == 120
    recv_topics = {dict(k[1])["topic"] for k in smp if k[0] == "pybus_messages_received_total"}
    assert recv_topics == set(pub_topics)  # the same five admitted topics for every object
    assert value(smp, "pybus_topics_folded_total") == 7
    # a second scrape keeps the same series and does not count the same topics again
    pump(pub, sub, [("cap.t11", b"d")] * 5)
    smp2 = samples(reg.render().decode())
    assert value(smp2, "pybus_topics_folded_total") == 7
    assert value(smp2, "pybus_messages_published_total", name=pname, topic="other") == 75


def test_object_cap_and_unique_names():
    reg = metrics.Registry(max_objects_per_kind=2, process=False)
    breakers = [pybus.CircuitBreaker(1, name="cb", registry=reg) for _ in range(4)]
    names = sorted(n for _, n, _ in reg.objects())
    assert names == ["cb", "cb-2", "cb-3", "cb-4"]
    for b in breakers[2:]:
        b.record_failure()
    smp = samples(reg.render().decode())
    states = {(dict(k[1])["name"], dict(k[1])["state"]): v for k, v in smp.items()
              if k[0] == "pybus_circuit_breaker_state"}
    assert {n for n, _ in states} == {"cb", "cb-2", "other"}
    assert states[("other", "open")] == 2  # the folded breakers' samples are summed


def test_registration_is_weak_and_default_registry_is_used():
    reg = metrics.Registry(process=False)
    cb = pybus.CircuitBreaker(1, registry=reg)
    assert [k for k, _, _ in reg.objects()] == ["circuit_breaker"]
    del cb
    gc.collect()
    assert reg.objects() == []
    rp = pybus.RetryPolicy.fixed(0.1)
    assert any(o is rp for _, _, o in metrics.default_registry.objects())
    rp2 = pybus.RetryPolicy.fixed(0.1, registry=False)
    assert not any(o is rp2 for _, _, o in metrics.default_registry.objects())
    # explicit registration: idempotent, named, and undone by unregister
    assert metrics.register(rp2, reg, name="api-retries") == "api-retries"
    assert reg.register(rp2) == "api-retries"
    assert [n for _, n, _ in reg.objects()] == ["api-retries"]
    reg.unregister(rp2)
    assert reg.objects() == []
    reg.unregister(rp2)  # not registered: no error
    with pytest.raises(pybus.ValidationError, match="registry must be"):
        pybus.RetryPolicy.fixed(0.1, registry="yes")


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(pybus.ValidationError, match="no adapter"):
        metrics.Registry().register(object())
    with pytest.raises(pybus.ValidationError, match="max_topics"):
        metrics.Registry(max_topics=0)
    with pytest.raises(pybus.ValidationError, match="non-empty str"):
        metrics.Registry().register(pybus.RetryPolicy.fixed(0.1, registry=False), name="")
    with pytest.raises(ValueError, match="format"):
        metrics.Registry().render("json")


def test_readiness_reflects_closed_publisher_and_open_breaker(bus):
    reg, pub, sub = bus
    ok, items = reg.readiness()
    assert ok and {i["kind"] for i in items} == {"publisher", "subscriber"}
    cb = pybus.CircuitBreaker(1, name="upstream", reset_timeout_s=60, registry=reg)
    cb.record_failure()
    ok, items = reg.readiness()
    assert not ok
    bad = [i for i in items if not i["ready"]]
    assert bad[0]["name"] == "upstream" and "open" in bad[0]["reason"]
    cb.reset()
    assert reg.readiness()[0]
    pub.close(linger_ms=0)
    ok, items = reg.readiness()
    assert not ok and [i["reason"] for i in items if not i["ready"]] == ["publisher is closed"]


def test_a_failing_adapter_is_counted_and_the_scrape_survives():
    class Broken:
        pass

    class BrokenAdapter:
        kind = "broken"

        def samples(self, obj):
            raise OSError("stats unavailable")

        def readiness(self, obj):
            return True, ""

    metrics.register_adapter(f"{__name__}.{Broken.__qualname__}", BrokenAdapter())
    reg = metrics.Registry(process=False)
    b = Broken()
    reg.register(b)
    reg.render()
    smp = samples(reg.render().decode())
    assert value(smp, "pybus_metrics_collect_errors_total", kind="broken") == 2


def test_snapshot_and_json(bus):
    reg, pub, sub = bus
    pump(pub, sub, [("snap.a", b"s")] * 10)
    snap = metrics.snapshot(reg)
    fam = snap["metrics"]["pybus_messages_received_total"]
    assert fam["type"] == "counter"
    assert [s["value"] for s in fam["samples"] if s["labels"]["topic"] == "snap.a"] == [10]
    data = json.loads(metrics.snapshot_json(reg))  # strict JSON: NaN becomes a string
    q = data["metrics"]["pybus_handler_latency_quantiles_seconds"]
    assert q["samples"] == []
    assert data["metrics"]["pybus_messages_received_total"] == json.loads(json.dumps(fam))


def test_prometheus_client_collector(bus):
    reg, pub, sub = bus
    pump(pub, sub, [("coll.a", b"c" * 64)] * 50)
    from prometheus_client import ProcessCollector

    preg = CollectorRegistry()
    ProcessCollector(registry=preg)  # its process_* names must not clash with ours
    preg.register(metrics.collector(reg))
    text = generate_latest(preg).decode()
    smp = samples(text)
    sname = [n for k, n, _ in reg.objects() if k == "subscriber"][0]
    assert value(smp, "pybus_messages_received_total", name=sname, topic="coll.a") == 50
    assert value(smp, "pybus_end_to_end_latency_seconds_count", name=sname) == 50
    assert value(smp, "pybus_end_to_end_latency_quantiles_seconds_count", name=sname) == 50
    with pytest.raises(ValueError, match="Duplicated"):
        preg.register(metrics.PybusCollector(reg))


DASH = ROOT / "docs" / "grafana-dashboard.json"


def test_dashboard_references_only_exported_names():
    dash = json.loads(DASH.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][1]["query"]["query"])
    used = {m for e in exprs for m in re.findall(r"\bpybus_[a-z0-9_]+", e)}
    exported = metrics.exported_sample_names()
    assert used and used <= exported, sorted(used - exported)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "drops", "gaps", "latency", "dead-letter", "breaker"):
        assert topic in titles


def test_operations_guide_references_only_exported_names():
    text = (ROOT / "docs" / "operations.md").read_text()
    used = set(re.findall(r"\bpybus_[a-z0-9_]+", text))
    assert used and used <= metrics.exported_sample_names(), sorted(
        used - metrics.exported_sample_names())


def test_metrics_reference_doc_is_generated_from_the_table():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert doc == markdown(), "docs/metrics.md is stale: python -m pybus.metrics --markdown"
    for d in FAMILIES:
        assert f"`{d.name}`" in doc


def test_an_object_dying_while_the_registry_lock_is_held_does_not_deadlock():
    # A weakref callback runs wherever the object dies: inside any allocation (a garbage
    # collection) or reference drop, including ones made while this thread holds the registry's
    # lock in register() or collect(). The callback must not take that lock.
    import threading

    reg = metrics.Registry(process=False)
    box = [pybus.CircuitBreaker(1, name="dying", registry=reg)]

    def die_under_lock() -> None:
        with reg._lock:
            box.clear()  # the last reference: the weakref callback runs right here

    t = threading.Thread(target=die_under_lock, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the weakref callback deadlocked on the registry lock"
    assert reg.objects() == []
    assert reg._names == set()
    # the name is free again
    keep = pybus.CircuitBreaker(1, name="dying", registry=reg)
    assert [n for _, n, _ in reg.objects()] == ["dying"] and keep


def test_scrapes_stay_valid_while_the_bus_is_busy(bus):
    # The subscriber records latencies from its own thread while scrapes read the histograms:
    # every scrape must still be valid OpenMetrics (buckets non-decreasing, +Inf == _count).
    import threading

    reg, pub, sub = bus
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        try:
            while not stop.is_set():
                for i in range(200):
                    pub.publish(f"busy.t{i % 3}", b"b" * 64)
                pub.flush()
                sub.recv_batch(10_000, timeout=0.05)
        except BaseException as exc:  # reported below
            errors.append(exc)

    import sys

    t = threading.Thread(target=traffic, daemon=True)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: make the race likely
    t.start()
    try:
        for _ in range(40):
            fams = {f.name: f for f in parse_om(reg.render("openmetrics").decode())}
            h = fams["pybus_end_to_end_latency_seconds"]
            buckets = [s.value for s in h.samples if s.name.endswith("_bucket")]
            assert buckets == sorted(buckets)
    finally:
        sys.setswitchinterval(old_switch)
        stop.set()
        t.join(10)
    assert not errors
    assert sum(sub.stats()["received_by_topic"].values()) > 0
