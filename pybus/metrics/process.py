"""Process metrics (psutil): CPU seconds, RSS bytes, open fds and sockets, threads."""

from __future__ import annotations

import os
import threading

import psutil

_lock = threading.Lock()
_proc: psutil.Process | None = None
_pid = -1


def _process() -> psutil.Process:
    global _proc, _pid
    with _lock:
        # Re-create after fork: a psutil.Process is bound to a pid.
        if _proc is None or _pid != os.getpid():
            _proc = psutil.Process()
            _pid = os.getpid()
        return _proc


def _count_sockets(p: psutil.Process) -> int | None:
    # On Linux, /proc/<pid>/fd links name sockets "socket:[inode]"; reading the links is much
    # cheaper than psutil.net_connections(), which parses the system-wide /proc/net tables.
    fd_dir = f"/proc/{p.pid}/fd"
    if os.path.isdir(fd_dir):
        n = 0
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}").startswith("socket:"):
                    n += 1
            except OSError:  # closed between listdir and readlink
                pass
        return n
    try:
        return len(p.net_connections(kind="all"))
    except (psutil.Error, AttributeError):
        return None


def process_samples() -> list[tuple[str, float]]:
    """``(family, value)`` for the pybus_process_* families; a field psutil cannot read on this
    platform is left out rather than reported as 0."""
    p = _process()
    out: list[tuple[str, float]] = []
    with p.oneshot():
        try:
            t = p.cpu_times()
            out.append(("pybus_process_cpu_seconds_total", t.user + t.system))
        except psutil.Error:
            pass
        try:
            out.append(("pybus_process_resident_memory_bytes", p.memory_info().rss))
        except psutil.Error:
            pass
        try:
            out.append(("pybus_process_open_fds", p.num_fds()))
        except (psutil.Error, AttributeError):  # num_fds is POSIX only
            pass
        sockets = _count_sockets(p)
        if sockets is not None:
            out.append(("pybus_process_open_sockets", sockets))
        try:
            out.append(("pybus_process_threads", p.num_threads()))
        except psutil.Error:
            pass
    return out
