"""The asyncio twins: same wire, same accounting, awaitable waits."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

import pybus
import pybus.aio

pytestmark = pytest.mark.timeout(60)


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_pubsub_roundtrip_and_iteration() -> None:
    async def main() -> None:
        ep = f"inproc://aio-{uuid.uuid4().hex}"
        async with pybus.aio.Publisher(ep, sndhwm=100_000) as pub:
            async with pybus.aio.Subscriber(ep, topics=["a.#"], rcvhwm=100_000) as sub:
                assert await pub.wait_for_subscribers(1, timeout=5) == 1
                pub.publish("a.b", b"x0")
                pub.publish("a", {"k": 1}, headers={"h": 2})
                pub.publish("zzz", b"filtered")
                m = await sub.recv(timeout=5)
                assert (m.topic, m.payload, m.seq) == ("a.b", b"x0", 1)
                m = await sub.recv(timeout=5)
                assert (m.payload, m.headers) == ({"k": 1}, {"h": 2})
                n = 5000
                for i in range(n):
                    pub.publish("a.bulk", i.to_bytes(2, "little"))
                # no flush: the event-loop timer sends the tail
                got = []
                async for msg in sub:
                    got.append(int.from_bytes(msg.payload, "little"))
                    if len(got) == n:
                        break
                assert got == list(range(n))
                with pytest.raises(pybus.TimeoutError):
                    await sub.recv(timeout=0.05)
                assert await sub.recv_batch(timeout=0.05) == []
                st = sub.stats()
                assert st["received"] == n + 2 and st["lost"] == 0
                assert pub.stats()["published"] == n + 3
            assert sub.closed
        assert pub.closed

    _run(main())


def test_async_subscriber_waits_without_blocking_the_loop() -> None:
    async def main() -> None:
        pub = pybus.aio.Publisher("tcp://127.0.0.1:*")
        sub = pybus.aio.Subscriber(pub.endpoints, topics=["t"])
        await pub.wait_for_subscribers(1, timeout=5)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        recv = asyncio.create_task(sub.recv_batch(timeout=5))
        await asyncio.sleep(0.1)  # the loop keeps running while recv waits
        assert not recv.done() and ticks >= 5
        pub.publish("t", b"late")
        batch = await recv
        assert [m.payload for m in batch] == [b"late"]
        task.cancel()
        await pub.flush()
        await sub.close()
        await pub.close()
        with pytest.raises(pybus.ClosedError):
            pub.publish("t", b"x")

    _run(main())


def test_async_close_ends_iteration_and_bound_subscriber() -> None:
    async def main() -> None:
        ep = f"inproc://aio-bind-{uuid.uuid4().hex}"
        sub = pybus.aio.Subscriber(ep, topics=["#"], bind=True)
        pub = pybus.aio.Publisher(ep, connect=True)
        await pub.wait_for_subscribers(1, timeout=5)  # pokes the bound subscriber
        got: list[bytes] = []

        async def consume() -> None:
            async for m in sub:
                got.append(m.payload)

        task = asyncio.create_task(consume())
        pub.publish("t", b"1")
        t0 = time.monotonic()
        while not got:
            assert time.monotonic() - t0 < 5
            await asyncio.sleep(0.001)
        await sub.close()
        await asyncio.wait_for(task, 5)  # iteration ends on close
        assert got == [b"1"]
        await pub.close()

    _run(main())


def test_async_publisher_requires_async_with() -> None:
    async def main() -> None:
        pub = pybus.aio.Publisher(f"inproc://aio-{uuid.uuid4().hex}")
        with pytest.raises(TypeError, match="async with"):
            with pub:
                pass
        await pub.close()

    _run(main())


def test_async_publisher_sends_position_frames_from_the_loop() -> None:
    """No flusher thread: an event-loop timer announces each stream's position (docs/wire.md),
    so an async subscriber counts the loss of the last messages of a stream too."""

    async def main() -> None:
        ep = f"inproc://aio-pos-{uuid.uuid4().hex}"
        async with pybus.aio.Publisher(ep) as pub:
            async with pybus.aio.Subscriber(ep, topics=["p.#"]) as sub:
                await pub.wait_for_subscribers(1, timeout=5)
                pub.publish("p.a", b"1")
                pub.publish("p.a", b"2")
                assert [m.seq for m in await sub.recv_batch(timeout=5)] in ([1, 2], [1])
                deadline = time.monotonic() + 5
                while pub.stats()["positions_sent"] < 2 and time.monotonic() < deadline:
                    await sub.recv_batch(timeout=0.05)  # the loop runs the timers meanwhile
                # the first position and at least one repeat went out, ~100 ms apart
                assert pub.stats()["positions_sent"] >= 2
                assert sub.stats()["positions"] >= 1 and sub.stats()["lost"] == 0

    _run(main())
