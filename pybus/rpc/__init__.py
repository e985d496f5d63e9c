"""Request/reply over ROUTER/DEALER (``docs/wire-reqrep.md``): :class:`Server`, :class:`Client`
and the asyncio :class:`AsyncClient`."""

from .aio import AsyncClient
from .endpoints import Client, Handler, Server

__all__ = ["AsyncClient", "Client", "Handler", "Server"]
