"""One-way latency of hand-written batching over raw pyzmq at a paced rate: the floor that
pybus's "p99 at 50 % of max rate" is compared with.

The sender paces like ``bench_pubsub.py``'s latency runs (message i is due at t0 + i / rate;
what is due is sent at once, late messages in one burst; 50-us naps between), and packs
everything due into one length-prefixed frame (at most 800 messages, about pybus's 64 KiB
frame) sent with one pyzmq ``send``; no topics, sequence numbers or flusher. The receiver (a
second process, SUB over ipc) unpacks every frame and records, for every 100th message, the
time from its intended send time (coordinated omission corrected) in an HDR histogram.

Run:  python bench/latency_floor.py [--rates 1000000,2700000] [--reps 3] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import struct
import tempfile
import time
from typing import Any

import zmq

import pybus

_now = time.perf_counter_ns
_STAMP = struct.Struct("<q")
_LEN = struct.Struct("<I")
_SIZE = 64
_PER_FRAME = 800
_STAMP_EVERY = 100
_NAP_S = 50e-6


def _receiver(ep: str, n: int, conn: Any) -> None:
    hist = pybus.Histogram(1, 60_000_000_000, 3)
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.bind(ep)
    conn.send("ready")
    got = 0
    try:
        while got < n:
            frame = s.recv()
            t = _now()
            off = 0
            while off < len(frame):
                (length,) = _LEN.unpack_from(frame, off)
                off += 4
                if got % _STAMP_EVERY == 0:
                    hist.record(max(1, t - _STAMP.unpack_from(frame, off)[0]))
                off += length
                got += 1
    except zmq.Again:
        pass
    s.close(0)
    ctx.term()
    conn.send((got, hist.encode()))


def run(rate: float, seconds: float) -> dict[str, float]:
    n = int(rate * seconds)
    with tempfile.TemporaryDirectory(prefix="pybus-floor-") as tmp:
        ep = f"ipc://{tmp}/floor"
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_receiver, args=(ep, n, child), daemon=True)
        proc.start()
        zctx = zmq.Context()
        try:
            if not parent.poll(30) or parent.recv() != "ready":
                raise RuntimeError("receiver did not start")
            s = zctx.socket(zmq.XPUB)  # XPUB: the subscription message is the handshake
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.LINGER, 5000)
            s.connect(ep)
            if not s.poll(10_000):
                raise RuntimeError("the subscriber never subscribed")
            s.recv()
            pad = b"\0" * (_SIZE - _STAMP.size)
            head = _LEN.pack(_SIZE)
            interval = 1e9 / rate
            t0 = _now() + 1_000_000
            i = 0
            while i < n:
                due = min(n, math.floor((_now() - t0) / interval) + 1)
                if due <= i:
                    time.sleep(_NAP_S)
                    continue
                while i < due:
                    k = min(due, i + _PER_FRAME)
                    parts = []
                    for j in range(i, k):
                        parts.append(head)
                        parts.append(_STAMP.pack(int(t0 + j * interval)) + pad)
                    s.send(b"".join(parts))
                    i = k
            if not parent.poll(60):
                raise RuntimeError("receiver did not report")
            got, encoded = parent.recv()
            s.close()
        finally:
            zctx.term()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    h = pybus.Histogram.decode(encoded)
    return {"received": got, "sent": n, **{f"p{p:g}": h.percentile(p) / 1e3
                                           for p in (50.0, 99.0, 99.9)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="1000000,2700000", help="comma-separated msg/s")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if not all(1 <= r <= 50e6 for r in rates) or not 1 <= args.reps <= 20:
        ap.error("rates must be 1..5e7 msg/s and --reps 1..20")
    print(f"hand-written batching over raw pyzmq, ipc, {_SIZE}-B messages, paced; "
          f"latency from intended send times, us (median of {args.reps} [min..max])")
    for rate in rates:
        runs = [run(rate, args.seconds) for _ in range(args.reps)]
        cells = []
        for key in ("p50", "p99", "p99.9"):
            vals = [r[key] for r in runs]
            cells.append(f"{key} {statistics.median(vals):.0f} [{min(vals):.0f}..{max(vals):.0f}]")
        whole = all(r["received"] == r["sent"] for r in runs)
        print(f"  {rate / 1e6:.2f}M msg/s  " + "  ".join(cells) + ("" if whole else "  INCOMPLETE"))


if __name__ == "__main__":
    main()
