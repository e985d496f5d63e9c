"""Issue 15's fault bars with real processes: per-key order holds with workers SIGKILLed
mid-burst; with an idempotency store no handler runs again for a message whose effect was
committed, though workers die between that commit and the ack; priorities hold under a
saturating load after a SIGKILLed producer, with workers SIGKILLed too."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import pytest

from pybus import WorkQueue

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
import wqprocs  # noqa: E402

pytestmark = pytest.mark.timeout(120)
SPAWN = mp.get_context("spawn")
WAIT_S = 60.0


@pytest.fixture
def tmp_dir():
    d = tempfile.mkdtemp(prefix="pbks")  # short: ipc paths are bounded
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _kill(p) -> None:  # type: ignore[no-untyped-def]
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join(10)


class _Crew:
    """A test's worker processes, each with a log file of its own: started, SIGKILLed on a
    schedule or replaced when they die, all killed at the end. ``make_args(log_path)`` gives
    a new worker's arguments."""

    def __init__(self, tmp_dir: str, target: Any, make_args: Any) -> None:
        self.tmp_dir, self.target, self.make_args = tmp_dir, target, make_args
        self.procs: list[Any] = []
        self.logs: list[str] = []

    def spawn(self, n: int = 1) -> None:
        for _ in range(n):
            self.logs.append(f"{self.tmp_dir}/w{len(self.logs)}.log")
            p = SPAWN.Process(target=self.target, args=self.make_args(self.logs[-1]))
            p.start()
            self.procs.append(p)

    def join(self, q: WorkQueue, kill_every_s: float | None = None) -> int:
        """Until ``q`` has finished everything (bounded): one live worker SIGKILLed every
        ``kill_every_s`` and another started, and any worker that died replaced. Returns
        the kills."""
        kills = 0
        deadline = time.monotonic() + WAIT_S
        next_kill = time.monotonic() + (kill_every_s or 0.0)
        while not q.join(timeout=0.05):
            assert time.monotonic() < deadline, q.stats()
            if kill_every_s is not None and time.monotonic() >= next_kill:
                victim = next(p for p in self.procs if p.is_alive())
                _kill(victim)
                self.procs.remove(victim)
                kills += 1
                self.spawn()
                next_kill += kill_every_s
            for p in list(self.procs):
                if not p.is_alive() and p.exitcode is not None:
                    self.procs.remove(p)
                    self.spawn()  # a worker that died (or killed itself) is replaced
        return kills

    def kill_all(self) -> None:
        for p in self.procs:
            _kill(p)


def _check_key_order(logs: list[str], n_keys: int, per_key: int) -> int:
    """Each key's handler runs, from every worker's log on one clock: in put order, never
    two at once, each message finished at least once. Returns the runs that were repeated."""
    runs: dict[bytes, list[tuple[int, int, int | None]]] = defaultdict(list)  # (start, seq, end)
    for path in logs:
        if not os.path.exists(path):  # killed before it opened its log
            continue
        open_runs: dict[tuple[bytes, int], int] = {}
        with open(path, "rb") as f:
            for line in f:
                kind, key, seq_b, t_b = line.split()
                seq, t = int(seq_b), int(t_b)
                if kind == b"S":
                    runs[key].append((t, seq, None))
                    open_runs[(key, seq)] = len(runs[key]) - 1
                else:
                    i = open_runs.pop((key, seq))
                    runs[key][i] = (runs[key][i][0], seq, t)
    assert len(runs) == n_keys
    repeats = 0
    for key, rs in runs.items():
        rs.sort()
        finished = {seq for _, seq, end in rs if end is not None}
        assert finished == set(range(per_key)), (key, sorted(finished))
        for (_s0, q0, e0), (s1, q1, _e1) in zip(rs, rs[1:], strict=False):
            assert q1 in (q0, q0 + 1), f"key {key!r}: message {q1} ran after {q0}"
            if e0 is not None:
                assert e0 <= s1, f"key {key!r}: {q0} and {q1} ran at once"
            if q1 == q0 + 1:
                assert e0 is not None, f"key {key!r}: {q1} started before {q0} finished"
            else:
                repeats += 1
    return repeats


