"""What every ``pybus`` sub-command shares: the one-line error (:class:`CliError`), adding a
sub-command to the parser, endpoint checks, the "bound" report of ``--bind tcp://HOST:*``, a
publisher made ready for sending, and turning payloads into JSON-printable values."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from ..errors import BusError


class CliError(Exception):
    """A failure the command reports as one line with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> CliError:
    """A usage or input error: exit code 2."""
    return CliError(message, 2)


def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """Add sub-command ``name`` run by ``func`` to the ``subparsers`` object ``sub``."""
    p = sub.add_parser(name, help=help_, description=description or help_)
    p.set_defaults(func=func, command=name)
    return cast("argparse.ArgumentParser", p)


_ENDPOINT_SCHEMES = ("tcp://", "ipc://")


def check_endpoint(ep: str) -> str:
    """``ep`` if it is tcp://HOST:PORT (or :* to bind a free port) or ipc://PATH."""
    if not ep.startswith(_ENDPOINT_SCHEMES) or len(ep.split("://", 1)[1]) == 0:
        if ep.startswith("inproc://"):
            raise usage_error(f"bad endpoint {ep!r}: inproc:// only reaches sockets inside one "
                              "process; use tcp://HOST:PORT or ipc://PATH")
        raise usage_error(f"bad endpoint {ep!r}: expected tcp://HOST:PORT or ipc://PATH")
    if ep.startswith("tcp://"):
        host, _, port = ep[6:].rpartition(":")
        if not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            raise usage_error(f"bad endpoint {ep!r}: tcp endpoints are tcp://HOST:PORT with a "
                              "port 1-65535 (or * to bind a free one)")
    return ep


def report_bound(command: str, requested: str, bound: Sequence[str]) -> None:
    """``tcp://HOST:*`` binds a free port: say which one on stderr, or nobody can connect."""
    if requested.startswith("tcp://") and requested.endswith(":*") and bound:
        print(f"pybus {command}: bound {bound[0]}", file=sys.stderr, flush=True)


def ready_publisher(command: str, pub: Any, ep: str, args: argparse.Namespace,
                    if_none: str) -> None:
    """Report a ``--bind`` port, then wait for ``--wait-subscribers``; ``if_none`` ends the
    error when too few subscribers joined within ``--timeout``."""
    if args.bind:
        report_bound(command, ep, pub.endpoints)
    if args.wait_subscribers:
        try:
            pub.wait_for_subscribers(args.wait_subscribers, timeout=args.timeout)
        except BusError:
            raise CliError(f"fewer than {args.wait_subscribers} subscriber(s) on {ep} after "
                           f"{args.timeout:g} s; {if_none}") from None


def text_or_hex(raw: bytes) -> tuple[str, str]:
    """A raw payload for display: (printable UTF-8 text, "utf-8") or (hex digits, "hex")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex(), "hex"
    if text.isprintable() or not text:
        return text, "utf-8"
    return raw.hex(), "hex"


def jsonable(v: Any) -> Any:
    """``v`` with bytes as hex and dict keys as strings, so ``json.dumps`` takes it."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v
