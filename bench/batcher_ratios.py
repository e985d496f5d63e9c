"""Batcher and frame codec vs the equivalent pure Python, side by side in one run.

Prints, per case, ns per record and M records/s (median, min, max of REPS repetitions) and the
ratio pybus / pure Python of the medians. Usage:

    .venv/bin/python bench/batcher_ratios.py [--n 200000] [--reps 5]

The pure-Python peer is what a careful Python programmer would write: a bytearray with
``struct.pack_into`` length prefixes for appending, ``struct.unpack_from`` plus slicing for
decoding (the "py batch" variant of docs ANCHOR-NUMBERS section 1).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import time

import msgpack

from pybus.wire import Batcher, decode_batch, decode_payloads

PAYLOAD = b"x" * 64
TOPIC = "orders.created"


# ---------------------------------------------------------------------------------------------
# Pure-Python peers


class PyBatcher:
    """u32 length-prefixed records in a preallocated bytearray, per-topic seq counters."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray(capacity)
        self.off = 0
        self.pack_into = struct.Struct("<I").pack_into

    def append(self, payload: bytes) -> int:
        n = len(payload)
        off = self.off
        self.pack_into(self.buf, off, n)
        self.buf[off + 4 : off + 4 + n] = payload
        self.off = off + 4 + n
        return 0

    def frame(self) -> bytes:
        out = bytes(self.buf[: self.off])
        self.off = 0
        return out


def py_decode_payloads(frame: bytes) -> list[bytes]:
    unpack_from = struct.unpack_from
    out = []
    append = out.append
    off = 0
    end = len(frame)
    while off < end:
        (n,) = unpack_from("<I", frame, off)
        off += 4
        append(frame[off : off + n])
        off += n
    return out


class PyMessage:
    __slots__ = ("topic", "seq", "payload")

    def __init__(self, topic: str, seq: int, payload: bytes) -> None:
        self.topic = topic
        self.seq = seq
        self.payload = payload


def py_decode_batch(topic: str, frame: bytes, first_seq: int = 1) -> list[PyMessage]:
    unpack_from = struct.unpack_from
    out = []
    append = out.append
    off = 0
    end = len(frame)
    seq = first_seq
    while off < end:
        (n,) = unpack_from("<I", frame, off)
        off += 4
        append(PyMessage(topic, seq, frame[off : off + n]))
        off += n
        seq += 1
    return out


# ---------------------------------------------------------------------------------------------
# Cases: each returns elapsed ns for n records


def bench_append_pybus(n: int) -> int:
    b = Batcher(
        capacity_bytes=max(n * 104, 1 << 20),
        max_batch_records=1 << 20,
        max_batch_bytes=1 << 30,
        idle_us=1e9,
        max_delay_us=1e9,
    )
    tid = b.topic_id(TOPIC.encode())
    append = b.append
    p = PAYLOAD
    t0 = time.perf_counter_ns()
    for _ in range(n):
        append(tid, p)
    return time.perf_counter_ns() - t0


def bench_append_py(n: int) -> int:
    # inlined (no method call): the fastest honest pure-Python equivalent
    buf = bytearray(n * 70)
    pack_into = struct.Struct("<I").pack_into
    p = PAYLOAD
    off = 0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        k = len(p)
        pack_into(buf, off, k)
        buf[off + 4 : off + 4 + k] = p
        off += 4 + k
    return time.perf_counter_ns() - t0


def bench_publish_pybus(n: int) -> int:
    b = Batcher(
        capacity_bytes=max(n * 104, 1 << 20),
        max_batch_records=1 << 20,
        max_batch_bytes=1 << 30,
        idle_us=1e9,
        max_delay_us=1e9,
    )
    publish = b.publish
    publish(TOPIC, PAYLOAD)  # register the topic; the loop measures the cached path
    p = PAYLOAD
    t = TOPIC
    t0 = time.perf_counter_ns()
    for _ in range(n):
        publish(t, p)
    return time.perf_counter_ns() - t0


def bench_publish_py(n: int) -> int:
    # inlined: per-topic sequence counter (dict) + length-prefixed append
    buf = bytearray(n * 70)
    pack_into = struct.Struct("<I").pack_into
    seqs = {TOPIC: 0}
    p = PAYLOAD
    t = TOPIC
    off = 0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        seqs[t] += 1
        k = len(p)
        pack_into(buf, off, k)
        buf[off + 4 : off + 4 + k] = p
        off += 4 + k
    return time.perf_counter_ns() - t0


DICT = {"id": 12345, "name": "widget", "qty": 3, "price": 9.99}


def bench_publish_dict_pybus(n: int) -> int:
    b = Batcher(
        capacity_bytes=max(n * 112, 1 << 20),
        max_batch_records=1 << 20,
        max_batch_bytes=1 << 30,
        idle_us=1e9,
        max_delay_us=1e9,
    )
    publish = b.publish
    publish(TOPIC, DICT)
    d = DICT
    t = TOPIC
    t0 = time.perf_counter_ns()
    for _ in range(n):
        publish(t, d)
    return time.perf_counter_ns() - t0


