"""PayloadTypes: which type a subscriber decodes each topic into (the first matching pattern
wins; a default for the rest), and a payload that does not fit raises SchemaError."""

from __future__ import annotations

import dataclasses

import msgpack
import msgspec
import pytest

import pybus
from pybus.pubsub._types import PayloadTypes
from pybus.testing import expect_messages
from pybus.wire.typed import SchemaError


class Order(msgspec.Struct):
    id: int


@dataclasses.dataclass
class Alert:
    level: str


def _msg(topic: str, payload: object) -> pybus.Message:
    return pybus.Message(topic, payload, {"h": 1}, 5, 9, 123)


def _wire(topic: str, payload: object) -> pybus.Message:
    """A message as a subscriber gets it: decoded lazily from the msgpack bytes."""
    return pybus.wire.decode_batch(topic, _frame(topic, payload))[0]


def _frame(topic: str, payload: object) -> bytes:
    b = pybus.wire.Batcher(publisher_id=9)
    b.set_hooks(lambda t: b.topic_id(t.encode()), lambda o: msgpack.packb(o), None, None, None)
    b.append(b.topic_id(topic.encode()), msgpack.packb(payload), None, 1)
    ((_topic, frame),) = b.drain()
    return frame


def test_first_matching_pattern_wins_and_default_covers_the_rest():
    types = PayloadTypes({"orders.*": Order, "orders.#": Alert}, default=Alert)
    assert types.decode(_wire("orders.created", {"id": 7})).payload == Order(7)
    assert types.decode(_wire("orders.a.b", {"level": "hi"})).payload == Alert("hi")
    assert types.decode(_wire("other", {"level": "lo"})).payload == Alert("lo")
    m = types.decode(_wire("orders.created", {"id": 8}))
    assert (m.topic, m.seq, m.publisher_id) == ("orders.created", 1, 9)


def test_untyped_topics_pass_through_and_bad_payloads_raise():
    types = PayloadTypes({"orders.*": Order})
    raw = _wire("other.t", {"anything": True})
    assert types.decode(raw) is raw
    with pytest.raises(SchemaError, match=r"does not match Order"):
        types.decode(_wire("orders.created", {"id": "x"}))
    with pytest.raises(SchemaError, match="raw bytes"):
        types.decode(_msg("orders.created", b"\x01"))
    assert not PayloadTypes() and PayloadTypes(default=Order)


def test_bad_declarations_say_what_is_allowed():
    with pytest.raises(pybus.TopicError):
        PayloadTypes({"orders..x": Order})
    with pytest.raises(pybus.ValidationError, match="dict of topic pattern to type"):
        PayloadTypes([("orders.*", Order)])  # type: ignore[arg-type]


def test_header_keys_must_be_strings_at_publish(bus):
    # receivers decode headers with string keys only (docs/wire.md): refused at the source
    pub, (sub,) = bus.pubsub()
    with pytest.raises(pybus.ValidationError, match="header keys must be str, got 1"):
        pub.publish("t", b"x", {1: "one"})
    pub.publish("t", b"y", {"one": 1})
    (m,) = expect_messages(sub, 1)
    assert (m.payload, m.headers) == (b"y", {"one": 1})
