"""What a Server registers and answers besides the I/O: handlers with declared argument types
converted, requests carrying headers (the trace context), the reply to a request for a method
nobody registered, rate-limited warnings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .. import tracing
from ..errors import ErrorCode, ValidationError
from ..wire.reqrep import error_body, split_headers
from ..wire.typed import SchemaError, annotated_types, converter_for

__all__ = ["LogLimiter", "headed", "typed", "unknown_method_body"]

Handler = Callable[[Any], Any]


def typed(fn: Handler) -> Handler:
    """``fn``, or a wrapper converting its argument into the type its annotation declares."""
    arg_type, _ret = annotated_types(fn)
    if arg_type is None:
        return fn
    convert = converter_for(arg_type)

    def typed_handler(arg: Any) -> Any:
        try:
            value = convert(arg)
        except SchemaError as exc:  # answered as the client's ValidationError
            raise ValidationError(str(exc)) from None
        return fn(value)

    typed_handler.__wrapped__ = fn  # type: ignore[attr-defined]
    return typed_handler


def headed(fn: Handler, method: bytes, flags: int, data: bytes,
           traced: bool) -> tuple[Handler, int, bytes]:
    """A request whose header block precedes its payload: ``(handler, payload flags,
    payload)``. When the server traces, the handler runs in a SERVER span, the child of the
    client's (the block carries its ``traceparent``); otherwise the headers are read past.
    Raises :class:`pybus.FrameError` when the block is malformed."""
    flags, headers, data = split_headers(flags, data)
    if not traced:
        return fn, flags, data
    name = method.decode("utf-8", "replace")

    def traced_handler(arg: Any) -> Any:
        with tracing.rpc_server(name, headers):
            return fn(arg)

    return traced_handler, flags, data


def unknown_method_body(name: str, methods: list[str]) -> bytes:
    """The ERROR body answering a request for a method no handler has (naming those known)."""
    known = ", ".join(methods) or "(none)"
    return error_body("UnknownMethodError",
                      f"no handler named {name!r} on this server; registered: {known}",
                      ErrorCode.UNKNOWN_METHOD, False)


class LogLimiter:
    """Log a recurring warning at most once per interval (the rest are only counted)."""

    def __init__(self, log: logging.Logger, interval_s: float = 10.0) -> None:
        self.log = log
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.interval_s:
            self._last[key] = now
            self.log.warning(msg, *args)
