"""A socket monitor's descriptor numbers are read late: pybus must never keep a copy of one.

ZeroMQ reports a connection's descriptor number in its monitor events; pybus's hub thread reads
the event later, when the connection may be gone and the number reused by anything else in the
process. A CI run hung for 120 s this way: the number had become the stdin pipe of a child
process (promtool), the hub thread duplicated it, the socket constructor refused the copy (not a
socket) and the copy leaked, so the child never saw end-of-file. The oracle here is the kernel:
a pipe whose only write end we close must read end-of-file at once.
"""

from __future__ import annotations

import os
import socket

import pytest

from pybus.transport.sockets import SocketWatch


def _write_end_is_the_only_one(r: int, w: int) -> bool:
    """Close ``w``; True when the pipe then reads end-of-file (no other copy of ``w`` exists)."""
    os.close(w)
    os.set_blocking(r, False)
    try:
        return os.read(r, 1) == b""
    except BlockingIOError:  # a copy of the write end is still open somewhere
        return False


@pytest.mark.parametrize("event", ["accepted", "connected"])
def test_a_reused_descriptor_number_is_not_copied(event):
    watch = SocketWatch(None)
    r, w = os.pipe()  # the connection's number, now reused by a pipe
    try:
        watch._track(event, w, "tcp://127.0.0.1:5555")
        assert watch._conns == {}  # not a socket: not remembered
        assert _write_end_is_the_only_one(r, w), "a copy of the reused descriptor leaked"
    finally:
        os.close(r)


def test_drop_connections_leaves_a_reused_number_alone():
    watch = SocketWatch(None)
    r, w = os.pipe()
    try:
        watch._conns[w] = (("127.0.0.1", 1), ("127.0.0.1", 2))  # the connection it once was
        assert watch.drop_connections() == 0
        assert _write_end_is_the_only_one(r, w), "a copy of the reused descriptor leaked"
    finally:
        os.close(r)


def test_a_live_connection_is_tracked_then_shut_down_but_not_closed():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as cl:
            conn, _ = srv.accept()
            with conn:
                watch = SocketWatch(None)
                watch._track("accepted", conn.fileno(), f"tcp://127.0.0.1:{port}")
                assert watch._conns == {conn.fileno(): (conn.getsockname(), conn.getpeername())}
                assert watch.drop_connections() == 1
                cl.settimeout(5)
                assert cl.recv(1) == b""  # shut down: the peer reads end-of-file
                assert conn.fileno() >= 0 and conn.getsockname()  # the descriptor is still open
