"""`pybus sub` under SIGTERM, as systemd or Kubernetes stop it: it prints what has arrived,
then exits 0; a second signal stops it at once."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pybus

WAIT_S = 30.0


def _read_until(stream, pattern: str, timeout_s: float) -> tuple[re.Match | None, str]:
    fd, text = stream.fileno(), ""
    deadline = time.monotonic() + timeout_s
    while True:
        m = re.search(pattern, text)
        left = deadline - time.monotonic()
        if m or left <= 0 or not select.select([fd], [], [], left)[0]:
            return m, text
        chunk = os.read(fd, 65536)
        if not chunk:
            return None, text
        text += chunk.decode(errors="replace")


def _start_sub(tmp_path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pybus.cli import main; raise SystemExit(main())", "sub",
         "tcp://127.0.0.1:*", "#", "--bind"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    m, err = _read_until(proc.stderr, r"pybus sub: bound (\S+)", WAIT_S)
    assert m, f"no bound endpoint on stderr: {err!r}"
    return proc, m.group(1)


def test_sub_prints_what_arrived_and_exits_zero_on_sigterm(tmp_path):
    proc, endpoint = _start_sub(tmp_path)
    pub = None
    try:
        pub = pybus.Publisher(endpoint, connect=True, registry=False)
        assert pub.wait_for_subscribers(1, timeout=WAIT_S) == 1
        for i in range(50):
            pub.publish("jobs.done", {"i": i})
        pub.flush()
        m, out = _read_until(proc.stdout, r'jobs\.done #50 \{"i": 49\}', WAIT_S)
        assert m, out[-500:]
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=WAIT_S)
    finally:
        if pub is not None:
            pub.close(linger_ms=0)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err
    lines = [ln for ln in (out + rest.decode()).splitlines() if ln.startswith("jobs.done ")]
    assert [ln.split(" ", 2)[2] for ln in lines] == [f'{{"i": {i}}}' for i in range(50)]
    assert b"pybus sub: SIGTERM: stopping gracefully" in err


def test_an_idle_sub_exits_zero_on_sigterm(tmp_path):
    proc, _endpoint = _start_sub(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        m, _err = _read_until(proc.stderr, r"stopping gracefully", WAIT_S)
        assert m
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
        proc.stdout.close()
        proc.stderr.close()
