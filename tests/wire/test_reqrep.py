"""pybus.wire.reqrep's frame helpers against docs/wire-reqrep.md, whose header is written out
here from the document: version u8, kind u8, flags u8, method length u8, correlation id u64le."""

from __future__ import annotations

import struct

import pytest

from pybus.wire import reqrep

DOC = struct.Struct("<BBBBQ")
REQUEST, REPLY, ERROR = 0x01, 0x02, 0x03


def test_a_request_frame_is_header_method_body() -> None:
    frame = reqrep.request_frame(2**64 - 1, 0x01, b"add", b"\x92\x01\x02")
    assert frame == DOC.pack(1, REQUEST, 0x01, 3, 2**64 - 1) + b"add\x92\x01\x02"


@pytest.mark.parametrize(("frame", "expected"), [
    (DOC.pack(1, REPLY, 0, 0, 7) + b"raw", (7, REPLY, 0)),
    (DOC.pack(1, REPLY, 0x01, 0, 7) + b"\xa1x", (7, REPLY, 0x01)),  # msgpack
    (DOC.pack(1, ERROR, 0x01, 0, 2**64 - 1), (2**64 - 1, ERROR, 0x01)),
    (DOC.pack(1, REPLY, 0x02, 0, 7), None),  # FLAG_HEADERS: a request's flag only
    (DOC.pack(1, REPLY, 0x80, 0, 7), None),  # a reserved bit
    (DOC.pack(2, REPLY, 0, 0, 7), None),  # another version
    (DOC.pack(1, REQUEST, 0, 1, 7) + b"m", None),  # not a reply
    (DOC.pack(1, 0x7F, 0, 0, 7), None),  # control: in-process only
    (DOC.pack(1, REPLY, 0, 0, 7)[:11], None),  # one byte short of a header
    (b"", None),
])
def test_read_reply_takes_replies_and_errors_and_nothing_else(frame, expected) -> None:
    assert reqrep.read_reply(frame) == expected
