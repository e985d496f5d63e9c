"""The ``pybus`` command: poke at a live bus, benchmark it, read its DLQ and its metrics.

Exit codes: 0 success; 1 runtime failure (a peer is unreachable, a timeout before ``--count``
messages, a benchmark that failed); 2 usage or input error (bad arguments, a malformed endpoint or
pattern, a missing DLQ file). Errors are one line on stderr, never a traceback.

``rich`` (progress bars, tables, the live ``stat`` view) is a runtime dependency because the
command is part of the product; it is imported only by the sub-commands that draw, so
``pybus version`` and ``pybus pub`` start fast.

This module owns the parser (each sub-command module adds its own with ``register``), the
entry point :func:`main` and ``pybus version``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..errors import BusError, ValidationError
from . import bench, dlq, pubsub, queue, security, stat
from ._common import CliError, add_command


def cmd_version(args: argparse.Namespace) -> int:
    import msgpack
    import zmq

    if args.json:
        print(json.dumps({"pybus": __version__, "pyzmq": zmq.__version__,
                          "libzmq": zmq.zmq_version(), "msgpack": msgpack.version and
                          ".".join(map(str, msgpack.version)),
                          "python": sys.version.split()[0]}))
    else:
        print(f"pybus {__version__} (pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, "
              f"python {sys.version.split()[0]})")
    return 0


def _register_version(sub: Any) -> None:
    v = add_command(sub, "version", cmd_version, "print the pybus, pyzmq and libzmq versions")
    v.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    p = argparse.ArgumentParser(
        prog="pybus",
        description="pybus: poke at a live bus, benchmark it, read its DLQ and its metrics.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage or input error.",
    )
    p.add_argument("--version", action="version", version=f"pybus {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    # the order of `pybus --help`
    _register_version(sub)
    for register in (stat.register, pubsub.register, dlq.register, queue.register,
                     bench.register, security.register):
        register(sub)
    return p


_KEY_OPTIONS = frozenset({"--allow", "--frontend-allow", "--backend-allow"})
_Z85_KEY_CHARS = 40


def _glue_dash_keys(argv: list[str]) -> list[str]:
    """``--allow -K...`` -> ``--allow=-K...``: Z85's alphabet has '-', so one public key in 85
    starts with it, and argparse would take it for an option and refuse the line."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if tok in _KEY_OPTIONS and nxt.startswith("-") and len(nxt) == _Z85_KEY_CHARS:
            out.append(f"{tok}={nxt}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pybus`` command; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(_glue_dash_keys(list(argv) if argv is not None else sys.argv[1:]))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"pybus {args.command}"
    try:
        return int(func(args))
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except ValidationError as exc:  # includes TopicError: bad input
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pybus sub ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