def bench_publish_dict_py(n: int) -> int:
    # msgpack with a reused Packer (the fastest way to pack one dict) + length-prefixed append
    buf = bytearray(n * 80)
    pack_into = struct.Struct("<I").pack_into
    pack = msgpack.Packer().pack
    seqs = {TOPIC: 0}
    d = DICT
    t = TOPIC
    off = 0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        seqs[t] += 1
        p = pack(d)
        k = len(p)
        pack_into(buf, off, k)
        buf[off + 4 : off + 4 + k] = p
        off += 4 + k
    return time.perf_counter_ns() - t0


def bench_sender_pybus(n: int) -> int:
    """publish + drain, drained every FRAME_RECORDS messages: the sender's whole cost."""
    b = Batcher(capacity_bytes=1 << 22, idle_us=1e9, max_delay_us=1e9)
    publish = b.publish
    drain = b.drain
    publish(TOPIC, PAYLOAD)
    drain()
    p = PAYLOAD
    t = TOPIC
    k = FRAME_RECORDS
    t0 = time.perf_counter_ns()
    for start in range(0, n, k):
        for _ in range(min(k, n - start)):
            publish(t, p)
        drain()
    return time.perf_counter_ns() - t0


def bench_sender_py(n: int) -> int:
    buf = bytearray((FRAME_RECORDS + 1) * 70)
    pack_into = struct.Struct("<I").pack_into
    seqs = {TOPIC: 0}
    p = PAYLOAD
    t = TOPIC
    k = FRAME_RECORDS
    t0 = time.perf_counter_ns()
    for start in range(0, n, k):
        off = 0
        for _ in range(min(k, n - start)):
            seqs[t] += 1
            ln = len(p)
            pack_into(buf, off, ln)
            buf[off + 4 : off + 4 + ln] = p
            off += 4 + ln
        bytes(buf[:off])
    return time.perf_counter_ns() - t0


FRAME_RECORDS = 8192  # the Batcher's default max_batch_records


def _pybus_frames(n: int) -> list[bytes]:
    b = Batcher(capacity_bytes=max(n * 104, 1 << 20), idle_us=1e9, max_delay_us=1e9)
    tid = b.topic_id(TOPIC.encode())
    for _ in range(n):
        b.append(tid, PAYLOAD)
    return [f for _, f in b.drain()]


def _py_frames(n: int) -> list[bytes]:
    frames = []
    for start in range(0, n, FRAME_RECORDS):
        b = PyBatcher((FRAME_RECORDS + 1) * 70)
        for _ in range(min(FRAME_RECORDS, n - start)):
            b.append(PAYLOAD)
        frames.append(b.frame())
    return frames


def timed_decode(frames: list[bytes], fn) -> int:
    t0 = time.perf_counter_ns()
    for f in frames:
        fn(f)
    return time.perf_counter_ns() - t0


def run(name: str, fn, n: int, reps: int) -> list[float]:
    fn(max(n // 10, 1000))  # warm-up
    out = []
    for _ in range(reps):
        gc.collect()
        out.append(fn(n) / n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="records per repetition")
    ap.add_argument("--reps", type=int, default=5, help="repetitions")
    args = ap.parse_args()
    n, reps = args.n, args.reps

    pb_frames = _pybus_frames(n)
    py_frames = _py_frames(n)
    cases = [
        ("append 64 B", lambda k: bench_append_pybus(k), lambda k: bench_append_py(k)),
        ("publish 64 B", lambda k: bench_publish_pybus(k), lambda k: bench_publish_py(k)),
        (
            "publish dict (msgpack)",
            lambda k: bench_publish_dict_pybus(k),
            lambda k: bench_publish_dict_py(k),
        ),
        ("publish+drain (sender)", lambda k: bench_sender_pybus(k), lambda k: bench_sender_py(k)),
        (
            "decode_payloads",
            lambda k: timed_decode(pb_frames, decode_payloads),
            lambda k: timed_decode(py_frames, py_decode_payloads),
        ),
        (
            "decode_batch -> Message",
            lambda k: timed_decode(pb_frames, lambda f: decode_batch(TOPIC, f)),
            lambda k: timed_decode(py_frames, lambda f: py_decode_batch(TOPIC, f)),
        ),
    ]
    print(
        f"n={n} records per repetition, {reps} repetitions; ns/record median [min..max], "
        "M records/s at the median"
    )
    print(
        f"{'case':26} {'pybus ns/rec':>26} {'Mrec/s':>7}   {'pure Python ns/rec':>26} "
        f"{'Mrec/s':>7}  {'speedup':>7}"
    )
    for name, pb, py in cases:
        # interleave the two sides so machine noise hits both alike
        a = run(name, pb, n, reps)
        b = run(name, py, n, reps)
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"{name:26} {ma:8.1f} [{min(a):6.1f}..{max(a):6.1f}] {1e3 / ma:7.2f}   "
            f"{mb:8.1f} [{min(b):6.1f}..{max(b):6.1f}] {1e3 / mb:7.2f}  {mb / ma:6.2f}x"
        )


if __name__ == "__main__":
    main()
