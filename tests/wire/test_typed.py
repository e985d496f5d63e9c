"""Typed payloads (issue 13): msgspec Structs, dataclasses, TypedDicts and pydantic models
travel as the plain msgpack maps an untyped peer reads (checked with msgpack-python, not
msgspec), through pub/sub, RPC and the work queue, and decode back exactly into the type."""

from __future__ import annotations

import dataclasses
import datetime
from typing import TypedDict

import msgpack
import msgspec
import pydantic
import pytest

import pybus
from pybus.testing import expect_messages
from pybus.wire.payload import encode_payload
from pybus.wire.typed import SchemaError, decoder_for


class OrderStruct(msgspec.Struct):
    id: int
    item: str
    qty: int = 1
    tags: list[str] = []


@dataclasses.dataclass
class OrderData:
    id: int
    item: str
    qty: int = 1
    tags: list[str] = dataclasses.field(default_factory=list)


class OrderDict(TypedDict):
    id: int
    item: str
    qty: int
    tags: list[str]


class OrderModel(pydantic.BaseModel):
    id: int
    item: str
    qty: int = 1
    tags: list[str] = []


PLAIN = {"id": 7, "item": "pen", "qty": 3, "tags": ["a", "b"]}
VALUES = [OrderStruct(7, "pen", 3, ["a", "b"]), OrderData(7, "pen", 3, ["a", "b"]),
          OrderDict(id=7, item="pen", qty=3, tags=["a", "b"]),
          OrderModel(id=7, item="pen", qty=3, tags=["a", "b"])]
IDS = ["struct", "dataclass", "typeddict", "pydantic"]


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_the_wire_is_a_plain_msgpack_map(value):
    flags, body = encode_payload(value)
    assert flags == 1
    assert msgpack.unpackb(body) == PLAIN  # what any untyped or other-language peer reads
    assert decoder_for(type(value))(body) == value


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_pubsub_round_trip(bus, value):
    pub, (sub,) = bus.pubsub(["orders.*"])
    pub.publish("orders.created", value)
    (m,) = expect_messages(sub, 1)
    assert m.payload == PLAIN  # the untyped view
    assert decoder_for(type(value))(m.raw_payload) == value


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_rpc_and_work_queue_carry_typed_values(bus, value):
    srv = bus.server({"echo": lambda x: x, "make": lambda _x: value})
    client = bus.client(srv)
    assert client.request("echo", value) == PLAIN
    assert client.request("make", None) == PLAIN
    got: list[pybus.Message] = []
    q = bus.work_queue()
    bus.worker(q, got.append)
    q.put("orders.created", value)
    assert q.join(timeout=30)
    assert got[0].payload == PLAIN
    assert decoder_for(type(value))(got[0].raw_payload) == value


@pytest.mark.parametrize("tp", [OrderStruct, OrderData, OrderDict, OrderModel], ids=IDS)
def test_a_payload_that_does_not_fit_raises_schema_error(tp):
    decode = decoder_for(tp)
    with pytest.raises(SchemaError, match="does not match") as err:
        decode(msgpack.packb({"id": "seven", "item": "pen", "qty": 1, "tags": []}))
    assert isinstance(err.value, pybus.ValidationError)
    with pytest.raises(SchemaError, match="not valid msgpack"):
        decode(b"\xc1")  # 0xc1 is never used in msgpack


def test_values_msgspec_and_msgpack_types_agree_on():
    @dataclasses.dataclass
    class Stamp:
        at: datetime.datetime
        raw: bytes

    s = Stamp(datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC), b"\x00\xff")
    flags, body = encode_payload(s)
    assert decoder_for(Stamp)(body) == s


def test_an_unsupported_value_still_says_what_is_allowed():
    with pytest.raises(pybus.ValidationError, match="msgspec.Struct, a dataclass or a pydantic"):
        encode_payload(object())


def test_a_subscriber_declaring_types_gets_them_and_skips_what_does_not_fit(bus):
    pub, (sub,) = bus.pubsub(["orders.#"], types={"orders.created": OrderStruct},
                             log_interval_s=3600)
    pub.publish("orders.created", OrderStruct(1, "a"))
    pub.publish("orders.created", {"id": "not an int", "item": "b"})  # does not fit
    pub.publish("orders.created", b"raw bytes")  # not msgpack at all
    pub.publish("orders.other", {"free": "form"})  # no type declared for this topic
    pub.publish("orders.created", OrderStruct(2, "c"))
    got = []
    while len(got) < 3:
        got += sub.recv_batch(10, timeout=10)
    # (order holds per topic: each topic travels in its own batch frames)
    created = [m for m in got if m.topic == "orders.created"]
    assert [m.payload for m in created] == [OrderStruct(1, "a"), OrderStruct(2, "c")]
    assert [m.payload for m in got if m.topic == "orders.other"] == [{"free": "form"}]
    assert all(isinstance(m, pybus.pubsub.TypedMessage) for m in created)
    s = sub.stats()
    assert s["decode_errors"] == 2 and s["decode_errors_by_reason"] == {"schema": 2}
    # one receive at a time too, and the default type for every other topic
    pub2, (sub2,) = bus.pubsub(["#"], type=OrderData)
    pub2.publish("x", {"id": "bad", "item": "z"})
    pub2.publish("y", OrderData(3, "d"))
    assert sub2.recv(timeout=10).payload == OrderData(3, "d")
    assert sub2.stats()["decode_errors_by_reason"] == {"schema": 1}


PUBLISHER = """
import sys, dataclasses, msgspec, pydantic, pybus
class OrderStruct(msgspec.Struct):
    id: int
    item: str
    qty: int = 1
    tags: list[str] = []
@dataclasses.dataclass
class OrderData:
    id: int
    item: str
    qty: int = 1
    tags: list[str] = dataclasses.field(default_factory=list)
class OrderModel(pydantic.BaseModel):
    id: int
    item: str
    qty: int = 1
    tags: list[str] = []
with pybus.Publisher("tcp://127.0.0.1:*", registry=False) as pub:
    print(pub.endpoints[0], flush=True)
    assert pub.wait_for_subscribers(1, timeout=30) == 1
    pub.publish("t.struct", OrderStruct(7, "pen", 3, ["a", "b"]))
    pub.publish("t.data", OrderData(7, "pen", 3, ["a", "b"]))
    pub.publish("t.model", OrderModel(id=7, item="pen", qty=3, tags=["a", "b"]))
    pub.flush(timeout=30)
"""


def test_typed_pubsub_from_another_process(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        endpoint = ""
        while not endpoint.startswith("tcp://"):
            endpoint = proc.stdout.readline().strip()
            assert endpoint or proc.poll() is None, proc.stderr.read()
        types = {"t.struct": OrderStruct, "t.data": OrderData, "t.model": OrderModel}
        with pybus.Subscriber(endpoint, topics=["t.*"], types=types, registry=False) as sub:
            got = {}
            while len(got) < 3:
                for m in sub.recv_batch(10, timeout=30):
                    got[m.topic] = m.payload
        assert got == {"t.struct": VALUES[0], "t.data": VALUES[1], "t.model": VALUES[3]}
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
