"""`pybus sub --bind`, `pybus pub --bind`, `pybus pub --wait-subscribers N` and
`pybus dlq replay --bind`: what docs/cli.md and the --help texts promise, over real tcp sockets.

A command that blocks (sub, or pub waiting for its subscribers) runs in process in a thread, its
stdout and stderr sent to thread-safe taps, so the test can read the endpoint it reports
(`pybus CMD: bound tcp://...` when it binds `tcp://HOST:*`) while it runs. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import pybus
from pybus.cli import main

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # generous bound for anything that should happen promptly


class Tap(io.TextIOBase):
    """A text stream several threads write to while the test waits for a pattern in it."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._cond = threading.Condition()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._cond:
            self._parts.append(s)
            self._cond.notify_all()
        return len(s)

    def getvalue(self) -> str:
        with self._cond:
            return "".join(self._parts)

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        with self._cond:
            self._cond.wait_for(lambda: re.search(pattern, "".join(self._parts)), timeout)
            m = re.search(pattern, "".join(self._parts))
        assert m, f"{pattern!r} not written within {timeout} s; got {self.getvalue()!r}"
        return m


@contextlib.contextmanager
def tapped() -> Iterator[tuple[Tap, Tap]]:
    out, err = Tap(), Tap()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


class Cli:
    """``pybus ARGV`` in a thread; ``join()`` returns its exit code."""

    def __init__(self, *argv: str) -> None:
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(list(argv),), daemon=True)
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        self.code = main(argv)

    def join(self, timeout: float = WAIT) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the command still runs after {timeout} s"
        return self.code


def bound_endpoint(err: Tap, command: str) -> str:
    m = err.wait_for(rf"pybus {command}: bound (tcp://127\.0\.0\.1:(\d+))\n")
    assert 0 < int(m.group(2)) < 65536
    return m.group(1)


def no_traceback(*streams: Tap) -> None:
    for s in streams:
        assert "Traceback" not in s.getvalue()


# ------------------------------------------------------------------------------ sub --bind


def test_sub_bind_reports_the_port_and_prints_what_a_connecting_publisher_sends():
    with tapped() as (out, err):
        cli = Cli("sub", "tcp://127.0.0.1:*", "bind.*", "--bind", "--count", "2",
                  "--timeout", str(WAIT))
        pub = None
        try:
            ep = bound_endpoint(err, "sub")
            pub = pybus.Publisher(ep, connect=True, registry=False)  # the sub is the bound side
            assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
            pub.publish("bind.a", b"first")
            pub.publish("elsewhere.a", b"filtered out")
            pub.publish("bind.b", {"k": 1})
            pub.flush(timeout=WAIT)
        finally:
            code = cli.join()  # sub exits once it printed --count messages: all delivered
            if pub is not None:
                pub.close(linger_ms=0)
    no_traceback(out, err)
    assert code == 0
    assert out.getvalue() == 'bind.a #1 first\nbind.b #1 {"k": 1}\n'
    assert err.getvalue() == f"pybus sub: bound {ep}\n"


