"""The `pybus` command: every sub-command's success and error paths, in process and once as the
installed console script."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import pybus
from pybus import metrics
from pybus.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def free_port() -> int:
    """A port nobody listens on, for the tests that need one to fail against. Never bind it
    later (another process may take it meanwhile): a test that binds binds tcp://127.0.0.1:*
    and reads the endpoint back (``.endpoints``, or the CLI's ``bound ...`` line)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMMANDS = [["version"], ["stat"], ["pub"], ["sub"], ["dlq"], ["dlq", "ls"], ["dlq", "show"],
            ["dlq", "replay"], ["dlq", "purge"], ["bench"], []]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "pybus")
def test_help_everywhere(capsys, cmd):
    code, out, _ = run(capsys, *cmd, "--help")
    assert code == 0 and "usage: pybus" in out


def test_no_command_and_unknown_option_are_usage_errors(capsys):
    assert run(capsys)[0] == 2
    code, _, err = run(capsys, "pub", "--no-such-option")
    assert code == 2 and "required: ENDPOINT, TOPIC" in err
    code, _, err = run(capsys, "version", "--no-such-option")
    assert code == 2 and "unrecognized arguments" in err


def test_version(capsys):
    code, out, _ = run(capsys, "version")
    assert code == 0 and out.startswith(f"pybus {pybus.__version__} (pyzmq ")
    code, out, _ = run(capsys, "version", "--json")
    assert code == 0 and json.loads(out)["pybus"] == pybus.__version__


# ------------------------------------------------------------------------------ pub / sub


def test_pub_reaches_a_bound_subscriber(capsys):
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["cli.*"], bind=True, registry=False)
    ep = sub.endpoints[0]
    try:
        code, _, err = run(capsys, "pub", ep, "cli.text", "hello",
                           "--count", "2", "--timeout", "10")
        assert code == 0 and "published 2 message(s)" in err
        code, _, _ = run(capsys, "pub", ep, "cli.obj", '{"a": [1, 2]}',
                         "--json", "--timeout", "10")
        assert code == 0
        got = []
        while len(got) < 3:
            batch = sub.recv_batch(10, timeout=5.0)
            assert batch, f"got {got}"
            got += batch
        # two publishers, two connections: order holds per publisher, not across them
        assert [(m.topic, m.payload) for m in got if m.topic == "cli.text"] == [
            ("cli.text", b"hello")] * 2
        assert [m.payload for m in got if m.topic == "cli.obj"] == [{"a": [1, 2]}]
    finally:
        sub.close()


def test_pub_reads_stdin_lines(capsys, monkeypatch):
    import io

    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["#"], bind=True, registry=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    try:
        code, _, _ = run(capsys, "pub", sub.endpoints[0], "lines", "-", "--timeout", "10")
        assert code == 0
        got = []
        while len(got) < 2:
            batch = sub.recv_batch(10, timeout=5.0)
            assert batch
            got += batch
        assert [m.payload for m in got] == [b"one", b"two"]
    finally:
        sub.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pub", "localhost:5555", "a.b", "x"], "bad endpoint"),
        (["pub", "tcp://127.0.0.1", "a.b", "x"], "bad endpoint"),
        (["pub", "inproc://x", "a.b", "x"], "inproc"),
        (["pub", "tcp://127.0.0.1:5555", "a..b", "x"], "empty segment"),
        (["pub", "tcp://127.0.0.1:5555", "a.b", "{nope", "--json"], "not valid JSON"),
        (["pub", "tcp://127.0.0.1:5555", "a.b", "x", "--count", "0"], "--count"),
        (["sub", "nonsense", "a.*"], "bad endpoint"),
        (["sub", "tcp://127.0.0.1:5555", "a..*"], "a..*"),
        (["sub", "tcp://127.0.0.1:5555", "a.*", "--timeout", "0"], "--timeout"),
    ],
)
def test_pub_sub_input_errors_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"pybus {argv[0]}: error: ")
    assert message in err


def test_pub_without_subscribers_is_a_runtime_failure(capsys):
    code, _, err = run(capsys, "pub", f"tcp://127.0.0.1:{free_port()}", "a.b", "x",  # nobody
                       "--timeout", "0.3")
    assert code == 1 and "fewer than 1 subscriber" in err


def test_sub_prints_messages(capsys):
    pub = pybus.Publisher("tcp://127.0.0.1:*", registry=False)

    def feed() -> None:
        pub.wait_for_subscribers(1, timeout=10)
        pub.publish("cli.a", b"plain text")
        pub.publish("cli.b", {"k": 1})
        pub.publish("other.c", b"filtered out")
        pub.publish("cli.d", b"\x00\xff")
        pub.flush()

    t = threading.Thread(target=feed)
    t.start()
    try:
        code, out, _ = run(capsys, "sub", pub.endpoints[0], "cli.*", "--json", "--count", "3",
                           "--timeout", "10")
    finally:
        t.join()
        pub.close(linger_ms=0)
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(d["topic"], d["payload"], d["encoding"]) for d in lines] == [
        ("cli.a", "plain text", "utf-8"), ("cli.b", {"k": 1}, "json"), ("cli.d", "00ff", "hex")]
    assert [d["seq"] for d in lines] == [1, 1, 1]


