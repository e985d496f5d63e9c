"""Real nats-server processes for the JetStream tests: one node, or a three-node cluster, on
free loopback ports, JetStream on, file storage in a temp dir. No mock stands in for them.

CI installs Debian's nats-server and sets PYBUS_REQUIRE_NATS=1: there a missing server fails
the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

NATS_SERVER = shutil.which("nats-server")
READY_TIMEOUT_S = 30.0


def require_nats_server() -> str:
    """The nats-server binary, or skip (fail under PYBUS_REQUIRE_NATS=1) without one."""
    if NATS_SERVER is None:
        if os.environ.get("PYBUS_REQUIRE_NATS") == "1":
            pytest.fail("nats-server is not installed (apt-get install nats-server)",
                        pytrace=False)
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    return NATS_SERVER


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel just handed out on 127.0.0.1 (all held until the last
    is chosen, so they differ; a race with another process is possible but rare)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class NatsServer:
    """One nats-server process. Ports and the store dir are fixed at creation, so
    :meth:`restart` brings back the same server with the same data."""

    def __init__(self, store_dir: Path, name: str = "n1", *, cluster_port: int | None = None,
                 routes: list[int] | None = None, cluster_name: str = "pybus-test",
                 ports: tuple[int, int] | None = None) -> None:
        self.binary = require_nats_server()
        self.name = name
        # (client, monitor): a cluster picks every node's ports at once, so that they differ
        self.port, self.http_port = ports if ports is not None else free_ports(2)
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.store_dir = store_dir / name
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = store_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        argv = [self.binary, "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.http_port), "-js", "-sd", str(self.store_dir),
                "--server_name", self.name, "-l", str(self.log_path)]
        if self.cluster_port is not None:
            argv += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--cluster_name", self.cluster_name]
            if self.routes:
                argv += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return argv

    def start(self, wait: bool = True) -> NatsServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def healthz(self) -> bool:
        """The server's own answer: JetStream enabled and, in a cluster, current with a meta
        leader (``/healthz`` is what nats-server's operators probe)."""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/healthz", timeout=1.0) as r:
                return json.loads(r.read()).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def jsz(self) -> dict:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/jsz?streams=true", timeout=2.0) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}; "
                                   f"log:\n{self._log_tail()}")
            if self.healthz():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} not ready in {timeout_s} s; "
                           f"log:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or peers, as a crashed host would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.proc.wait(10)
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


class NatsCluster:
    """Three nodes routed to each other (a full mesh by gossip), JetStream on each."""

    #: starts tried when a node finds one of its ports taken by another process meanwhile
    START_ATTEMPTS = 3

    def __init__(self, store_dir: Path, size: int = 3) -> None:
        self.store_dir = store_dir
        self.size = size
        self.nodes = self._make_nodes(store_dir / "a1")

    def _make_nodes(self, store_dir: Path) -> list[NatsServer]:
        # every port of every node from one call: distinct, though released before the
        # servers bind them (another process may still take one: see start)
        ports = free_ports(3 * self.size)
        cluster_ports = ports[2 * self.size:]
        return [
            NatsServer(store_dir, f"n{i + 1}", cluster_port=cluster_ports[i],
                       routes=[p for j, p in enumerate(cluster_ports) if j != i],
                       ports=(ports[2 * i], ports[2 * i + 1]))
            for i in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> NatsCluster:
        for attempt in range(1, self.START_ATTEMPTS + 1):
            for n in self.nodes:
                n.start(wait=False)
            try:
                for n in self.nodes:
                    n.wait_ready()
                return self
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == self.START_ATTEMPTS:
                    raise
            # a port was taken between choosing and binding it: new ports, fresh stores
            self.stop()
            self.nodes = self._make_nodes(self.store_dir / f"a{attempt + 1}")
        raise AssertionError("unreachable")

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def stream_placement(self, stream: str) -> tuple[str, list[str]]:
        """(leader, followers) of ``stream``, by server name, as a live node's /jsz reports
        them (the node to SIGKILL in a leader-failure test)."""
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            for account in n.jsz().get("account_details", []):
                for s in account.get("stream_detail", []):
                    if s["name"] == stream and s.get("cluster", {}).get("leader"):
                        c = s["cluster"]
                        # a node lists the other peers (the leader among them), not itself
                        peers = {n.name, *(r["name"] for r in c.get("replicas", []))}
                        return c["leader"], sorted(peers - {c["leader"]})
        raise LookupError(f"no live node reports a leader for stream {stream!r}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def _fixture_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A fresh one-node server (file storage) for one test."""
    server = NatsServer(_fixture_dir(tmp_path_factory, "nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A three-node cluster shared by a module's tests (a test that kills a node restarts it)."""
    cluster = NatsCluster(_fixture_dir(tmp_path_factory, "nats-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
