"""``pybus keygen`` and ``pybus proxy``: make CURVE key pairs, run an XSUB/XPUB proxy."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .._signals import graceful_signals
from ..errors import ValidationError
from ._common import add_command, usage_error


def cmd_keygen(args: argparse.Namespace) -> int:
    from ..transport.security import keypair, save_keypair

    if args.out is None:
        public, secret = keypair()
        if args.json:
            print(json.dumps({"public_key": public.decode(), "secret_key": secret.decode()}))
        else:
            print(f"public-key = {public.decode()}")
            print(f"secret-key = {secret.decode()}")
        return 0
    pub_path, sec_path = save_keypair(args.out, args.name, overwrite=args.force)
    from ..transport.security import load_public_key

    public = load_public_key(pub_path)
    if args.json:
        print(json.dumps({"public_key": public.decode(), "public_file": str(pub_path),
                          "secret_file": str(sec_path)}))
    else:
        print(f"public key {public.decode()}")
        print(f"wrote {pub_path} (share it) and {sec_path} (mode 0600, keep it private)")
    return 0


def _allow_list(values: list[str] | None) -> list[bytes] | str | None:
    """--allow KEY | FILE | DIR (repeatable) or --allow any."""
    if not values:
        return None
    if values == ["any"]:
        return "any"
    from ..transport.security import load_public_key

    keys: list[bytes] = []
    for v in values:
        p = Path(v)
        if p.is_dir():
            files = sorted(p.glob("*.key"))
            if not files:
                raise ValidationError(f"--allow {v}: no *.key public key files in that directory")
            keys += [load_public_key(f) for f in files]
        elif p.is_file():
            keys.append(load_public_key(p))
        else:
            keys.append(v.encode())  # validated by Curve.server
    return keys


def _server_curve(secret_file: str | None, allow: list[str] | None, side: str) -> Any:
    if secret_file is None:
        if allow:
            raise ValidationError(f"--{side}-allow needs --{side}-secret (or --secret)")
        return None
    from ..transport.security import Curve, load_secret_key

    keys = _allow_list(allow)
    if keys is None:
        raise ValidationError(
            f"the {side} has a secret key but no allowlist: pass --{side}-allow KEY|FILE|DIR "
            f"(repeatable) or --allow any"
        )
    return Curve.server(load_secret_key(secret_file), allow=keys)


def _terminate_within(ctx: Any, timeout_s: float) -> None:
    """End the proxy's own context, so the backend's linger (a drain) is honoured before the
    process exits; bounded, in case anything still holds a socket."""
    t = threading.Thread(target=ctx.term, name="pybus-proxy-term", daemon=True)
    t.start()
    t.join(timeout_s)


def cmd_proxy(args: argparse.Namespace) -> int:
    import zmq

    from ..pubsub.proxy import Proxy

    fsec = _server_curve(args.frontend_secret or args.secret,
                         args.frontend_allow or args.allow, "frontend")
    bsec = _server_curve(args.backend_secret or args.secret,
                         args.backend_allow or args.allow, "backend")
    if args.drain_timeout < 0:
        raise usage_error(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    ctx = zmq.Context()
    proxy = Proxy(args.frontend, args.backend, args.capture, frontend_security=fsec,
                  backend_security=bsec, sndhwm=args.sndhwm, rcvhwm=args.rcvhwm, context=ctx)
    stop = threading.Event()
    print(f"pybus proxy: publishers -> {', '.join(proxy.frontend)}  subscribers -> "
          f"{', '.join(proxy.backend)}" + (f"  capture -> {proxy.capture}" if proxy.capture
                                           else "")
          + ("  [CURVE]" if fsec or bsec else ""), file=sys.stderr, flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        # SIGTERM/SIGINT: drain and exit 0; a second signal exits at once
        with graceful_signals(stop.set, what="pybus proxy"):
            while not stop.is_set():
                wait = args.stats_interval or 1.0
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                stop.wait(wait)
                if args.stats_interval and not stop.is_set():
                    s = proxy.stats()
                    print(json.dumps({k: s[k] for k in ("frontend", "backend", "state")}),
                          flush=True)
                if deadline is not None and time.monotonic() >= deadline:
                    break
    finally:
        if stop.is_set():  # a signal: subscribers get what the proxy holds, within the bound
            proxy.drain(args.drain_timeout)
            s = proxy.stats()  # counted up to the stop, plus what the drain forwarded
        else:
            s = proxy.stats()
            proxy.close()
        s["drained_messages"] = proxy.drained_messages
        _terminate_within(ctx, args.drain_timeout + 0.5)
    if args.json:
        print(json.dumps(s, default=str))
    return 0


def register(sub: Any) -> None:
    """Add the ``keygen`` and ``proxy`` sub-commands to the ``pybus`` parser."""
    k = add_command(sub, "keygen", cmd_keygen, "make a CURVE key pair (Z85)",
                    "Make a CURVE key pair. With --out, write NAME.key (public) and "
                    "NAME.key_secret (mode 0600) in ZeroMQ's certificate format; else print "
                    "both keys.")
    k.add_argument("--out", metavar="DIR", help="directory for the key files")
    k.add_argument("--name", default="pybus", help="file name stem (default: pybus)")
    k.add_argument("--force", action="store_true", help="overwrite existing key files")
    k.add_argument("--json", action="store_true", help="print JSON")

    p = add_command(sub, "proxy", cmd_proxy,
                    "run an XSUB/XPUB proxy (many publishers to many subscribers)",
                    "Forward pub/sub traffic: publishers connect to --frontend, subscribers to "
                    "--backend. Runs until SIGINT/SIGTERM (or --duration).")
    p.add_argument("--frontend", required=True, action="append",
                   help="endpoint publishers connect to, e.g. tcp://*:5559 (repeatable)")
    p.add_argument("--backend", required=True, action="append",
                   help="endpoint subscribers connect to, e.g. tcp://*:5560 (repeatable)")
    p.add_argument("--capture", help="PUB endpoint that gets a copy of all traffic")
    p.add_argument("--secret", help="secret key file (NAME.key_secret) for both sides")
    p.add_argument("--allow", action="append",
                   help="allowed client key: Z85 key, key file or directory of *.key; "
                        "repeatable; 'any' for any client")
    for side in ("frontend", "backend"):
        p.add_argument(f"--{side}-secret", help=f"secret key file of the {side} side")
        p.add_argument(f"--{side}-allow", action="append",
                       help=f"allowed keys on the {side} side (as --allow)")
    p.add_argument("--sndhwm", type=int, default=1000, help="per-subscriber HWM (1000)")
    p.add_argument("--rcvhwm", type=int, default=1000, help="per-publisher HWM (1000)")
    p.add_argument("--stats-interval", type=float, default=0.0,
                   help="print statistics as JSON every N seconds (0: never)")
    p.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    p.add_argument("--drain-timeout", type=float, default=5.0, dest="drain_timeout",
                   help="on SIGTERM/SIGINT: seconds to hand subscribers what the proxy holds "
                        "before exiting (5)")
    p.add_argument("--json", action="store_true", help="print final statistics as JSON")
