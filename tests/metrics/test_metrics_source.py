"""Each class reports its own metrics (pybus.metrics.MetricsSource): nothing finds it by name.

A registry once recognised twelve classes by dotted-name strings, so renaming or moving one
dropped its metrics without an error. These tests rename every reporting class and check that
its samples are the same, and that an object with no way to report is refused, not ignored.
"""

from __future__ import annotations

import contextlib
import types
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pybus
from pybus import metrics
from pybus.metrics import MetricsSource


def _objects(stack: ExitStack, reg: metrics.Registry, tmp_path) -> list[Any]:
    """One live object of every class that reports, registered in ``reg``."""
    tmp_path.mkdir(exist_ok=True)
    ep = f"inproc://source-{uuid.uuid4().hex}"
    pub = stack.enter_context(pybus.Publisher(ep, registry=reg))
    sub = stack.enter_context(pybus.Subscriber(ep, ["#"], registry=reg))
    srv = pybus.Server("tcp://127.0.0.1:*", registry=reg)
    stack.callback(srv.close)
    cl = pybus.Client(srv.endpoint, registry=reg)
    stack.callback(cl.close)
    q = pybus.WorkQueue("tcp://127.0.0.1:*", journal=tmp_path / "q.db", registry=reg)
    stack.callback(q.close)
    w = pybus.Worker(q.endpoint, lambda m: None, registry=reg)
    stack.callback(w.stop)
    dlq = pybus.DeadLetterQueue(str(tmp_path / "dlq.db"), registry=reg)
    stack.callback(dlq.close)
    px = pybus.Proxy(["tcp://127.0.0.1:*"], ["tcp://127.0.0.1:*"], registry=reg)
    stack.callback(px.close)
    return [pub, sub, srv, cl, q, w, dlq, px,
            pybus.CircuitBreaker(registry=reg), pybus.RateLimiter(10, registry=reg),
            pybus.KeyedRateLimiter(10, registry=reg), pybus.RetryPolicy.fixed(0.0, registry=reg)]


def _series(reg: metrics.Registry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every exported series, less socket peer events: those arrive from the socket monitors
    on their own time (which events a render sees is a race, not a property of the class)."""
    text = reg.render().decode()
    return {(s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name != "pybus_peer_events_total"}


REPORTING = (pybus.Publisher, pybus.Subscriber, pybus.Server, pybus.Client, pybus.WorkQueue,
             pybus.Worker, pybus.DeadLetterQueue, pybus.Proxy, pybus.CircuitBreaker,
             pybus.RateLimiter, pybus.KeyedRateLimiter, pybus.RetryPolicy)


@contextlib.contextmanager
def renamed() -> Iterator[None]:
    """Every pybus class the reporting classes are made of, renamed and moved elsewhere, as a
    refactoring might leave them (compiled bases cannot be renamed; they report nothing)."""
    saved = {c: (c.__module__, c.__qualname__) for cls in REPORTING for c in cls.__mro__
             if c.__module__.startswith("pybus") and isinstance(c.__dict__, types.MappingProxyType)
             and not c.__flags__ & _IMMUTABLE}
    try:
        for c, (_, qual) in saved.items():
            c.__module__, c.__qualname__ = "somewhere.else", "Renamed" + qual.replace(".", "_")
        yield
    finally:
        for c, (mod, qual) in saved.items():
            c.__module__, c.__qualname__ = mod, qual


_IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: a compiled class


def test_every_reporting_class_implements_the_protocol(tmp_path):
    reg = metrics.Registry(process=False)
    with ExitStack() as stack:
        objs = _objects(stack, reg, tmp_path)
        assert all(isinstance(o, MetricsSource) for o in objs)
        assert sorted(k for k, _, _ in reg.objects()) == sorted(o.metrics_kind for o in objs)


def test_renaming_the_classes_keeps_every_series(tmp_path):
    reg = metrics.Registry(process=False)
    with ExitStack() as stack:
        objs = _objects(stack, reg, tmp_path / "a")  # kept: the registry holds them weakly
        before = _series(reg)
    with renamed():
        assert pybus.Publisher.__qualname__ == "RenamedPublisher"
        reg = metrics.Registry(process=False)
        with ExitStack() as stack:
            objs = _objects(stack, reg, tmp_path / "b")
            after = _series(reg)
            assert len(objs) == len(REPORTING)
    assert after == before
    kinds = {dict(labels)["kind"] for name, labels in after if name == "pybus_objects"}
    assert kinds == {"publisher", "subscriber", "rpc_server", "rpc_client", "work_queue",
                     "worker", "dlq", "proxy", "circuit_breaker", "rate_limiter",
                     "retry_policy"}


def test_an_object_that_cannot_report_is_refused_with_what_to_implement():
    class Mine:
        pass

    with pytest.raises(pybus.ValidationError, match="MetricsSource.*metrics_samples"):
        metrics.Registry().register(Mine())


def test_a_third_party_class_reports_by_implementing_the_protocol():
    class Gauge:
        metrics_kind = "custom"

        def metrics_samples(self):
            yield "pybus_queue_depth", {}, 7

        def metrics_readiness(self):
            return False, "warming up"

    reg = metrics.Registry(process=False)
    g = Gauge()
    name = reg.register(g)
    got = {(s.name, s.value) for f in text_string_to_metric_families(reg.render().decode())
           for s in f.samples if s.labels.get("name") == name}
    assert got == {("pybus_queue_depth", 7.0)}
    assert reg.readiness() == (False, [{"kind": "custom", "name": name, "ready": False,
                                        "reason": "warming up"}])