def test_sub_bind_on_a_taken_port_is_one_line_and_exit_1(capsys):
    holder = pybus.Subscriber("tcp://127.0.0.1:*", ["#"], bind=True, registry=False)
    try:
        code = main(["sub", holder.endpoints[0], "x.*", "--bind", "--timeout", "5"])
    finally:
        holder.close()
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("pybus sub: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_sub_connect_does_not_report_a_bound_endpoint():
    pub = pybus.Publisher("tcp://127.0.0.1:*", registry=False)
    try:
        with tapped() as (out, err):
            cli = Cli("sub", pub.endpoints[0], "c.*", "--count", "1", "--timeout", str(WAIT))
            try:
                assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
                pub.publish("c.x", b"hi")
                pub.flush(timeout=WAIT)
            finally:
                code = cli.join()
    finally:
        pub.close(linger_ms=0)
    assert code == 0 and out.getvalue() == "c.x #1 hi\n" and err.getvalue() == ""


# ------------------------------------------------------------------------------ pub --bind


def test_pub_bind_reports_the_port_and_a_connecting_subscriber_gets_the_message():
    subs: list[pybus.Subscriber] = []
    with tapped() as (out, err):
        cli = Cli("pub", "tcp://127.0.0.1:*", "pb.x", "hello", "--bind", "--timeout", str(WAIT))
        try:
            ep = bound_endpoint(err, "pub")
            subs.append(pybus.Subscriber(ep, ["pb.#"], registry=False))
            got = drain(subs[0], 1, timeout=WAIT)
        finally:
            code = cli.join()
            for s in subs:
                s.close()
    no_traceback(out, err)
    assert code == 0
    assert [(m.topic, m.payload) for m in got] == [("pb.x", b"hello")]
    lines = err.getvalue().splitlines()
    assert lines[0] == f"pybus pub: bound {ep}"
    assert len(lines) == 2 and lines[1].startswith("published 1 message(s) to 'pb.x' on tcp://")


# ------------------------------------------------------------------------------ --wait-subscribers


def test_pub_waits_for_n_subscribers_so_a_late_one_still_gets_the_message():
    subs: list[pybus.Subscriber] = []
    with tapped() as (out, err):
        cli = Cli("pub", "tcp://127.0.0.1:*", "late.x", "hello", "--bind",
                  "--wait-subscribers", "2", "--timeout", str(WAIT))
        try:
            ep = bound_endpoint(err, "pub")
            early = pybus.Subscriber(ep, ["late.#"], registry=False)
            subs.append(early)
            # one subscriber of two: pub must still be waiting, so nothing arrives yet
            assert early.recv_batch(10, timeout=1.0) == []
            assert cli.thread.is_alive()
            late = pybus.Subscriber(ep, ["late.#"], registry=False)
            subs.append(late)
            got_early = drain(early, 1, timeout=WAIT)
            got_late = drain(late, 1, timeout=WAIT)
        finally:
            code = cli.join()
            for s in subs:
                s.close()
    no_traceback(out, err)
    assert code == 0 and "published 1 message(s)" in err.getvalue()
    assert [(m.topic, m.payload) for m in got_early] == [("late.x", b"hello")]
    assert [(m.topic, m.payload) for m in got_late] == [("late.x", b"hello")]


def test_pub_gives_up_when_fewer_than_n_subscribers_come(capsys):
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["few.#"], bind=True, registry=False)
    ep = sub.endpoints[0]
    try:
        code = main(["pub", ep, "few.x", "never sent", "--wait-subscribers", "2",
                     "--timeout", "1"])
        out, err = capsys.readouterr()
        assert code == 1 and out == ""
        assert err == (f"pybus pub: error: fewer than 2 subscriber(s) on {ep} after 1 s; is "
                       "anything listening? (--wait-subscribers 0 sends anyway)\n")
        # the same subscriber is enough for N=1: the first message it sees is that one, so
        # the timed-out pub above sent nothing
        code = main(["pub", ep, "few.x", "sent", "--wait-subscribers", "1",
                     "--timeout", str(WAIT)])
        assert code == 0
        got = drain(sub, 1, timeout=WAIT)
        assert [m.payload for m in got] == [b"sent"]
        assert sub.recv_batch(10, timeout=0.5) == []
    finally:
        sub.close()


def test_pub_wait_subscribers_0_sends_at_once_with_nobody_listening(capsys):
    # a port nobody listens on: free_port's race does not matter here, nothing binds it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["pub", f"tcp://127.0.0.1:{port}", "none.x", "x", "--wait-subscribers", "0",
                 "--timeout", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and "published 1 message(s)" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_pub_wait_subscribers_bad_value_is_a_usage_error(capsys, value):
    code = main(["pub", "tcp://127.0.0.1:5555", "a.b", "x", "--wait-subscribers", value])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "--wait-subscribers" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ dlq replay --bind


def test_dlq_replay_bind_reports_the_port_and_removes_what_it_delivered(tmp_path: Path):
    path = tmp_path / "dlq.db"
    with pybus.DeadLetterQueue(path, registry=False) as q:
        q.add("rb.a", b"one", id="r1")
        q.add("rb.b", {"n": 2}, id="r2")
    subs: list[pybus.Subscriber] = []
    with tapped() as (out, err):
        cli = Cli("dlq", "replay", str(path), "--to", "tcp://127.0.0.1:*", "--bind",
                  "--timeout", str(WAIT))
        try:
            ep = bound_endpoint(err, "dlq replay")
            subs.append(pybus.Subscriber(ep, ["rb.#"], registry=False))
            got = drain(subs[0], 2, timeout=WAIT)
        finally:
            code = cli.join()
            for s in subs:
                s.close()
    no_traceback(out, err)
    assert code == 0 and "replayed 2 entries" in err.getvalue()
    assert [(m.topic, m.payload) for m in got] == [("rb.a", b"one"), ("rb.b", {"n": 2})]
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)
    finally:
        con.close()
