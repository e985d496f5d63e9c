"""Helpers of the recorder and replay tests: a foreign publisher whose sequence numbers the test
chooses (to cause counted loss exactly), and nats-py's own view of a stream (an oracle that does
not go through pybus's replay)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq

import pybus
from pybus.pubsub._base import HELLO_PREFIX


class RawPublisher:
    """An XPUB that sends hand-made batch frames: a stream of one publisher_id whose sequence
    numbers skip where the test says (the subscriber then counts those messages lost)."""

    def __init__(self, publisher_id: int = 0x5EED) -> None:
        self.publisher_id = publisher_id
        self.sock = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def wait_for_subscriber(self, timeout: float = 10.0) -> None:
        """Until a pybus subscriber's hello subscription arrived (its topics came before)."""
        deadline = time.monotonic() + timeout
        self.sock.setsockopt(zmq.RCVTIMEO, 200)
        while time.monotonic() < deadline:
            try:
                if self.sock.recv()[1:].startswith(HELLO_PREFIX):
                    return
            except zmq.Again:
                continue
        raise AssertionError("no subscriber reached the raw publisher")

    def send(self, topic: str, first_seq: int, payloads: list[bytes]) -> None:
        frame = pybus.wire.encode_frame(
            self.publisher_id, first_seq, [(p, None, 0, time.time_ns()) for p in payloads])
        self.sock.send_multipart([topic.encode(), frame])

    def close(self) -> None:
        self.sock.close(linger=0)


async def _stream_info(url: str, stream: str) -> Any:
    import nats

    nc = await nats.connect(url)
    try:
        return await nc.jetstream().stream_info(stream, subjects_filter=">")
    finally:
        await nc.close()


def stream_info(url: str, stream: str) -> Any:
    """nats-py's StreamInfo of ``stream`` (state.messages, state.subjects, config)."""
    return asyncio.run(_stream_info(url, stream))


async def _raw_messages(url: str, stream: str) -> list[tuple[int, str, bytes, dict[str, str]]]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg(stream, seq)
            out.append((seq, m.subject, m.data or b"", dict(m.headers or {})))
        return out
    finally:
        await nc.close()


def raw_messages(url: str, stream: str) -> list[tuple[int, str, bytes, dict[str, str]]]:
    """Every stored message as (stream seq, subject, data, NATS headers), read one by one with
    the JetStream get-message API (no consumer, no pybus code)."""
    return asyncio.run(_raw_messages(url, stream))
