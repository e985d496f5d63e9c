"""``pybus proxy`` security options, end to end through the command (docs/security.md, "Proxy";
``pybus/cli/security.py``): ``--secret`` with ``--allow KEY|FILE|DIR`` secures both sides with
one allowlist, ``--frontend-allow`` / ``--backend-allow`` give each side its own, and
``--capture`` publishes a copy of the forwarded traffic.

The proxy runs as a subprocess (``python -c 'from pybus.cli import main; ...' proxy``) bound to
``tcp://127.0.0.1:*``; its endpoints are read back from the line it prints on stderr. Keys and
key files come from ``zmq.auth.create_certificates`` (ZeroMQ's own, not pybus's), and the
checks that something was refused use raw pyzmq sockets where they can.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain as _drain  # noqa: E402

pytestmark = pytest.mark.timeout(90)

_LINE = re.compile(r"pybus proxy: publishers -> (\S+)  subscribers -> (\S+)"
                   r"(?:  capture -> (\S+))?")


class Keys:
    """Certificates made by zmq.auth in tmp_path: server (secret 0600), pub, sub, other."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "keys"
        self.dir.mkdir()
        self.files: dict[str, tuple[Path, Path]] = {}
        self.pairs: dict[str, tuple[bytes, bytes]] = {}
        for name in ("server", "pub", "sub", "other"):
            public_file, secret_file = zmq.auth.create_certificates(str(self.dir), name)
            os.chmod(secret_file, 0o600)
            self.files[name] = (Path(public_file), Path(secret_file))
            self.pairs[name] = zmq.auth.load_certificate(secret_file)  # type: ignore[assignment]
        # per-role allow directories holding only public key files
        for role in ("pub", "sub"):
            d = root / f"allow-{role}"
            d.mkdir()
            (d / f"{role}.key").write_bytes(self.files[role][0].read_bytes())

    @property
    def server_public(self) -> bytes:
        return self.pairs["server"][0]

    @property
    def secret_file(self) -> str:
        return str(self.files["server"][1])

    def client(self, name: str) -> Curve:
        return Curve.client(self.pairs[name][1], self.server_public)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


class CliProxy:
    def __init__(self, proc: subprocess.Popen[str], frontend: str, backend: str,
                 capture: str | None, lines: queue.Queue[str]) -> None:
        self.proc = proc
        self.frontend = frontend
        self.backend = backend
        self.capture = capture
        self._lines = lines
        self.final: dict[str, Any] | None = None
        self.stderr = ""


@contextmanager
def cli_proxy(tmp_path: Path, *args: str) -> Iterator[CliProxy]:
    """Run ``pybus proxy --frontend/--backend tcp://127.0.0.1:* ARGS --json``; on exit stop it
    with SIGTERM and parse its final statistics into ``.final``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pybus.cli import main; raise SystemExit(main())", "proxy",
         "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
         "--duration", "60", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()
    err: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    px: CliProxy | None = None
    try:
        deadline = time.monotonic() + 20
        while px is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise AssertionError(f"pybus proxy did not start: rc={proc.poll()} "
                                     f"stderr={''.join(err)!r}")
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            m = _LINE.search(line)
            if m:
                px = CliProxy(proc, m.group(1), m.group(2), m.group(3), lines)
        yield px
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
        reader.join(5)
        if px is not None:
            px.stderr = "".join(err)
            # the dev venv's editable install may print build lines on stdout: take the JSON
            js = [ln for ln in out.splitlines() if ln.startswith("{")]
            px.final = json.loads(js[-1]) if js else None
    assert proc.returncode == 0, "".join(err)


def _raw_sub(endpoint: str, curve: tuple[bytes, bytes, bytes] | None) -> zmq.Socket:
    """A raw SUB to every topic; ``curve``: (server public, client public, client secret)."""
    s: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    s.linger = 0
    if curve is not None:
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = curve
    s.subscribe(b"")
    s.connect(endpoint)
    return s


def _recv_any(sock: zmq.Socket, timeout: float) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(max(1, int(remaining * 1000))):
            return out
        out.append(sock.recv_multipart())


def _never_sees_a_subscriber(pub: pybus.Publisher, timeout: float) -> None:
    """A refused publisher's connection never carries the subscriptions behind the proxy."""
    with pytest.raises(pybus.TimeoutError, match="0 of 1 subscribers"):
        pub.wait_for_subscribers(1, timeout=timeout)


