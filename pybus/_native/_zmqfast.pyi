"""Type stub of pybus._native._zmqfast (request/reply I/O straight into pyzmq's libzmq)."""

__all__ = [
    "AVAILABLE",
    "UNAVAILABLE_REASON",
    "library_path",
    "call",
    "send_request",
    "recv_reply",
    "recv_request",
    "send_reply",
    "send_frame",
    "REASON_SHORT",
    "REASON_VERSION",
    "REASON_FLAGS",
    "REASON_KIND",
    "REASON_METHOD",
    "REASON_MULTIPART",
]

AVAILABLE: bool
UNAVAILABLE_REASON: str
REASON_SHORT: str
REASON_VERSION: str
REASON_FLAGS: str
REASON_KIND: str
REASON_METHOD: str
REASON_MULTIPART: str

def library_path() -> str: ...
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