def test_sub_human_output_and_timeout(capsys):
    pub = pybus.Publisher("tcp://127.0.0.1:*", registry=False)

    def feed() -> None:
        pub.wait_for_subscribers(1, timeout=10)
        pub.publish("h.x", b"hi")
        pub.flush()

    t = threading.Thread(target=feed)
    t.start()
    try:
        code, out, err = run(capsys, "sub", pub.endpoints[0], "h.#", "--count", "2",
                             "--timeout", "1.5")
    finally:
        t.join()
        pub.close(linger_ms=0)
    assert out == "h.x #1 hi\n"
    assert code == 1 and "received 1 of 2" in err


# ------------------------------------------------------------------------------ dlq


@pytest.fixture
def dlq_file(tmp_path: Path) -> Path:
    path = tmp_path / "dlq.db"
    with pybus.DeadLetterQueue(path, registry=False) as q:
        q.add("orders.a", b"raw bytes", id="id-1", error=ValueError("bad amount"), attempts=3)
        q.add("orders.b", {"n": 2}, id="id-2", error=KeyError("x"))
        q.add("orders.a", b"\x00\x01", id="id-3")
    return path


def test_dlq_ls_and_show(capsys, dlq_file):
    code, out, _ = run(capsys, "dlq", "ls", str(dlq_file))
    assert code == 0
    rows = out.splitlines()
    assert rows[0].startswith("ID") and len(rows) == 4
    assert "id-1" in rows[1] and "ValueError: bad amount" in rows[1]
    code, out, _ = run(capsys, "dlq", "ls", str(dlq_file), "--topic", "orders.a", "--json")
    assert code == 0 and [json.loads(x)["id"] for x in out.splitlines()] == ["id-1", "id-3"]
    code, out, _ = run(capsys, "dlq", "show", str(dlq_file), "id-2", "--json")
    d = json.loads(out)
    assert code == 0 and d["payload"] == {"n": 2} and d["error_type"] == "KeyError"
    code, out, _ = run(capsys, "dlq", "show", str(dlq_file), "id-3")
    assert code == 0 and "payload_format:  hex" in out and "0001" in out


def test_dlq_errors(capsys, dlq_file, tmp_path):
    code, _, err = run(capsys, "dlq", "ls", str(tmp_path / "missing.db"))
    assert code == 2 and "file not found" in err and not (tmp_path / "missing.db").exists()
    (tmp_path / "text.db").write_text("not a database at all" * 100)
    code, _, err = run(capsys, "dlq", "ls", str(tmp_path / "text.db"))
    assert code == 2 and "not a pybus dead-letter queue" in err
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    code, _, err = run(capsys, "dlq", "show", str(tmp_path / "other.db"), "x")
    assert code == 2 and "without a dead_letters table" in err
    code, _, err = run(capsys, "dlq", "show", str(dlq_file), "nope")
    assert code == 2 and "no entry with id 'nope'" in err
    code, _, err = run(capsys, "dlq", "purge", str(dlq_file))  # stdin is not a terminal
    assert code == 2 and "without --yes" in err
    code, _, err = run(capsys, "dlq", "replay", str(dlq_file), "--to", "bogus")
    assert code == 2 and "bad endpoint" in err
    code, _, err = run(capsys, "dlq", "frobnicate", str(dlq_file))
    assert code == 2 and "invalid choice" in err


def test_dlq_purge(capsys, dlq_file):
    code, _, err = run(capsys, "dlq", "purge", str(dlq_file), "--topic", "orders.a", "--yes")
    assert code == 0 and "deleted 2 entries; 1 left" in err
    with pybus.DeadLetterQueue(dlq_file, registry=False) as q:
        assert [e.id for e in q] == ["id-2"]


