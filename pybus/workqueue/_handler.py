"""What a Worker calls for each message: the user's handler, with the payload decoded into a
declared type and inside a tracing span when asked for. Built once per Worker, so a plain
untyped, untraced handler is called as it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import tracing
from .._native import Message
from ..errors import ValidationError
from ..wire.typed import SchemaError, TypedMessage, annotated_types, decoder_for

__all__ = ["wrap_handler"]

_MESSAGE_TYPES = (Message, TypedMessage)


def _typed(handler: Callable[[Any], Any], payload_type: Any) -> Callable[[Any], Any] | None:
    """The handler taking decoded payloads, or None when nothing is declared.

    ``type=`` gives the handler a :class:`TypedMessage` (the message, its payload typed); an
    argument annotation with a payload type (``def handle(order: Order)``) gives it the
    payload itself. A payload that does not fit raises a non-retryable ValidationError: the
    queue dead-letters the message at once, with the validation message."""
    as_message = payload_type is not None
    if payload_type is None:
        declared, _ret = annotated_types(handler)
        if declared is None or declared in _MESSAGE_TYPES:
            return None
        payload_type = declared
    decode = decoder_for(payload_type)

    def typed(msg: Message) -> Any:
        if not msg.is_msgpack:
            raise ValidationError(f"payload on {msg.topic!r} is raw bytes, not the msgpack "
                                  "its declared type needs")
        try:
            value = decode(msg.raw_payload)
        except SchemaError as exc:
            raise ValidationError(str(exc)) from None  # not retryable: dead-lettered at once
        return handler(TypedMessage(msg, value) if as_message else value)

    return typed


def wrap_handler(handler: Callable[[Any], Any], payload_type: Any = None
                 ) -> Callable[[Message], Any]:
    call = _typed(handler, payload_type) or handler
    if not tracing.active():
        return call

    def traced(msg: Message) -> Any:
        with tracing.consume(msg.topic, msg.headers, str(msg.seq)) as span:
            span.set_attribute("messaging.pybus.delivery", msg.publisher_id)
            return call(msg)

    return traced
