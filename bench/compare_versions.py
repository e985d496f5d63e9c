"""Two installs of pybus side by side: pub/sub, RPC and work-queue figures, same run.

For a change that must not cost speed (the restructure of issue 12: "within 5 % of the commit
before"), give this script the Python of each install. Every workload is a fresh process of
that Python, run through the public API only (the same snippet for both versions); the two
versions alternate within each repetition so that the machine's drift falls on both. The
table shows the median of the repetitions with [min - max] and the ratio new/old of the
medians (for a latency, old/new: above 1 means the new version is better in both cases).

Workloads (all over ipc://, one process, 64-byte payloads):

pubsub_msgs_per_s
    a default (reliable) Publisher bursts N messages to a Subscriber(topics=["#"]) read by a
    thread; messages per second from the first publish to the last message received.
rpc_p50_us / rpc_p99_us
    Client.request("echo") round trips to a Server in a second process.
workqueue_msgs_per_s
    WorkQueue.put of N messages, one Worker(concurrency=1) acking them; per second until
    join() returns.

Run:  python bench/compare_versions.py --old /tmp/basevenv/bin/python --new .venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

PUBSUB = r"""
import sys, threading, time, uuid, os, pybus
n = int(sys.argv[1]); ep = f"ipc://{sys.argv[2]}/ps-{uuid.uuid4().hex[:8]}"
pub = pybus.Publisher(ep, registry=False)
sub = pybus.Subscriber(ep, ["#"], registry=False)
pub.wait_for_subscribers(1, timeout=10)
got = [0]
def read():
    while got[0] < n:
        got[0] += len(sub.recv_batch(65536, timeout=1.0))
t = threading.Thread(target=read); t.start()
payload = b"x" * 64
t0 = time.perf_counter()
publish = pub.publish
for _ in range(n):
    publish("bench.t", payload)
pub.flush(timeout=60)
t.join(120)
dt = time.perf_counter() - t0
assert got[0] == n, got[0]
pub.close(); sub.close()
print(n / dt)
"""

RPC_SERVER = r"""
import sys, pybus
srv = pybus.Server(sys.argv[1], registry=False)
srv.add_handler("echo", lambda p: p)
srv.start()
print("ready", flush=True)
sys.stdin.read()
srv.close()
"""

RPC = r"""
import sys, subprocess, time, uuid, pybus
n = int(sys.argv[1]); ep = f"ipc://{sys.argv[2]}/rpc-{uuid.uuid4().hex[:8]}"
srv = subprocess.Popen([sys.executable, "-c", sys.argv[3], ep], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
while srv.stdout.readline().strip() != "ready":
    pass
cl = pybus.Client(ep, 10, registry=False)  # positional: the same before and after the rename
payload = b"x" * 64
for _ in range(1000):
    cl.request("echo", payload)
lat = []
pc = time.perf_counter_ns
for _ in range(n):
    t0 = pc(); cl.request("echo", payload); lat.append(pc() - t0)
cl.close(); srv.stdin.close(); srv.wait(10)
lat.sort()
print(lat[len(lat) // 2] / 1e3, lat[int(len(lat) * 0.99)] / 1e3)
"""

WORKQUEUE = r"""
import sys, time, uuid, pybus
n = int(sys.argv[1]); d = sys.argv[2]
tag = uuid.uuid4().hex[:8]
q = pybus.WorkQueue(f"ipc://{d}/wq-{tag}", journal=f"{d}/j-{tag}.db", registry=False)
w = pybus.Worker(q.endpoint, lambda m: None, registry=False).start()
payload = b"x" * 64
t0 = time.perf_counter()
for _ in range(n):
    q.put("bench.t", payload)
assert q.join(120)
dt = time.perf_counter() - t0
w.stop(); q.close()
print(n / dt)
"""


def run(py: str, code: str, tmp: str, *args: str) -> list[float]:
    # run in a scratch directory: from a source tree, `import pybus` would find the unbuilt
    # sources there instead of the install under test
    out = subprocess.run([py, "-c", code, *args], capture_output=True, text=True, timeout=600,
                         check=True, cwd=tmp).stdout
    last = [ln for ln in out.splitlines() if ln.strip() and ln[0].isdigit()][-1]
    return [float(x) for x in last.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="python of the install before the change")
    ap.add_argument("--new", default=sys.executable, help="python of the changed install")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pubsub-n", type=int, default=300_000)
    ap.add_argument("--rpc-n", type=int, default=5_000)
    ap.add_argument("--wq-n", type=int, default=50_000)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    res: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(a.reps):
            for ver in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                py = a.old if ver == "old" else a.new
                r = res[ver]
                r.setdefault("pubsub_msgs_per_s", []).append(
                    run(py, PUBSUB, d, str(a.pubsub_n), d)[0])
                p50, p99 = run(py, RPC, d, str(a.rpc_n), d, RPC_SERVER)
                r.setdefault("rpc_p50_us", []).append(p50)
                r.setdefault("rpc_p99_us", []).append(p99)
                r.setdefault("workqueue_msgs_per_s", []).append(
                    run(py, WORKQUEUE, d, str(a.wq_n), d)[0])
            print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    print(f"{'figure':22} {'old: median [min - max]':>32} {'new: median [min - max]':>32} "
          f"{'new vs old':>10}")
    for k in res["old"]:
        o, n = res["old"][k], res["new"][k]
        mo, mn = statistics.median(o), statistics.median(n)
        better = mo / mn if k.endswith("_us") else mn / mo
        print(f"{k:22} {mo:>12.1f} [{min(o):.1f} - {max(o):.1f}]".ljust(56)
              + f"{mn:>12.1f} [{min(n):.1f} - {max(n):.1f}]".ljust(34) + f"{better:>8.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
