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
