"""``pybus bench``: check the arguments, run the plan with a progress bar, print the table and
write the JSON, the HdrHistogram log and the PNG asked for."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from .._version import __version__
from ._common import CliError, add_command, usage_error


def _check_args(args: argparse.Namespace, benches: tuple[str, ...]) -> list[str] | None:
    """The ``--only`` list (None: every benchmark); a usage error for any bad argument."""
    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in benches]
        if bad or not only:
            raise usage_error(f"--only takes a comma-separated list of {', '.join(benches)}; "
                              f"got {args.only!r}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise usage_error('--plot needs matplotlib: pip install "pybus[plot]"') from None
    if args.rate is not None and not 1 <= args.rate <= 1_000_000:
        raise usage_error(f"--rate must be 1..1000000 messages per second, got {args.rate}")
    if args.reps is not None and not 1 <= args.reps <= 50:
        raise usage_error(f"--reps must be 1..50, got {args.reps}")
    for opt in ("json", "hlog", "plot"):
        path = getattr(args, opt)
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise usage_error(f"--{opt} {path!r}: directory {d!r} does not exist")
    return only


def _run_steps(plan: Any, console: Any) -> list[Any]:
    """Every step of ``plan`` under a transient progress bar; a failed step is a CliError."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ._bench.common import BenchError
    from ._bench.plan import run_step

    results: list[Any] = []
    steps = plan.steps()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(steps))
        for bench, system in steps:
            progress.update(task, description=f"{bench}: {system}")
            try:
                results.append(run_step(plan, bench, system))
            except BenchError as exc:
                raise CliError(f"{bench} ({system}) failed: {exc}") from None
            progress.advance(task)
    return results


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ._bench.common import BENCHES
    from ._bench.plan import Plan, machine
    from ._bench.report import plot, print_table, write_hlog

    only = _check_args(args, BENCHES)
    plan = Plan.make(args.quick, args.peers, only, args.rate, args.reps)
    console = Console(stderr=True)
    started = time.time()
    t0 = time.monotonic()
    results = _run_steps(plan, console)
    elapsed = time.monotonic() - t0
    print_table(results, args.quick, plan.reps, elapsed)

    if args.json:
        doc = {"pybus": __version__, "quick": args.quick, "started": started,
               "elapsed_s": elapsed, "machine": machine(),
               "results": [r.to_dict() for r in results]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        console.print(f"wrote {args.json}")
    if args.hlog:
        write_hlog(args.hlog, results, started)
        console.print(f"wrote {args.hlog}")
    if args.plot:
        plot(args.plot, results)
        console.print(f"wrote {args.plot}")
    return 0


def register(sub: Any) -> None:
    """Add the ``bench`` sub-command to the ``pybus`` parser."""
    bn = add_command(sub, "bench", cmd_bench,
                     "benchmark pub/sub, latency, RPC and the work queue",
                     "Measure 64-byte pub/sub throughput, open-loop one-way latency at a paced "
                     "rate (coordinated-omission corrected), RPC round trips and work-queue "
                     "throughput; optionally side by side with raw pyzmq (--peers). Prints a "
                     "table; writes JSON, an HdrHistogram interval log and a PNG when asked.")
    bn.add_argument("--quick", action="store_true", help="a short run (under 20 s)")
    bn.add_argument("--peers", action="store_true",
                    help="also run raw pyzmq side by side (and pynng, zenoh when installed)")
    bn.add_argument("--only", metavar="LIST", help="comma-separated: pubsub,latency,rpc,workqueue")
    bn.add_argument("--rate", type=float, default=None,
                    help="paced rate of the latency run, msg/s (10000)")
    bn.add_argument("--reps", type=int, default=None, help="repetitions (quick 1, full 3)")
    bn.add_argument("--json", metavar="FILE", help="write results as JSON")
    bn.add_argument("--hlog", metavar="FILE", help="write an HdrHistogram interval log")
    bn.add_argument("--plot", metavar="FILE.png",
                    help='write a PNG (needs matplotlib: pip install "pybus[plot]")')
