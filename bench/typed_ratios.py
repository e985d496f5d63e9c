"""Typed messages through pybus vs bare msgpack-python on the same dict, side by side in one
run (issue 13's bar: pybus publish + receive of typed dict-like messages <= 1.2x of bare
``msgpack.packb`` + ``msgpack.unpackb``).

Cases, ns per message (median [min - max] of REPS repetitions of N messages):

- ``bare msgpack``: ``unpackb(packb(d))`` of the dict, nothing else (the peer);
- ``pybus dict``: ``publish(topic, d)`` then the subscriber's ``recv_batch`` and ``.payload``
  (msgpack-python both ways, as untyped pybus code does);
- ``pybus Struct``: ``publish(topic, struct)`` (msgspec encode) then ``recv_batch`` and the
  typed decoder on ``raw_payload`` (what a subscriber declaring the type does);
- ``pybus dataclass``: the same with a dataclass.

Publisher and subscriber share one thread over ``inproc://`` (best effort, so no window
waits): publish a slice, read it back, repeat. Usage:

    python bench/typed_ratios.py [--n 100000] [--reps 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time
import uuid

import msgpack
import msgspec

import pybus
from pybus.wire.typed import decoder_for

D = {"id": 7, "item": "pen", "qty": 3, "price": 1.25, "tags": ["a", "b"]}
SLICE = 1000


class OrderStruct(msgspec.Struct):
    id: int
    item: str
    qty: int
    price: float
    tags: list[str]


@dataclasses.dataclass
class OrderData:
    id: int
    item: str
    qty: int
    price: float
    tags: list[str]


def bare(n: int) -> float:
    packb, unpackb = msgpack.packb, msgpack.unpackb
    t0 = time.perf_counter_ns()
    for _ in range(n):
        unpackb(packb(D))
    return (time.perf_counter_ns() - t0) / n


def through_pybus(n: int, value: object, decode) -> float:  # type: ignore[no-untyped-def]
    ep = f"inproc://typed-{uuid.uuid4().hex}"
    with pybus.Subscriber(ep, topics=["orders.#"], bind=True, registry=False) as sub, \
            pybus.Publisher(ep, connect=True, delivery="best_effort", registry=False,
                            window_bytes=64 << 20) as pub:
        pub.wait_for_subscribers(1, timeout=10)
        publish, recv = pub.publish, sub.recv_batch
        got = 0
        t0 = time.perf_counter_ns()
        while got < n:
            for _ in range(SLICE):
                publish("orders.created", value)
            pub.flush(timeout=10)
            want = got + SLICE
            while got < want:
                for m in recv(SLICE, timeout=10):
                    decode(m)
                    got += 1
        return (time.perf_counter_ns() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    s_dec, d_dec = decoder_for(OrderStruct), decoder_for(OrderData)
    cases = {
        "bare msgpack": lambda: bare(a.n),
        "pybus dict": lambda: through_pybus(a.n, D, lambda m: m.payload),
        "pybus Struct": lambda: through_pybus(a.n, OrderStruct(**D),
                                              lambda m: s_dec(m.raw_payload)),
        "pybus dataclass": lambda: through_pybus(a.n, OrderData(**D),
                                                 lambda m: d_dec(m.raw_payload)),
    }
    results: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.reps):  # interleaved, so drift in machine speed hits every case alike
        for name, run in cases.items():
            gc.collect()
            results[name].append(run())
    base = statistics.median(results["bare msgpack"])
    print(f"{'case':<18}{'ns/msg median':>14}  [min - max]      ratio to bare msgpack")
    for name, xs in results.items():
        med = statistics.median(xs)
        print(f"{name:<18}{med:>14.0f}  [{min(xs):.0f} - {max(xs):.0f}]   {med / base:.2f}x")


if __name__ == "__main__":
    main()