def _data_topics(frames: list[list[bytes]]) -> set[bytes]:
    """Topics of data frames (pybus's control topics, hellos and positions, start 0xff)."""
    return {f[0] for f in frames if not f[0].startswith(b"\xff")}


def _publish(pub: pybus.Publisher, topic: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        pub.publish(topic, i)
    pub.flush()


def test_secret_and_allow_admit_listed_keys_on_both_sides_only(
    tmp_path: Path, keys: Keys
) -> None:
    # --allow takes a directory, a key file and a Z85 key; repeatable
    with cli_proxy(tmp_path, "--secret", keys.secret_file,
                   "--allow", str(tmp_path / "allow-pub"),
                   "--allow", str(keys.files["sub"][0]),
                   "--allow", keys.pairs["sub"][0].decode()) as px:
        pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("pub"),
                              registry=False)
        rogue_pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("other"),
                                    registry=False)
        plain_pub = pybus.Publisher(px.frontend, connect=True, registry=False)
        sub = pybus.Subscriber(px.backend, topics=["sec.#"], security=keys.client("sub"),
                               registry=False)
        srv = keys.server_public
        raw_ok = _raw_sub(px.backend, (srv, *keys.pairs["pub"]))  # pub key: allowed too
        raw_other = _raw_sub(px.backend, (srv, *keys.pairs["other"]))
        raw_plain = _raw_sub(px.backend, None)
        try:
            assert pub.wait_for_subscribers(1, timeout=10) == 1
            # refused publishers never see the subscriber behind the proxy
            _never_sees_a_subscriber(rogue_pub, 1.0)
            _never_sees_a_subscriber(plain_pub, 0.5)
            _publish(rogue_pub, "sec.rogue", 50)
            _publish(plain_pub, "sec.plain", 50)
            _publish(pub, "sec.ok", 100)
            got = _drain(sub, 100)
            assert [m.payload for m in got] == list(range(100))
            assert {m.publisher_id for m in got} == {pub.publisher_id}
            assert sub.recv_batch(1000, timeout=0.3) == []
            # the raw SUB with an allowed key gets the frames; the others get nothing
            ok_frames = _recv_any(raw_ok, 1.0)
            assert _data_topics(ok_frames) == {b"sec.ok"}
            assert _recv_any(raw_other, 0.3) == []
            assert _recv_any(raw_plain, 0.2) == []
        finally:
            for s in (raw_ok, raw_other, raw_plain):
                s.close(0)
            sub.close()
            for p in (pub, rogue_pub, plain_pub):
                p.close(linger_ms=0)
    assert px.final is not None
    front, back = px.final["auth"]  # frontend's Curve, then the backend's
    assert front["rejected_by_reason"].get("not_allowed", 0) >= 1  # rogue_pub
    assert keys.pairs["other"][0].decode() in front["rejected_keys"]
    assert front["rejected_by_reason"].get("handshake", 0) >= 1  # plain_pub
    assert back["rejected_by_reason"].get("not_allowed", 0) >= 1  # raw_other
    assert back["rejected_by_reason"].get("handshake", 0) >= 1  # raw_plain
    assert front["accepted"] >= 1 and back["accepted"] >= 2
    assert px.final["frontend"]["messages_in"] >= 2


