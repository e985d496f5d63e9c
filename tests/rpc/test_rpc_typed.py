"""A Server handler declaring types (``def add(args: AddArgs) -> Sum``): the request payload
arrives converted, the reply goes back as a plain map, and a request that does not fit is
answered with a ValidationError without calling the handler; across processes too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import msgspec
import pytest

import pybus
from pybus.testing import call
from pybus.wire.typed import decoder_for


class AddArgs(msgspec.Struct):
    x: int
    y: int


class Sum(msgspec.Struct):
    total: int


def _server(bus, calls):
    def add(args: AddArgs) -> Sum:
        calls.append(args)
        return Sum(args.x + args.y)

    return bus.server({"add": add, "plain": lambda a: a})


def test_a_typed_handler_gets_its_type_and_bad_requests_never_reach_it(bus):
    calls: list[AddArgs] = []
    srv = _server(bus, calls)
    client = bus.client(srv)
    assert client.request("add", AddArgs(2, 3)) == {"total": 5}
    assert client.request("add", {"x": 4, "y": 5}) == {"total": 9}  # an untyped caller
    assert calls == [AddArgs(2, 3), AddArgs(4, 5)]
    with pytest.raises(pybus.RemoteError) as err:
        client.request("add", {"x": "two", "y": 3})
    assert err.value.remote_type == "ValidationError"
    assert "Expected `int`, got `str` - at `$.x`" in str(err.value)
    assert err.value.retryable is False
    assert len(calls) == 2  # the handler never saw it
    assert client.request("plain", {"x": "two"}) == {"x": "two"}  # untyped handlers: as before
    # the testing kit answers the same
    with pytest.raises(pybus.RemoteError, match="at `\\$.x`"):
        call(srv, "add", {"x": "two", "y": 3})


SERVER = textwrap.dedent('''
    import sys, msgspec, pybus

    class AddArgs(msgspec.Struct):
        x: int
        y: int

    class Sum(msgspec.Struct):
        total: int

    def add(args: AddArgs) -> Sum:
        return Sum(args.x + args.y)

    srv = pybus.Server("tcp://127.0.0.1:*", registry=False)
    srv.add_handler("add", add)
    print(srv.endpoint, flush=True)
    srv.start()
    sys.stdin.read()   # until the test closes our stdin
    srv.stop()
''')


def test_typed_round_trip_with_a_server_in_another_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=dict(os.environ))
    try:
        endpoint = ""
        while not endpoint.startswith("tcp://"):
            endpoint = proc.stdout.readline().strip()
            assert endpoint or proc.poll() is None, proc.stderr.read()
        with pybus.Client(endpoint, timeout_s=30, registry=False) as client:
            reply = client.request("add", AddArgs(20, 22))
            assert decoder_for(Sum)(msgspec.msgpack.encode(reply)) == Sum(42)
            with pytest.raises(pybus.RemoteError, match="ValidationError|does not match"):
                client.request("add", {"x": 1})
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0
