"""Typed payloads: msgspec Structs, dataclasses, TypedDicts and pydantic models as msgpack.

The wire does not change (``docs/wire.md``, "Typed payloads"): a typed value travels as the
msgpack map (or array, for ``array_like`` Structs) msgspec writes for it, flagged msgpack like
any other value, so an untyped peer or another language reads a plain map. A receiver that
declares a type decodes the raw bytes straight into it with msgspec (no intermediate dict);
a payload that does not fit raises :class:`SchemaError`, which each protocol treats its way
(a subscriber counts and skips it, a server answers with a ValidationError, the work queue
dead-letters it at once).

Untyped values keep msgpack-python, the design's codec; msgspec is used only for typed ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any, cast

import msgspec

from .._native import Message
from ..errors import ValidationError

__all__ = ["SchemaError", "TypedMessage", "annotated_types", "converter_for", "decoder_for",
           "encode_typed", "typed_encoder"]


class SchemaError(ValidationError):
    """A payload that does not match the type its receiver declared."""


class TypedMessage:
    """A received :class:`pybus.Message` whose ``payload`` is decoded into its declared type
    (a Struct, dataclass, TypedDict or pydantic model); every other attribute is the
    message's own (``raw_payload`` keeps the bytes as they came)."""

    __slots__ = ("message", "payload")

    def __init__(self, message: Message, payload: Any) -> None:
        self.message = message
        self.payload = payload

    topic = property(lambda self: self.message.topic)
    headers = property(lambda self: self.message.headers)
    seq = property(lambda self: self.message.seq)
    publisher_id = property(lambda self: self.message.publisher_id)
    timestamp_ns = property(lambda self: self.message.timestamp_ns)
    raw_payload = property(lambda self: self.message.raw_payload)
    raw_headers = property(lambda self: self.message.raw_headers)
    is_msgpack = property(lambda self: self.message.is_msgpack)

    def __repr__(self) -> str:
        return (f"TypedMessage(topic={self.topic!r}, seq={self.seq}, "
                f"payload={self.payload!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypedMessage) and other.message == self.message \
            and other.payload == self.payload

    __hash__ = None  # type: ignore[assignment]


_encode = msgspec.msgpack.Encoder().encode


def _is_pydantic_model(cls: type) -> bool:
    # without importing pydantic: a BaseModel subclass has these two class attributes
    return hasattr(cls, "model_validate") and hasattr(cls, "model_dump") \
        and hasattr(cls, "model_fields")


def _encode_pydantic(obj: Any) -> bytes:
    return _encode(obj.model_dump(mode="python"))


# type -> how to encode its instances (None: not typed; msgpack-python does it)
_ENCODERS: dict[type, Callable[[Any], bytes] | None] = {}
_MAX_CACHED_TYPES = 4096


def typed_encoder(cls: type) -> Callable[[Any], bytes] | None:
    """The encoder for instances of ``cls`` when it is a typed class, else None."""
    try:
        return _ENCODERS[cls]
    except KeyError:
        pass
    enc: Callable[[Any], bytes] | None
    if issubclass(cls, msgspec.Struct) or dataclasses.is_dataclass(cls):
        enc = _encode
    elif _is_pydantic_model(cls):
        enc = _encode_pydantic
    else:
        enc = None
    if len(_ENCODERS) < _MAX_CACHED_TYPES:
        _ENCODERS[cls] = enc
    return enc


def encode_typed(obj: Any) -> bytes | None:
    """msgpack bytes for a typed value, or None when ``obj`` is not one (a TypedDict value is
    a plain dict: msgpack-python encodes it)."""
    enc = typed_encoder(type(obj))
    if enc is None:
        return None
    try:
        return enc(obj)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise ValidationError(f"payload of type {type(obj).__name__} cannot be sent: {exc}") \
            from None


_DECODERS: dict[Any, Callable[[bytes], Any]] = {}


def decoder_for(tp: Any) -> Callable[[bytes], Any]:
    """A function decoding msgpack bytes into ``tp`` (a Struct, a dataclass, a TypedDict, a
    pydantic model, or any type msgspec understands, such as ``list[Order]``), raising
    :class:`SchemaError` with msgspec's (or pydantic's) explanation when they do not fit."""
    try:
        return _DECODERS[tp]
    except (KeyError, TypeError):  # TypeError: an unhashable type expression
        pass
    if isinstance(tp, type) and _is_pydantic_model(tp):
        plain = msgspec.msgpack.Decoder().decode
        validate = cast(Any, tp).model_validate

        def decode(raw: bytes) -> Any:
            try:
                return validate(plain(raw))
            except msgspec.DecodeError as exc:
                raise SchemaError(f"payload is not valid msgpack: {exc}") from None
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise SchemaError(f"payload does not match {tp.__name__}: {exc}") from None
    else:
        try:
            typed = msgspec.msgpack.Decoder(tp).decode
        except TypeError as exc:
            raise ValidationError(f"cannot decode payloads into {tp!r}: {exc}; use a "
                                  "msgspec.Struct, a dataclass, a TypedDict or a pydantic "
                                  "model") from None
        name = getattr(tp, "__name__", repr(tp))

        def decode(raw: bytes) -> Any:
            try:
                return typed(raw)
            except msgspec.ValidationError as exc:
                raise SchemaError(f"payload does not match {name}: {exc}") from None
            except msgspec.DecodeError as exc:
                raise SchemaError(f"payload is not valid msgpack: {exc}") from None
    try:
        _DECODERS[tp] = decode
    except TypeError:
        pass
    return decode


# annotations that mean "no declared type": the payload is handed over as decoded today
_UNTYPED = (Any, object, bytes, inspect.Parameter.empty, None, type(None))


def annotated_types(fn: Callable[..., Any]) -> tuple[Any, Any]:
    """(argument type, return type) a handler declares through its annotations, each None
    when it declares none (or Any, object, bytes). ``def add(args: AddArgs) -> Sum``."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat the handler as untyped
        return None, None
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None, None
    arg = hints.get(params[0].name) if params else None
    ret = hints.get("return")
    return (None if arg in _UNTYPED else arg), (None if ret in _UNTYPED else ret)


def converter_for(tp: Any) -> Callable[[Any], Any]:
    """A function turning an already decoded payload (dicts, lists, ...) into ``tp``, raising
    :class:`SchemaError` when it does not fit (for receivers that decoded it untyped first)."""
    if isinstance(tp, type) and _is_pydantic_model(tp):
        validate = cast(Any, tp).model_validate

        def convert(obj: Any) -> Any:
            try:
                return validate(obj)
            except ValueError as exc:
                raise SchemaError(f"payload does not match {tp.__name__}: {exc}") from None
    else:
        name = getattr(tp, "__name__", repr(tp))

        def convert(obj: Any) -> Any:
            try:
                return msgspec.convert(obj, tp)
            except msgspec.ValidationError as exc:
                raise SchemaError(f"payload does not match {name}: {exc}") from None
    return convert
