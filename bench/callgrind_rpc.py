"""Instructions per RPC round trip (valgrind callgrind): pybus vs raw pyzmq echo, per side.

Wall-clock latency on a shared 2-core machine is noisy; instruction counts are not.
Each side (client, server) of each pair (raw pyzmq DEALER/ROUTER echo, pybus
Client/Server) runs under callgrind twice, with ``--small`` and ``--large`` timed
round trips, while the other side runs natively in a second process; the
difference of the two totals divided by the difference in round trips is that
side's cost per request (start-up and import costs cancel out). The measured
processes run with PYTHONHASHSEED=0: with random hash seeds the start-up costs
(imports, compiling) differ from run to run by ~1-2 M instructions, which would
not cancel (up to ~1k instructions per request of noise).

Only the main thread is counted (``--separate-threads=yes``, its ``-01`` dump): it is
where both clients call and where both servers (pybus's with its default inline
handlers) serve. Background threads do work in proportion to *time*, not requests:
pybus's hub thread wakes every 50 ms, ZeroMQ's I/O threads send heartbeats, and under
valgrind a run lasts tens of seconds whose length varies; summed into the process total,
that work did not cancel between the two runs and gave per-request figures off by
thousands of instructions, even negative ones. ZeroMQ's own I/O thread is left out on
both sides alike, so "extra" is what pybus adds in the caller's thread.

Run:  .venv/bin/python bench/callgrind_rpc.py [--small 200] [--large 2200]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_rpc  # noqa: E402

PAYLOAD = b"x" * 64


def _client(kind: str, endpoint: str, n: int) -> None:
    (bench_rpc.run_raw if kind == "raw" else bench_rpc.run_pybus)(endpoint, PAYLOAD, n, 10)


def _server(kind: str, endpoint: str, n: int) -> None:
    """Serve exactly the driver's requests, then return (so callgrind's totals end)."""
    driver = [sys.executable, os.path.abspath(__file__), "--role", "drive", kind, endpoint, str(n)]
    if kind == "raw":
        import zmq

        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(endpoint)
        p = subprocess.Popen(driver)
        recv, send, more = s.recv, s.send, zmq.SNDMORE
        for _ in range(n + 10):
            ident = recv()
            msg = recv()
            send(ident, more)
            send(msg)
        p.wait(60)
        s.close(0)
        ctx.term()
        return
    import pybus

    srv = pybus.Server(endpoint)
    srv.add_handler("echo", lambda p: p)
    p = subprocess.Popen(driver)

    def stop_when_done() -> None:
        p.wait(60)
        srv.stop()

    threading.Thread(target=stop_when_done, daemon=True).start()
    srv.serve_forever()


def _measured(side: str, kind: str, n: int, tmp: str) -> int:
    endpoint = f"ipc://{tmp}/{side}-{kind}-{n}.ipc"
    out_file = f"{tmp}/cg-{side}-{kind}-{n}"
    env = dict(os.environ, PYTHONHASHSEED="0")
    server = None
    if side == "client":
        server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "bench_rpc.py"), "--serve", kind, endpoint],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert server.stdout is not None
        # an editable install may print its rebuild first: wait for the line itself
        for line in server.stdout:
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError(f"the {kind} server exited before it was ready")
    try:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out_file}",
                sys.executable,
                os.path.abspath(__file__),
                "--role",
                side,
                kind,
                endpoint,
                str(n),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            env=env,
        )
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
    return _main_thread_total(f"{out_file}-01")


def _main_thread_total(path: str) -> int:
    """The instruction total of one thread's callgrind dump (its ``totals:`` line)."""
    with open(path) as f:
        text = f.read()
    m = re.search(r"^(?:totals|summary): (\d+)", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no instruction total in {path}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=2200)
    ap.add_argument("--side", choices=("client", "server", "both"), default="both",
                    help="which side to measure (default both)")
    ap.add_argument("--keep", metavar="DIR",
                    help="keep the callgrind dumps in DIR (for callgrind_annotate)")
    ap.add_argument(
        "--role", nargs=4, metavar=("ROLE", "KIND", "ENDPOINT", "N"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.role:
        role, kind, endpoint, n = args.role
        if role == "server":
            _server(kind, endpoint, int(n))
        else:  # "client" (measured) or "drive" (the native peer of a measured server)
            _client(kind, endpoint, int(n))
        return
    if not 1 <= args.small < args.large <= 100_000:
        ap.error("need 1 <= --small < --large <= 100000")
    print(
        f"# instructions per 64-B round trip over ipc (callgrind, N={args.small} vs {args.large})"
    )
    sides = ("client", "server") if args.side == "both" else (args.side,)
    with tempfile.TemporaryDirectory(prefix="pybus-cg-rpc-") as scratch:
        tmp = args.keep or scratch
        for side in sides:
            per = {}
            for kind in ("raw", "pybus"):
                a = _measured(side, kind, args.small, tmp)
                b = _measured(side, kind, args.large, tmp)
                per[kind] = (b - a) / (args.large - args.small)
            print(
                f"{side:6s}  raw {per['raw']:8.0f}  pybus {per['pybus']:8.0f}  "
                f"extra {per['pybus'] - per['raw']:8.0f}  ratio {per['pybus'] / per['raw']:.2f}x"
            )


if __name__ == "__main__":
    main()