def _keypair_starting_with_dash() -> tuple[bytes, bytes]:
    """One Z85 public key in 85 starts with '-', which argparse would take for an option."""
    for _ in range(5000):
        public, secret = zmq.curve_keypair()
        if public.startswith(b"-"):
            return public, secret
    raise AssertionError("no key starting with '-' in 5000 tries")


def test_allow_takes_a_key_that_starts_with_a_dash(tmp_path: Path, keys: Keys) -> None:
    public, secret = _keypair_starting_with_dash()
    client = Curve.client(secret, keys.server_public)
    # the key as its own argument, as a user pastes it (not --allow=KEY)
    with cli_proxy(tmp_path, "--secret", keys.secret_file, "--allow", public.decode()) as px:
        pub = pybus.Publisher(px.frontend, connect=True, security=client, registry=False)
        sub = pybus.Subscriber(px.backend, topics=["dash.#"], security=client, registry=False)
        try:
            assert pub.wait_for_subscribers(1, timeout=10) == 1
            _publish(pub, "dash.x", 20)
            assert [m.payload for m in _drain(sub, 20)] == list(range(20))
        finally:
            sub.close()
            pub.close(linger_ms=0)
    assert px.final is not None
    assert [side["accepted"] >= 1 for side in px.final["auth"]] == [True, True]


def test_frontend_allow_and_backend_allow_restrict_each_side(tmp_path: Path, keys: Keys) -> None:
    with cli_proxy(tmp_path, "--secret", keys.secret_file,
                   "--frontend-allow", str(keys.files["pub"][0]),
                   "--backend-allow", str(tmp_path / "allow-sub")) as px:
        pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("pub"),
                              registry=False)
        # the subscriber's key is allowed on the backend only: it may not publish
        sub_as_pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("sub"),
                                     registry=False)
        sub = pybus.Subscriber(px.backend, topics=["side.#"], security=keys.client("sub"),
                               registry=False)
        srv = keys.server_public
        # the publisher's key is allowed on the frontend only: it may not subscribe
        raw_pub_as_sub = _raw_sub(px.backend, (srv, *keys.pairs["pub"]))
        raw_sub = _raw_sub(px.backend, (srv, *keys.pairs["sub"]))
        try:
            assert pub.wait_for_subscribers(1, timeout=10) == 1
            _never_sees_a_subscriber(sub_as_pub, 1.0)
            _publish(sub_as_pub, "side.bad", 50)
            _publish(pub, "side.ok", 100)
            got = _drain(sub, 100)
            assert [m.payload for m in got] == list(range(100))
            assert {m.publisher_id for m in got} == {pub.publisher_id}
            assert sub.recv_batch(1000, timeout=0.3) == []
            raw_ok = _recv_any(raw_sub, 1.0)
            assert _data_topics(raw_ok) == {b"side.ok"}
            assert _recv_any(raw_pub_as_sub, 0.3) == []
        finally:
            raw_pub_as_sub.close(0)
            raw_sub.close(0)
            sub.close()
            pub.close(linger_ms=0)
            sub_as_pub.close(linger_ms=0)
    assert px.final is not None
    front, back = px.final["auth"]
    assert keys.pairs["sub"][0].decode() in front["rejected_keys"]
    assert keys.pairs["pub"][0].decode() not in front["rejected_keys"]
    assert keys.pairs["pub"][0].decode() in back["rejected_keys"]
    assert keys.pairs["sub"][0].decode() not in back["rejected_keys"]


