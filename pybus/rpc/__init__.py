"""Request/reply over ROUTER/DEALER (``docs/wire-reqrep.md``): :class:`Server`, :class:`Client`
and the asyncio :class:`AsyncClient`."""

from .aio import AsyncClient
from .client import Client
from .server import Handler, Server

__all__ = ["AsyncClient", "Client", "Handler", "Server"]
