"""Type stub of pybus._native._batch (the C batcher and batch frame codec)."""

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeAlias, final

import numpy as np
import numpy.typing as npt

# Any object with the buffer protocol (collections.abc._Buffer from Python 3.12).
_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "Batcher",
    "Message",
    "decode_batch",
    "decode_into",
    "decode_payloads",
    "encode_frame",
    "frame_info",
    "iter_frame",
    "READY",
    "PENDING",
    "FULL",
    "FRAME_VERSION",
    "FRAME_HEADER_SIZE",
    "RECORD_HEADER_SIZE",
    "RING_RECORD_OVERHEAD",
    "FLAG_MSGPACK",
    "ring_record_size",
]

READY: int
PENDING: int
FULL: int
FRAME_VERSION: int
FRAME_HEADER_SIZE: int
RECORD_HEADER_SIZE: int
RING_RECORD_OVERHEAD: int
FLAG_MSGPACK: int

def ring_record_size(header_len: int, payload_len: int) -> int: ...
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

@final
class Batcher:
    READY: ClassVar[int]
    PENDING: ClassVar[int]
    FULL: ClassVar[int]
    def __init__(
        self,
        capacity_bytes: int = ...,
        max_batch_records: int = 8192,
        max_batch_bytes: int = ...,
        max_message_bytes: int = ...,
        max_topics: int = 65536,
        publisher_id: int = 0,
        idle_us: float = 5.0,
        max_delay_us: float = 100.0,
    ) -> None: ...
    def topic_id(self, topic: bytes) -> int: ...
    def topic_name(self, topic_id: int) -> bytes: ...
    @property
    def topic_count(self) -> int: ...
    def next_seq(self, topic_id: int) -> int: ...
    def append(
        self, topic_id: int, payload: _Buffer, header: _Buffer | None = None, flags: int = 0
    ) -> int: ...
    def append_at(
        self,
        topic_id: int,
        payload: _Buffer,
        now_ns: int,
        header: _Buffer | None = None,
        flags: int = 0,
    ) -> int: ...
    def set_hooks(
        self,
        resolve_topic: Callable[[str], int] | None,
        pack: Callable[[Any], bytes] | None,
        on_ready: Callable[[], object] | None,
        on_pending: Callable[[], object] | None,
        on_full: Callable[[str, Any, Any], Any] | None,
    ) -> None: ...
    def publish(self, topic: str, payload: Any, headers: dict[Any, Any] | None = None) -> Any: ...
    def position_frames(
        self, now_ns: int, interval_ns: int, repeats: int, force: bool = False, limit: int = 0
    ) -> tuple[list[tuple[bytes, bytes]], int | None]: ...
    def drain_to(
        self, sock: int, max_frames: int = ..., max_bytes: int = ...
    ) -> tuple[list[tuple[bytes, int, int]], int]: ...
    def drain(self, max_frames: int = ..., max_bytes: int = ...) -> list[tuple[bytes, bytes]]: ...
    def mark_flushed(self) -> None: ...
    def mark_quiet(self) -> None: ...
    @property
    def pending_records(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def capacity_bytes(self) -> int: ...
    @property
    def publisher_id(self) -> int: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def max_batch_records(self) -> int: ...
    @property
    def max_batch_bytes(self) -> int: ...
    @property
    def idle_us(self) -> float: ...
    @property
    def max_delay_us(self) -> float: ...
    @property
    def records_appended(self) -> int: ...
    @property
    def frames_drained(self) -> int: ...
    @property
    def full_count(self) -> int: ...
    @property
    def oldest_pending_ns(self) -> int: ...
    @property
    def last_append_ns(self) -> int: ...
    @staticmethod
    def now_ns() -> int: ...

def set_thread_timer_slack(ns: int) -> bool: ...
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
