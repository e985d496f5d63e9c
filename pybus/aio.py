"""asyncio twins of the endpoints: :class:`Publisher`, :class:`Subscriber` (``pybus.pubsub``) and
:class:`AsyncClient` (``pybus.rpc``)."""

from .pubsub.aio import Publisher, Subscriber
from .rpc.aio import AsyncClient

__all__ = ["AsyncClient", "Publisher", "Subscriber"]
