"""``pybus pub`` and ``pybus sub``: publish to and print from a live bus."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from .._signals import graceful_signals
from ._common import (
    CliError,
    add_command,
    check_endpoint,
    jsonable,
    ready_publisher,
    report_bound,
    text_or_hex,
    usage_error,
)


def _payloads(args: argparse.Namespace) -> list[Any]:
    if args.message is None or args.message == "-":
        raw = [line.rstrip("\n") for line in sys.stdin]
    else:
        raw = [args.message]
    if not args.json:
        return [r.encode("utf-8") for r in raw]
    out = []
    for i, r in enumerate(raw, 1):
        try:
            out.append(json.loads(r))
        except json.JSONDecodeError as exc:
            where = "MESSAGE" if args.message not in (None, "-") else f"stdin line {i}"
            raise usage_error(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})"
                              ) from None
    return out




def cmd_pub(args: argparse.Namespace) -> int:
    from ..policy.topics import validate_topic
    from ..pubsub.publisher import Publisher

    ep = check_endpoint(args.endpoint)
    validate_topic(args.topic)
    if args.count < 1:
        raise usage_error(f"--count must be >= 1, got {args.count}")
    if args.wait_subscribers < 0:
        raise usage_error(f"--wait-subscribers must be >= 0, got {args.wait_subscribers}")
    payloads = _payloads(args)
    pub = Publisher(ep, connect=not args.bind, registry=False, delivery=args.delivery)
    try:
        ready_publisher("pub", pub, ep, args,
                        "is anything listening? (--wait-subscribers 0 sends anyway)")
        n = 0
        for _ in range(args.count):
            for p in payloads:
                pub.publish(args.topic, p)
                n += 1
        pub.flush(timeout=args.timeout)
    finally:
        pub.close(linger_ms=int(args.timeout * 1000))
    if not args.quiet:
        print(f"published {n} message(s) to {args.topic!r} on {ep}", file=sys.stderr)
    return 0


def _show_payload(m: Any) -> tuple[Any, str]:
    """The payload for display: (value, encoding) with encoding json, utf-8 or hex."""
    if m.is_msgpack:
        return m.payload, "json"
    return text_or_hex(m.raw_payload)


def cmd_sub(args: argparse.Namespace) -> int:
    from ..policy.topics import validate_pattern
    from ..pubsub.subscriber import Subscriber

    ep = check_endpoint(args.endpoint)
    for pat in args.patterns:
        validate_pattern(pat)
    if args.count is not None and args.count < 1:
        raise usage_error(f"--count must be >= 1, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        raise usage_error(f"--timeout must be > 0 seconds, got {args.timeout}")
    sub = Subscriber(ep, args.patterns, bind=args.bind, registry=False)
    got = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    stop = threading.Event()
    try:
        # SIGTERM/SIGINT: stop waiting, print what has already arrived, exit 0 (installed
        # before the bound endpoint is reported: a signal may follow at once)
        with graceful_signals(stop.set, what="pybus sub"):
            if args.bind:
                report_bound("sub", ep, sub.endpoints)
            while (args.count is None or got < args.count) and not stop.is_set():
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    break
                want = 10_000 if args.count is None else args.count - got
                got += _print_messages(sub.recv_batch(want, timeout=wait), args.json)
            while stop.is_set() and (args.count is None or got < args.count):
                want = 10_000 if args.count is None else args.count - got
                batch = sub.recv_batch(want, timeout=0)
                if not batch:
                    break
                got += _print_messages(batch, args.json)
    finally:
        sub.close()
    if stop.is_set():
        return 0
    if args.count is not None and got < args.count:
        raise CliError(f"received {got} of {args.count} message(s) before the "
                       f"{args.timeout:g} s timeout")
    return 0



def _print_messages(msgs: list[Any], as_json: bool) -> int:
    out = sys.stdout
    for m in msgs:
        value, enc = _show_payload(m)
        if as_json:
            line = json.dumps({"topic": m.topic, "seq": m.seq,
                               "publisher_id": f"{m.publisher_id:016x}",
                               "timestamp_ns": m.timestamp_ns,
                               "headers": jsonable(m.headers),
                               "payload": jsonable(value), "encoding": enc})
        else:
            shown = json.dumps(jsonable(value)) if enc == "json" else value
            line = f"{m.topic} #{m.seq} {shown}"
        out.write(line + "\n")
    out.flush()
    return len(msgs)


def _bind_or_connect(p: argparse.ArgumentParser, connect_help: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--connect", dest="bind", action="store_false", default=False,
                   help=connect_help)
    g.add_argument("--bind", dest="bind", action="store_true",
                   help="bind ENDPOINT (tcp://HOST:* binds a free port and prints it on stderr)")


def register(sub: Any) -> None:
    """Add the ``pub`` and ``sub`` sub-commands to the ``pybus`` parser."""
    pb = add_command(sub, "pub", cmd_pub, "publish messages to a live bus",
                     "Publish MESSAGE (or each line of stdin with '-' or no MESSAGE) on TOPIC. "
                     "By default connects to ENDPOINT (a bound subscriber or proxy) and waits "
                     "for one subscriber so nothing is lost to ZeroMQ's join delay.")
    pb.add_argument("endpoint", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH")
    pb.add_argument("topic", metavar="TOPIC", help="e.g. orders.created")
    pb.add_argument("message", metavar="MESSAGE|-", nargs="?", default=None,
                    help="the payload (UTF-8); '-' or omitted: one message per stdin line")
    _bind_or_connect(pb, "connect to ENDPOINT (default)")
    pb.add_argument("--json", action="store_true",
                    help="parse each message as JSON and send it as a msgpack object")
    pb.add_argument("--count", type=int, default=1, help="send each message N times (1)")
    pb.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                    help="wait for N subscribers before sending (1; 0 sends at once)")
    pb.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to wait for subscribers and for sending (5)")
    pb.add_argument("--best-effort", dest="delivery", action="store_const",
                    const="best_effort", default="reliable",
                    help="never wait for slow subscribers (default: reliable, docs/wire.md)")
    pb.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")

    sb = add_command(sub, "sub", cmd_sub, "print messages from a live bus",
                     "Subscribe to PATTERNs (orders.*, orders.#) and print each message: "
                     "'TOPIC #SEQ PAYLOAD' or, with --json, one JSON object per line.")
    sb.add_argument("endpoint", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH")
    sb.add_argument("patterns", metavar="PATTERN", nargs="+",
                    help="topic pattern: '*' matches one segment, '#' any number")
    _bind_or_connect(sb, "connect to ENDPOINT, a publisher (default)")
    sb.add_argument("--json", action="store_true", help="print JSON lines")
    sb.add_argument("--count", type=int, default=None, help="exit after N messages")
    sb.add_argument("--timeout", type=float, default=None,
                    help="exit after S seconds (exit 1 if --count was not reached)")
