"""Type stub of pybus._native._zmqfast (request/reply I/O straight into pyzmq's libzmq)."""

from collections.abc import Callable
from typing import Any, final

AVAILABLE: bool
UNAVAILABLE_REASON: str
REASON_SHORT: str
REASON_VERSION: str
REASON_FLAGS: str
REASON_KIND: str
REASON_METHOD: str
REASON_MULTIPART: str

def library_path() -> str: ...
def version_mismatch(
    found: tuple[int, int, int], reported: tuple[int, int, int], path: str
) -> str: ...

def call(
    sock: int, cid_base: int, seq: int, flags: int, method: bytes, payload: bytes
) -> bytes | bytearray | int | None: ...
def send_request(sock: int, cid: int, flags: int, method: bytes, payload: bytes) -> int: ...
def recv_reply(sock: int, cid: int) -> bytes | bytearray | None: ...
def recv_request(
    sock: int,
) -> tuple[str | None, bytes, int, int, bytes | None, bytes] | None: ...
def send_reply(
    sock: int, identity: bytes, cid: int, kind: int, flags: int, payload: bytes
) -> int: ...
def send_frame(sock: int, data: bytes, more: bool = False) -> int: ...
def recv_message(sock: int, dontwait: bool = True) -> list[bytes] | None: ...
def send_message(sock: int, parts: tuple[bytes, ...]) -> int: ...

@final
class ZFrame:
    """A received ZeroMQ frame kept in libzmq's buffer (read-only buffer protocol)."""
    def __len__(self) -> int: ...
    @property
    def bytes(self) -> bytes: ...

def recv_pubsub(sock: int, dontwait: bool = True) -> tuple[bytes, ZFrame | None, int] | None: ...
def recv_batches(
    sock: int,
    topics: dict[bytes, Any],
    batches: list[tuple[str, bytes, int, int, int, list[Any], int]],
    max_messages: int,
    max_frames: int,
    decode: Callable[[str, Any], list[Any]],
) -> tuple[bytes, ZFrame | None, int] | None: ...
def take_batch(
    batches: list[tuple[str, bytes, int, int, int, list[Any], int]],
    topics: dict[bytes, Any],
    decode: Callable[[str, Any], list[Any]],
    topic_b: bytes,
    frame: Any,
    room: int,
) -> int: ...
