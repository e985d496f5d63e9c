"""Which type a subscriber decodes each topic's payloads into (``Subscriber(types=...)`` or
``type=``), without sockets: the receive loop asks :meth:`PayloadTypes.decode` per message."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._native import Message
from ..errors import ValidationError
from ..policy.topics import TopicPattern, validate_pattern
from ..wire.typed import SchemaError, TypedMessage, decoder_for

__all__ = ["PayloadTypes", "TypedMessage"]

_CACHE_MAX = 4096


class PayloadTypes:
    """Patterns to types; the first pattern (in the order given) that matches a topic decides
    its type, ``default`` applies to topics no pattern matches (None: left untyped)."""

    def __init__(self, types: Mapping[str, Any] | None = None, default: Any = None) -> None:
        if types is not None and not isinstance(types, Mapping):
            raise ValidationError(
                f"types must be a dict of topic pattern to type, got {type(types).__name__}")
        self._rules: list[tuple[TopicPattern, Callable[[bytes], Any]]] = [
            (TopicPattern(validate_pattern(p)), decoder_for(t)) for p, t in (types or {}).items()
        ]
        self._default = None if default is None else decoder_for(default)
        self._names = {p: getattr(t, "__name__", repr(t)) for p, t in (types or {}).items()}
        self._cache: dict[str, Callable[[bytes], Any] | None] = {}

    def __bool__(self) -> bool:
        return bool(self._rules) or self._default is not None

    def decoder(self, topic: str) -> Callable[[bytes], Any] | None:
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found = next((d for p, d in self._rules if p.matches(topic)), self._default)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def decode(self, msg: Message) -> Message | TypedMessage:
        """``msg`` with its payload decoded into its topic's type (the same message when its
        topic has none). Raises :class:`SchemaError` when the payload does not fit."""
        decode = self.decoder(msg.topic)
        if decode is None:
            return msg
        if not msg.is_msgpack:
            raise SchemaError(f"payload on {msg.topic!r} is raw bytes, not the msgpack its "
                              "declared type needs")
        return TypedMessage(msg, decode(msg.raw_payload))
