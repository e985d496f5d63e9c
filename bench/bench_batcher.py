"""pytest-benchmark suite for the Batcher and the frame codec (not collected by `pytest`).

Run: .venv/bin/pytest bench/bench_batcher.py --benchmark-columns=min,median,max
Each benchmark handles RECORDS records per round, so per-record time = round time / RECORDS.
Side-by-side ratios against pure Python are printed by bench/batcher_ratios.py.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from pybus.wire import Batcher, decode_batch, decode_into, decode_payloads

RECORDS = 8192
PAYLOAD = b"x" * 64
TOPIC = "orders.created"


def _batcher() -> Batcher:
    return Batcher(
        capacity_bytes=16 << 20,
        max_batch_records=RECORDS,
        max_batch_bytes=1 << 20,
        idle_us=1e9,
        max_delay_us=1e9,
    )


@pytest.fixture(scope="module")
def frame() -> bytes:
    b = _batcher()
    tid = b.topic_id(TOPIC.encode())
    for _ in range(RECORDS):
        b.append(tid, PAYLOAD)
    ((_, f),) = b.drain()
    return f


@pytest.fixture(scope="module")
def py_frame() -> bytes:
    pack = struct.Struct("<I").pack
    return b"".join(pack(len(PAYLOAD)) + PAYLOAD for _ in range(RECORDS))


def test_append(benchmark):
    b = _batcher()
    tid = b.topic_id(TOPIC.encode())
    append = b.append

    def run():
        for _ in range(RECORDS):
            append(tid, PAYLOAD)
        b.drain()

    benchmark(run)


def test_publish_bytes(benchmark):
    b = _batcher()
    publish = b.publish

    def run():
        for _ in range(RECORDS):
            publish(TOPIC, PAYLOAD)
        b.drain()

    benchmark(run)


def test_publish_msgpack_dict(benchmark):
    b = _batcher()
    publish = b.publish
    obj = {"id": 1, "name": "widget", "qty": 3}

    def run():
        for _ in range(RECORDS):
            publish(TOPIC, obj)
        b.drain()

    benchmark(run)


def test_decode_payloads(benchmark, frame):
    assert len(benchmark(decode_payloads, frame)) == RECORDS


def test_decode_batch(benchmark, frame):
    assert len(benchmark(decode_batch, TOPIC, frame)) == RECORDS


def test_decode_into(benchmark, frame):
    seqs = np.empty(RECORDS, np.int64)
    offs = np.empty(RECORDS, np.int64)
    lens = np.empty(RECORDS, np.int64)
    assert benchmark(decode_into, frame, seqs, offs, lens) == RECORDS


def test_py_unpack_slice(benchmark, py_frame):
    """The pure-Python peer of decode_payloads."""

    def run(f):
        out = []
        off = 0
        unpack_from = struct.unpack_from
        while off < len(f):
            (n,) = unpack_from("<I", f, off)
            out.append(f[off + 4 : off + 4 + n])
            off += 4 + n
        return out

    assert len(benchmark(run, py_frame)) == RECORDS


def test_msgpack_unpack_payloads(benchmark, frame):
    """Reference: msgpack-decoding every payload of a batch (the dict-payload cap)."""
    f = msgpack.packb({"k": 1})
    frames = [f] * RECORDS
    unpackb = msgpack.unpackb

    def run():
        for x in frames:
            unpackb(x)

    benchmark(run)
