"""Renamed public options keep their old spelling for one release, with a DeprecationWarning
that names the new one; giving both is an error. (The work queue's renamed options are tested
in tests/workqueue/test_workqueue.py.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest

import pybus


def _ep() -> str:
    return f"inproc://renamed-{uuid.uuid4().hex}"


def test_server_max_inflight_is_max_in_flight():
    with pytest.warns(DeprecationWarning, match=r"Server\(max_inflight=\).*use max_in_flight="):
        srv = pybus.Server(_ep(), workers=1, max_inflight=3, registry=False)
    try:
        assert srv.max_in_flight == 3
        with pytest.warns(DeprecationWarning, match=r"Server\.max_inflight .*\.max_in_flight"):
            assert srv.max_inflight == 3
    finally:
        srv.close()
    with pytest.raises(pybus.ValidationError, match="pass max_in_flight= only"), \
            pytest.warns(DeprecationWarning):
        pybus.Server(_ep(), max_inflight=3, max_in_flight=4, registry=False)


def test_async_client_max_inflight_and_aclose():
    async def main() -> None:
        with pytest.warns(DeprecationWarning, match=r"AsyncClient\(max_inflight=\)"):
            c = pybus.AsyncClient(_ep(), max_inflight=5, registry=False)
        assert c.max_in_flight == 5
        with pytest.warns(DeprecationWarning, match=r"aclose\(\) is deprecated"):
            await c.aclose()
        with pytest.raises(pybus.ClosedError):
            await c.request("x")  # aclose() closed it
        c2 = pybus.AsyncClient(_ep(), registry=False)
        await c2.close()  # the name every asyncio twin uses
        with pytest.raises(pybus.ClosedError):
            await c2.request("x")

    asyncio.run(main())