def test_per_key_order_holds_with_workers_sigkilled_mid_burst(tmp_dir) -> None:
    n_keys, per_key, n_workers = 1000, 20, 8
    q = WorkQueue(f"ipc://{tmp_dir}/q", heartbeat_interval_s=0.1, registry=False)
    crew = _Crew(tmp_dir, wqprocs.keyed_worker_proc, lambda log: (q.endpoint, log, 0.004))
    try:
        # keys in groups of 10, each group's messages put one round after another: a key's
        # next message is 10 puts behind, inside the batches a worker takes (without the
        # keys, workers would run a key's messages at once and out of order)
        for group in range(0, n_keys, 10):
            for i in range(per_key):
                for k in range(group, group + 10):
                    q.put("keys.t", b"k%d:%d" % (k, i), key=f"k{k}")
        crew.spawn(n_workers)
        kills = crew.join(q, kill_every_s=1.0)
        st = q.stats()
        assert kills >= 2 and st["workers_lost"] >= 2, (kills, st)
        assert st["redelivered"] > 0  # the kills took messages in flight with them
        repeats = _check_key_order(crew.logs, n_keys, per_key)
        assert repeats <= st["redelivered"]
        assert st["keys_held"] == 0 and st["keys_waiting"] == 0
    finally:
        crew.kill_all()
        q.close()


def test_no_handler_runs_again_for_a_committed_message(tmp_dir) -> None:
    store_path = f"{tmp_dir}/effects.db"
    db = sqlite3.connect(store_path)
    db.execute("CREATE TABLE effects (msg TEXT NOT NULL, at_ns INTEGER NOT NULL)")
    db.commit()
    n, n_die, n_workers = 1000, 8, 4
    q = WorkQueue(f"ipc://{tmp_dir}/q", heartbeat_interval_s=0.1, registry=False)
    crew = _Crew(tmp_dir, wqprocs.idempotent_worker_proc,
                 lambda log: (q.endpoint, store_path, log))
    try:
        for i in range(n):
            q.put("idem.t", b"die%d" % i if i % (n // n_die) == 7 else b"m%d" % i)
        crew.spawn(n_workers)
        crew.join(q)  # a worker that killed itself is replaced
        st = q.stats()
        assert st["workers_lost"] >= n_die, st
        # every "die" message was committed, its worker killed before the ack, and its
        # redelivery acked as a duplicate without running the handler
        assert st["duplicates"] >= n_die, st
        effects = db.execute("SELECT msg, at_ns FROM effects").fetchall()
        assert len(effects) == n == len({m for m, _ in effects})  # each effect once
        committed_at = dict(effects)
        reruns = []
        for path in filter(os.path.exists, crew.logs):
            with open(path, "rb") as f:
                for line in f:
                    key, t = line.split()
                    if committed_at[key.decode()] < int(t):
                        reruns.append(key)
        assert reruns == []
    finally:
        crew.kill_all()
        q.close()
        db.close()


def test_priorities_hold_under_saturation_with_sigkilled_producer_and_workers(tmp_dir) -> None:
    """A producer puts 3,000 messages of random priorities on its journal and is SIGKILLed; the
    queue reopened on the journal feeds 4 workers that hold at most 8 each (credit always
    used up), one SIGKILLed every second. Every worker starts its first deliveries in
    non-increasing priority: no lower priority went out while a higher one waited (aging is
    off here, so the rule is plain "highest first")."""
    import random

    rng = random.Random(11)
    prios = [rng.randrange(10) for _ in range(3000)]
    journal = f"{tmp_dir}/prio.db"
    parent, child = SPAWN.Pipe()
    producer = SPAWN.Process(target=wqprocs.priority_producer_proc,
                             args=(f"ipc://{tmp_dir}/p0", journal, prios, child))
    producer.start()
    try:
        assert parent.poll(WAIT_S) and parent.recv() == "all put"
    finally:
        _kill(producer)  # SIGKILL: the journal is all that is left
    q = WorkQueue(f"ipc://{tmp_dir}/q", journal=journal, heartbeat_interval_s=0.1,
                  priority_aging_n=10**9, registry=False)
    crew = _Crew(tmp_dir, wqprocs.logging_worker_proc, lambda log: (q.endpoint, log, 8, 0.004))
    try:
        assert q.stats()["recovered"] == 3000
        crew.spawn(4)
        assert crew.join(q, kill_every_s=1.0) >= 2
        handled: set[int] = set()
        for path in filter(os.path.exists, crew.logs):
            firsts = []
            with open(path, "rb") as f:
                for line in f:
                    payload, delivery = line.split()
                    prio, i = map(int, payload.split(b":"))
                    assert prios[i] == prio
                    handled.add(i)
                    if delivery == b"1":
                        firsts.append(prio)
            assert firsts == sorted(firsts, reverse=True), (path, firsts)
        assert handled == set(range(3000))
    finally:
        crew.kill_all()
        q.close()