def test_dlq_replay_publishes_then_removes(capsys, dlq_file):
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["orders.#"], bind=True, registry=False)
    try:
        code, _, err = run(capsys, "dlq", "replay", str(dlq_file), "--to",
                           sub.endpoints[0], "--topic", "orders.a", "--timeout", "10")
        assert code == 0 and "replayed 2 entries" in err and "1 left" in err
        got = []
        while len(got) < 2:
            batch = sub.recv_batch(10, timeout=5.0)
            assert batch
            got += batch
        assert [(m.topic, m.payload) for m in got] == [("orders.a", b"raw bytes"),
                                                       ("orders.a", b"\x00\x01")]
    finally:
        sub.close()
    with pybus.DeadLetterQueue(dlq_file, registry=False) as q:
        assert [e.id for e in q] == ["id-2"]
    code, _, err = run(capsys, "dlq", "replay", str(dlq_file), "--to",  # nobody listens
                       f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert code == 1 and "nothing was replayed" in err
    with pybus.DeadLetterQueue(dlq_file, registry=False) as q:
        assert [e.id for e in q] == ["id-2"]


# ------------------------------------------------------------------------------ stat


def test_stat_once_against_a_live_endpoint(capsys):
    reg = metrics.Registry()
    ep = "inproc://cli-stat"
    pub = pybus.Publisher(ep, registry=reg)
    sub = pybus.Subscriber(ep, ["#"], registry=reg)
    pub.wait_for_subscribers(1, timeout=5)
    for _ in range(100):
        pub.publish("stat.x", b"s")
    pub.flush()
    got = 0
    while got < 100:
        got += len(sub.recv_batch(1000, timeout=5))
    try:
        with metrics.serve(0, registry=reg) as srv:
            code, out, _ = run(capsys, "stat", f"127.0.0.1:{srv.port}", "--once",
                               "--interval", "0.2")
    finally:
        sub.close()
        pub.close(linger_ms=0)
    assert code == 0
    assert "pybus_messages_published_total" in out and "100" in out
    assert "end_to_end_latency" in out and "p99.9" in out


def test_stat_live_view_refreshes_then_exits(capsys):
    reg = metrics.Registry(process=False)
    cb = pybus.CircuitBreaker(1, name="payments", registry=reg)
    cb.record_failure()
    with metrics.serve(0, registry=reg) as srv:
        code, out, _ = run(capsys, "stat", srv.url, "--count", "2", "--interval", "0.1")
    assert code == 0 and "payments=open" in out


def test_stat_errors(capsys):
    code, _, err = run(capsys, "stat", "ftp://example/metrics", "--once")
    assert code == 2 and "bad URL" in err
    code, _, err = run(capsys, "stat", f"http://127.0.0.1:{free_port()}/metrics",  # nobody
                       "--once")
    assert code == 1 and "cannot scrape" in err
    code, _, err = run(capsys, "stat", "http://127.0.0.1:1/metrics", "--interval", "0")
    assert code == 2 and "--interval" in err
    with metrics.serve(0, registry=metrics.Registry(process=False)) as srv:
        code, _, err = run(capsys, "stat", srv.url + "/nope", "--once")
        assert code == 1 and "HTTP 404" in err
        code, _, err = run(capsys, "stat", srv.url + "/healthz", "--once")  # JSON, not metrics
        assert code == 1 and "did not return Prometheus text" in err


# ------------------------------------------------------------------------------ bench


def test_bench_usage_errors(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, "bench", "--only", "pubsub,nonsense")
    assert code == 2 and "--only" in err
    code, _, err = run(capsys, "bench", "--json", str(tmp_path / "no" / "dir" / "f.json"))
    assert code == 2 and "does not exist" in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, _, err = run(capsys, "bench", "--quick", "--plot", str(tmp_path / "p.png"))
    assert code == 2 and 'pip install "pybus[plot]"' in err


def test_bench_quick_writes_json_hlog_and_png(capsys, tmp_path):
    import importlib.util

    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    j, hl, png = tmp_path / "b.json", tmp_path / "b.hlog", tmp_path / "b.png"
    argv = ["bench", "--quick", "--json", str(j), "--hlog", str(hl)]
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    if has_mpl:  # without matplotlib the plot is skipped here; its error path is tested above
        argv += ["--plot", str(png)]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "pybus" in out and "pubsub" in out and "workqueue" in out
    doc = json.loads(j.read_text())
    assert {r["bench"] for r in doc["results"]} == {"pubsub", "latency", "rpc", "workqueue"}
    lat = next(r for r in doc["results"] if r["bench"] == "latency")
    h = pybus.Histogram.decode(lat["histogram"])
    assert h.total_count == lat["latency_us"]["count"] > 0
    reader = HistogramLogReader(str(hl), HdrHistogram(1, 60 * 10**9, 3))
    total = 0
    while (ih := reader.get_next_interval_histogram()) is not None:
        total += ih.get_total_count()
    assert total == h.total_count  # the intervals add up to the run (hdrh reads our log)
    if has_mpl:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ console script


def test_console_script_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("pybus")
    if not exe.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([str(exe), "dlq", "ls", str(tmp_path / "none.db")], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr == f"pybus dlq ls: error: no dead-letter queue at " \
                       f"'{tmp_path / 'none.db'}': file not found\n"
    p = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=60,
                       env=env)
    assert p.returncode == 0 and p.stdout.startswith("pybus ")
