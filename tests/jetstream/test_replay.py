"""Replay on a real nats-server: from a sequence, from a time, to the end or live, durable
resume, the asyncio twin. Streams are filled by a real Recorder from a real pybus Publisher."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time

import pytest
from natsserver import NatsServer
from waiting import until

import pybus
import pybus.jetstream as js

pytestmark = pytest.mark.timeout(120)


class Filler:
    """A publisher, and a recorder of its ``f.*`` topics into ``stream``."""

    def __init__(self, url: str, stream: str) -> None:
        self.pub = pybus.Publisher("tcp://127.0.0.1:*")
        self.rec = js.Recorder(url, stream=stream,
                               subscriber=pybus.Subscriber(self.pub.endpoints, topics=["f.*"]))
        self.rec.start()
        self.n = 0
        assert self.pub.wait_for_subscribers(1, timeout=10) == 1

    def publish(self, k: int, topic: str = "f.a") -> None:
        for _ in range(k):
            self.pub.publish(topic, b"%d" % self.n)
            self.n += 1
        self.pub.flush(timeout=60)
        assert until(lambda: self.rec.stats()["stored"] >= self.n, 20), self.rec.stats()

    def close(self) -> None:
        self.rec.stop()
        self.pub.close()


@pytest.fixture
def filler(nats_server: NatsServer):
    f = Filler(nats_server.url, "rp")
    try:
        yield f
    finally:
        f.close()


def _payloads(msgs) -> list[int]:
    return [int(m.payload) for m in msgs]


def test_from_seq_and_to_the_end(nats_server: NatsServer, filler: Filler):
    filler.publish(50)
    assert _payloads(js.replay(nats_server.url, "rp", "f.*", from_seq=1)) == list(range(50))
    got = list(js.replay(nats_server.url, "rp", "f.*", from_seq=41))
    assert [m.seq for m in got] == list(range(41, 51)) and _payloads(got) == list(range(40, 50))
    assert list(js.replay(nats_server.url, "rp", "f.*", from_seq=51)) == []
    # the end is the stream's last message when the replay began: later ones are not waited for
    r = js.replay(nats_server.url, "rp", "f.*", from_seq=45)
    try:
        first = r.recv(timeout=5)
        assert first is not None and first.seq == 45
        filler.publish(5)
        assert [m.seq for m in r] == [46, 47, 48, 49, 50]
    finally:
        r.close()


def test_since_starts_at_the_first_message_stored_at_or_after_the_time(
        nats_server: NatsServer, filler: Filler):
    filler.publish(20)
    # the server stamps messages with its clock (the same host's): take the boundary from it
    cut = datetime.datetime.now(datetime.UTC)
    assert until(lambda: datetime.datetime.now(datetime.UTC) > cut, 1)
    filler.publish(10)
    assert _payloads(js.replay(nats_server.url, "rp", "f.*", since=cut)) == list(range(20, 30))
    old = cut - datetime.timedelta(days=1)
    assert len(list(js.replay(nats_server.url, "rp", "#", since=old))) == 30
    with pytest.raises(pybus.ValidationError):
        js.replay(nats_server.url, "rp", since=datetime.datetime.now())  # naive: ambiguous
    with pytest.raises(pybus.ValidationError):
        js.replay(nats_server.url, "rp", from_seq=1, since=cut)


def test_follow_delivers_new_messages_until_closed(nats_server: NatsServer, filler: Filler):
    filler.publish(3)
    r = js.replay(nats_server.url, "rp", "f.*", follow=True)
    try:
        assert _payloads([r.recv(timeout=5) for _ in range(3)]) == [0, 1, 2]
        with pytest.raises(pybus.TimeoutError):
            r.recv(timeout=0.3)  # nothing new yet: a deadline, not the end
        filler.publish(2)
        assert _payloads([r.recv(timeout=5), r.recv(timeout=5)]) == [3, 4]
        # close() from another thread ends a blocked iteration
        got: list[int] = []

        def reader() -> None:
            for m in r:
                got.append(int(m.payload))

        t = threading.Thread(target=reader)
        t.start()
        filler.publish(1)
        assert until(lambda: got == [5], 10)
        r.close()
        t.join(5)
        assert not t.is_alive() and got == [5]
    finally:
        r.close()


def test_a_durable_consumer_resumes_after_the_last_acknowledged_message(
        nats_server: NatsServer, filler: Filler):
    filler.publish(10)
    with js.replay(nats_server.url, "rp", "f.*", durable="d1") as r:
        assert _payloads([r.recv(5) for _ in range(4)]) == [0, 1, 2, 3]
    # closed normally: 0..3 acknowledged; the rest, and what came since, follows
    filler.publish(2)
    r = js.replay(nats_server.url, "rp", "f.*", durable="d1")
    try:
        assert _payloads([r.recv(5) for _ in range(3)]) == [4, 5, 6]
    finally:
        r.close()
    # left by an exception: the message being handled (7) is not acknowledged
    with pytest.raises(RuntimeError), js.replay(nats_server.url, "rp", "f.*",
                                                durable="d1") as r:
        for m in r:
            if int(m.payload) == 8:
                raise RuntimeError("handler failed")
    assert _payloads(js.replay(nats_server.url, "rp", "f.*", durable="d1")) == [8, 9, 10, 11]
    # the whole stream read: nothing left for the durable, everything for a new one
    assert list(js.replay(nats_server.url, "rp", "f.*", durable="d1")) == []
    assert len(list(js.replay(nats_server.url, "rp", "f.*", durable="d2"))) == 12
    with pytest.raises(pybus.ValidationError):  # a durable is bound to its pattern
        js.replay(nats_server.url, "rp", "f.b", durable="d1")


def test_a_durable_follow_replay_resumes_live(nats_server: NatsServer, filler: Filler):
    filler.publish(3)
    r = js.replay(nats_server.url, "rp", "f.*", durable="live", follow=True)
    try:
        assert _payloads([r.recv(5) for _ in range(3)]) == [0, 1, 2]
    finally:
        r.close()
    filler.publish(2)
    r = js.replay(nats_server.url, "rp", "f.*", durable="live", follow=True)
    try:
        assert _payloads([r.recv(5), r.recv(5)]) == [3, 4]
        with pytest.raises(pybus.TimeoutError):
            r.recv(0.2)
    finally:
        r.close()


def test_areplay_is_the_asyncio_twin(nats_server: NatsServer, filler: Filler):
    filler.publish(6, "f.a")
    filler.publish(4, "f.b")

    async def main() -> tuple[list[int], list[int], list[int]]:
        every = [int(m.payload) async for m in js.areplay(nats_server.url, "rp", "f.b")]
        async with js.areplay(nats_server.url, "rp", "f.*", durable="ad") as r:
            first = [int((await r.recv(5)).payload) for _ in range(3)]
        rest = [int(m.payload) async for m in js.areplay(nats_server.url, "rp", "f.*",
                                                          durable="ad")]
        return every, first, rest

    every, first, rest = asyncio.run(main())
    assert every == [6, 7, 8, 9]
    assert first == [0, 1, 2] and rest == list(range(3, 10))


def test_a_missing_stream_is_a_clear_error(nats_server: NatsServer):
    with pytest.raises(pybus.BusError, match="no JetStream stream named 'nope'"):
        js.replay(nats_server.url, "nope")


def test_replay_of_an_empty_match_ends_at_once(nats_server: NatsServer, filler: Filler):
    filler.publish(3)
    t0 = time.monotonic()
    assert list(js.replay(nats_server.url, "rp", "f.zzz")) == []
    assert list(js.replay(nats_server.url, "rp", "g.#")) == []
    assert time.monotonic() - t0 < 30  # bounded: no hang waiting for messages that never come
