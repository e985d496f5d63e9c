"""SIGTERM to a server process mid-burst (issue 13, graceful shutdown): the requests its
worker pool was handling get their replies, new ones get a retryable ClosedError (their
clients retry elsewhere) or nothing once it is gone, and it exits 0 within
drain_timeout_s + 1 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pybus

SERVER = textwrap.dedent("""
    import sys, time, pybus
    srv = pybus.Server("tcp://127.0.0.1:*", workers=4, drain_timeout_s=5, registry=False)
    srv.add_handler("slow", lambda x: (time.sleep(0.3), x)[1])
    print(srv.endpoint, flush=True)
    srv.serve_forever()
""")


def test_sigterm_answers_what_the_pool_holds_and_exits_zero(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    outcomes: list[tuple[float, float, str]] = []  # (sent, ended, outcome)
    lock = threading.Lock()
    stop = threading.Event()
    try:
        endpoint = ""
        while not endpoint.startswith("tcp://"):
            endpoint = proc.stdout.readline().strip()
            assert endpoint or proc.poll() is None, proc.stderr.read()

        def client(k: int) -> None:
            with pybus.Client(endpoint, timeout_s=5, registry=False) as c:
                i = 0
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        ok = c.request("slow", [k, i]) == [k, i]
                        what = "ok" if ok else "wrong"
                    except pybus.RemoteError as exc:
                        what = f"remote {exc.remote_type} {exc.retryable}"
                    except pybus.TimeoutError:
                        what = "timeout"
                    with lock:
                        outcomes.append((t0, time.monotonic(), what))
                    if what != "ok":
                        return
                    i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        pybus.testing.wait_until(lambda: len(outcomes) >= 8, timeout_s=60, what="8 replies")
        t_signal = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - t_signal
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0, err
    assert took <= 5 + 1, took
    assert "stopping gracefully" in err
    before = [what for sent, _end, what in outcomes if sent < t_signal]
    after = {what for sent, _end, what in outcomes if sent >= t_signal}
    # every request in flight at the signal was answered with its reply: none lost
    assert set(before) == {"ok"}, before
    assert after <= {"ok", "remote ClosedError True", "timeout"}, after
