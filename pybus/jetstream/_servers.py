"""Server URLs and the connection every JetStream class opens (one per object, on its own loop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ValidationError

__all__ = ["parse_servers", "connect"]

_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    """``"nats://a:4222,nats://b:4222"`` or a list of URLs -> a list of URLs, each checked."""
    if isinstance(servers, str):
        urls = [s.strip() for s in servers.split(",")]
    elif isinstance(servers, Sequence):
        urls = [str(s).strip() for s in servers]
    else:
        raise ValidationError(
            f"servers must be a URL, a comma-separated string of URLs or a list of URLs, "
            f"not {type(servers).__name__}")
    urls = [u for u in urls if u]
    if not urls:
        raise ValidationError("servers is empty: give at least one nats:// URL")
    for u in urls:
        if not u.startswith(_SCHEMES):
            raise ValidationError(
                f"server URL {u!r} must start with one of {', '.join(_SCHEMES)}")
    return urls


async def connect(servers: list[str], name: str, **options: Any) -> Any:
    """A nats-py connection that keeps reconnecting (a restarted or failed-over server is
    expected, not fatal): the caller's operations time out instead, and retry."""
    import nats

    settings: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
    }
    settings.update(options)
    return await nats.connect(**settings)
