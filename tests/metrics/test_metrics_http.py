"""pybus.metrics.serve: /metrics (prometheus_client's exposition and negotiation), /healthz,
/readyz, lifecycle."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

import pybus
from pybus import metrics
from pybus.metrics import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT


def get(url: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def served():
    reg = metrics.Registry()
    ep = f"inproc://http-{uuid.uuid4().hex}"
    pub = pybus.Publisher(ep, registry=reg)
    sub = pybus.Subscriber(ep, ["#"], registry=reg)
    pub.wait_for_subscribers(1, timeout=5.0)
    for i in range(500):
        pub.publish(f"web.{i % 4}", b"p" * 64)
    pub.flush()
    got = 0
    while got < 500:
        b = sub.recv_batch(1000, timeout=5.0)
        assert b
        got += len(b)
    srv = metrics.serve(0, registry=reg)
    yield srv, reg, pub, sub
    srv.stop()
    sub.close()
    pub.close(linger_ms=0)


def test_metrics_text_by_default(served):
    srv, reg, pub, sub = served
    assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}"
    status, headers, body = get(srv.url + "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_TEXT
    fams = {f.name: f for f in parse_text(body.decode())}
    pubs = [s for s in fams["pybus_messages_published"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in pubs) == 500


def test_metrics_openmetrics_when_asked(served):
    srv, *_ = served
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    status, headers, body = get(srv.url + "/metrics", {"Accept": accept})
    # prometheus_client names the escaping it used when the scraper gave a version
    assert status == 200 and headers["Content-Type"].startswith(CONTENT_TYPE_OPENMETRICS)
    text = body.decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in parse_om(text)}
    assert "pybus_messages_received" in names


def test_metrics_gzip_when_accepted(served):
    srv, *_ = served
    status, headers, body = get(srv.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert b"pybus_messages_received_total" in gzip.decompress(body)


def test_healthz_and_readyz(served):
    srv, reg, pub, sub = served
    status, headers, body = get(srv.url + "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    h = json.loads(body)
    assert h["status"] == "ok" and h["version"] == pybus.__version__
    status, _, body = get(srv.url + "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    pub.close(linger_ms=0)
    status, _, body = get(srv.url + "/readyz")
    r = json.loads(body)
    assert status == 503 and r["status"] == "not ready"
    assert [o["reason"] for o in r["objects"] if not o["ready"]] == ["publisher is closed"]


def test_readyz_open_breaker_is_503():
    reg = metrics.Registry(process=False)
    cb = pybus.CircuitBreaker(1, name="payments", registry=reg)
    with metrics.serve(0, registry=reg) as srv:
        assert get(srv.url + "/readyz")[0] == 200
        cb.record_failure()
        status, _, body = get(srv.url + "/readyz")
        assert status == 503
        assert json.loads(body)["objects"][0]["name"] == "payments"


def test_unknown_path_and_head(served):
    srv, *_ = served
    status, _, body = get(srv.url + "/nope")
    assert status == 404 and "/metrics" in json.loads(body)["error"]
    req = urllib.request.Request(srv.url + "/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and r.read() == b"" and int(r.headers["Content-Length"]) > 0


def test_stop_closes_the_port():
    srv = metrics.serve(0, registry=metrics.Registry(process=False))
    port = srv.port
    assert get(srv.url + "/healthz")[0] == 200
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
def test_serve_ipv6_loopback():
    try:
        srv = metrics.serve(0, addr="::1", registry=metrics.Registry(process=False))
    except pybus.TransportError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    with srv:
        assert srv.url == f"http://[::1]:{srv.port}"
        assert get(srv.url + "/healthz")[0] == 200


def test_serve_bad_port_and_port_in_use():
    with pytest.raises(pybus.ValidationError, match="port must be"):
        metrics.serve(70000)
    with pytest.raises(pybus.ValidationError, match="port must be"):
        metrics.serve("9464")  # type: ignore[arg-type]
    with metrics.serve(0, registry=metrics.Registry(process=False)) as srv:
        with pytest.raises(pybus.TransportError, match="cannot serve metrics"):
            metrics.serve(srv.port)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, "text"),
        ("", "text"),
        ("text/plain", "text"),
        ("text/plain;version=0.0.4", "text"),
        ("application/openmetrics-text", "openmetrics"),
        ("application/openmetrics-text;version=1.0.0,text/plain;q=0.5", "openmetrics"),
        ("application/json", "text"),
    ],
)
def test_metrics_format_follows_accept(accept, fmt):
    reg = metrics.Registry(process=False)
    cb = pybus.CircuitBreaker(1, name="neg", registry=reg)  # noqa: F841 - registered weakly
    with metrics.serve(0, registry=reg) as srv:
        status, headers, body = get(srv.url + "/metrics", {"Accept": accept} if accept else None)
    assert status == 200
    text = body.decode()
    if fmt == "openmetrics":
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert text.endswith("# EOF\n")
        fams = {f.name: f for f in parse_om(text)}
    else:
        assert headers["Content-Type"].startswith("text/plain") and "# EOF" not in text
        fams = {f.name: f for f in parse_text(text)}
    [s] = [s for s in fams["pybus_circuit_breaker_state"].samples if s.labels["state"] == "closed"]
    assert s.value == 1 and s.labels["name"] == "neg"


def test_metrics_collect_failure_is_a_500_and_serving_goes_on(monkeypatch):
    reg = metrics.Registry(process=False)
    with metrics.serve(0, registry=reg) as srv:
        monkeypatch.setattr(reg, "collect", lambda: 1 / 0)
        status, headers, body = get(srv.url + "/metrics")
        assert status == 500 and "ZeroDivisionError" in json.loads(body)["error"]
        monkeypatch.undo()
        assert get(srv.url + "/metrics")[0] == 200
        assert get(srv.url + "/healthz")[0] == 200