def test_frontend_secret_only_leaves_the_backend_plaintext(tmp_path: Path, keys: Keys) -> None:
    with cli_proxy(tmp_path, "--frontend-secret", keys.secret_file,
                   "--frontend-allow", keys.pairs["pub"][0].decode()) as px:
        pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("pub"),
                              registry=False)
        plain_pub = pybus.Publisher(px.frontend, connect=True, registry=False)
        sub = pybus.Subscriber(px.backend, topics=["fo.#"], registry=False)  # plaintext
        try:
            assert pub.wait_for_subscribers(1, timeout=10) == 1
            _never_sees_a_subscriber(plain_pub, 1.0)
            _publish(plain_pub, "fo.bad", 20)
            _publish(pub, "fo.ok", 20)
            got = _drain(sub, 20)
            assert [(m.topic, m.payload) for m in got] == [("fo.ok", i) for i in range(20)]
            assert sub.recv_batch(100, timeout=0.3) == []
        finally:
            sub.close()
            pub.close(linger_ms=0)
            plain_pub.close(linger_ms=0)
    assert px.final is not None
    assert len(px.final["auth"]) == 1  # only the frontend is secured
    assert px.final["auth"][0]["rejected_by_reason"].get("handshake", 0) >= 1


def test_capture_gets_a_copy_of_the_forwarded_traffic_only(tmp_path: Path, keys: Keys) -> None:
    with cli_proxy(tmp_path, "--secret", keys.secret_file, "--allow",
                   str(tmp_path / "allow-pub"), "--allow", str(tmp_path / "allow-sub"),
                   "--capture", "tcp://127.0.0.1:*") as px:
        assert px.capture and px.capture.startswith("tcp://127.0.0.1:")
        tap = _raw_sub(px.capture, None)  # the tap is a plain PUB on the proxy's host
        pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("pub"),
                              registry=False)
        rogue_pub = pybus.Publisher(px.frontend, connect=True, security=keys.client("other"),
                                    registry=False)
        sub = pybus.Subscriber(px.backend, topics=["cap.#"], security=keys.client("sub"),
                               registry=False)
        try:
            assert pub.wait_for_subscribers(1, timeout=10) == 1
            _publish(rogue_pub, "cap.rogue", 20)
            # the tap's own join is asynchronous: publish until it sees a copy (bounded)
            seen: list[list[bytes]] = []
            sent = 0
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                _publish(pub, "cap.ok", 1, sent)
                sent += 1
                seen += _recv_any(tap, 0.05)
            assert seen, "the capture endpoint received nothing"
            _publish(pub, "cap.ok", 50, sent)
            sent += 50
            got = _drain(sub, sent)
            assert [m.payload for m in got] == list(range(sent))
            seen += _recv_any(tap, 0.5)
            data = [f for f in seen if len(f) == 2 and f[0].startswith(b"cap.")]
            assert data and {f[0] for f in data} == {b"cap.ok"}  # never the refused one's
            # the copies are the forwarded frames: they decode to what the subscriber got
            copied: list[int] = []
            for topic, frame in data:
                pid, _first, _count, _ts = pybus.wire.frame_info(frame)
                assert pid == pub.publisher_id
                copied += [m.payload for m in pybus.wire.decode_batch(topic.decode(), frame)]
            assert copied == sorted(copied) and copied[-1] == sent - 1
            assert set(copied) <= set(range(sent))
        finally:
            tap.close(0)
            sub.close()
            pub.close(linger_ms=0)
            rogue_pub.close(linger_ms=0)


def test_bad_security_options_exit_2_with_one_line(tmp_path: Path, keys: Keys) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from pybus.cli import main; raise SystemExit(main())",
             "proxy", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
             "--duration", "0", *args],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )

    # a secret key without an allowlist
    r = run("--secret", keys.secret_file)
    assert r.returncode == 2 and "allow" in r.stderr and "Traceback" not in r.stderr
    # an allowlist without a secret key
    r = run("--frontend-allow", keys.pairs["pub"][0].decode())
    assert r.returncode == 2 and "--frontend-secret" in r.stderr
    # a secret key file readable by others is refused (docs/security.md: must be 0600)
    os.chmod(keys.secret_file, 0o644)
    r = run("--secret", keys.secret_file, "--allow", "any")
    assert r.returncode == 2 and "0600" in r.stderr and "Traceback" not in r.stderr
