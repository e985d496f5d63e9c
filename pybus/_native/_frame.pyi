"""Type stub of pybus._native._frame (the batch frame codec)."""

from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias, final

import numpy as np
import numpy.typing as npt

# Any object with the buffer protocol (collections.abc._Buffer from Python 3.12).
_Buffer: TypeAlias = bytes | bytearray | memoryview


FRAME_VERSION: int
FRAME_HEADER_SIZE: int
RECORD_HEADER_SIZE: int
FLAG_MSGPACK: int

def _message_from_wire(
    topic: str, raw: bytes, raw_header: bytes | None, flags: int, seq: int,
    publisher_id: int, timestamp_ns: int,
) -> Message: ...

@final
class Message:
    seq: int
    publisher_id: int
    timestamp_ns: int
    def __init__(
        self,
        topic: str,
        payload: Any,
        headers: dict[Any, Any] | None = None,
        seq: int = 0,
        publisher_id: int = 0,
        timestamp_ns: int = 0,
    ) -> None: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> Any: ...
    @property
    def raw_payload(self) -> bytes: ...
    @property
    def raw_headers(self) -> bytes | None: ...
    @property
    def is_msgpack(self) -> bool: ...
    @property
    def headers(self) -> dict[Any, Any]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

def frame_info(frame: _Buffer) -> tuple[int, int, int, int]: ...
def decode_batch(topic: str, frame: _Buffer) -> list[Message]: ...
def decode_payloads(frame: _Buffer) -> list[bytes]: ...
def decode_into(
    frame: _Buffer,
    seqs: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
) -> int: ...
def iter_frame(frame: _Buffer) -> Iterator[tuple[int, bytes]]: ...
def encode_frame(
    publisher_id: int,
    first_seq: int,
    records: Iterable[tuple[_Buffer, _Buffer | None, int, int]],
) -> bytes: ...
