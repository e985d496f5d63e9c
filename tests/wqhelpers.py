"""Helpers for the work-queue tests: an independent wire codec written from
docs/wire-workqueue.md (not from pybus.wire.workqueue), and bounded polling."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


# ---- frames, per docs/wire-workqueue.md -------------------------------------------------

def hello(credit: int) -> bytes:
    return bytes([1, ord("H")]) + struct.pack("<I", credit)


def heartbeat() -> bytes:
    return bytes([1, ord("B")])


def bye() -> bytes:
    return bytes([1, ord("D")])


def ack(ids: list[int], dups: list[int] = ()) -> bytes:  # type: ignore[assignment]
    return (bytes([1, ord("A")]) + struct.pack("<II", len(ids), len(dups))
            + b"".join(struct.pack("<Q", i) for i in ids)
            + b"".join(struct.pack("<Q", i) for i in dups))


def nack(entries: list[tuple[int, str, str, int, bool]]) -> bytes:
    return bytes([1, ord("N")]) + msgpack.packb([list(e) for e in entries])


def decode_ack(frame: bytes) -> tuple[list[int], list[int]]:
    assert frame[0] == 1 and frame[1] == ord("A"), frame[:2]
    n, d = struct.unpack_from("<II", frame, 2)
    assert len(frame) == 10 + 8 * (n + d)
    ids = [struct.unpack_from("<Q", frame, 10 + 8 * i)[0] for i in range(n + d)]
    return ids[:n], ids[n:]


def decode_nack(frame: bytes) -> list[list[Any]]:
    assert frame[0] == 1 and frame[1] == ord("N"), frame[:2]
    out: list[list[Any]] = msgpack.unpackb(frame[2:])
    return out


def decode_welcome(frame: bytes) -> tuple[int, int, int]:
    assert frame[0] == 1 and frame[1] == ord("W") and len(frame) == 14, frame
    return struct.unpack_from("<III", frame, 2)  # type: ignore[return-value]


def dispatch(entries: list[tuple[int, int, str, bytes, int, bytes | None, int]]) -> bytes:
    return bytes([1, ord("M")]) + msgpack.packb([list(e) for e in entries])


def decode_dispatch(frame: bytes) -> list[list[Any]]:
    assert frame[0] == 1 and frame[1] == ord("M"), frame[:2]
    out: list[list[Any]] = msgpack.unpackb(frame[2:])
    for e in out:
        assert len(e) == 7
    return out


def command(frame: bytes) -> str:
    assert frame[0] == 1
    return chr(frame[1])


def recv_until(sock: Any, cmd: str, timeout: float = 20.0) -> bytes:
    """The next frame of command ``cmd`` (others, heartbeats say, are skipped); each receive
    has the socket's RCVTIMEO, and the whole wait is bounded too."""
    deadline = time.monotonic() + timeout
    while True:
        f: bytes = sock.recv()
        if command(f) == cmd:
            return f
        assert time.monotonic() < deadline, f"no {cmd!r} frame within {timeout}s"


def fake_worker(ctx: Any, endpoint: str, credit: int, rcvtimeo_s: float = 5.0) -> Any:
    """A DEALER that says HELLO to the queue at ``endpoint`` and has its WELCOME: a worker
    whose every frame the test writes by hand."""
    import zmq

    s = ctx.socket(zmq.DEALER)
    s.linger, s.rcvtimeo = 0, int(rcvtimeo_s * 1000)
    s.connect(endpoint)
    s.send(hello(credit))
    recv_until(s, "W")
    return s


def take(sock: Any, n: int, timeout: float = 30.0) -> list[list[Any]]:
    """At least ``n`` DISPATCH entries, from as many frames as it takes."""
    got: list[list[Any]] = []
    while len(got) < n:
        got += decode_dispatch(recv_until(sock, "M", timeout))
    return got
