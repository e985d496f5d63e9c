"""Find ZeroMQ sockets, contexts, threads and child processes a test left behind.

Used by the autouse ``_leak_guard`` fixture in ``conftest.py`` (as pyzmq's own test base
does for its tests), and unit-tested directly by ``test_leak_guard.py``::

    install()                      # once: start recording sockets / contexts / threads
    before = snapshot()
    ...                            # the test
    leaks = find_leaks(before)     # [] or one line per thing left open

What counts as a leak, for things created after ``before``:

- a ``zmq.Socket`` (not a shadow) still open, or garbage-collected without ``close()``
  (pyzmq's ``__del__`` then closes it: a leak that only the collector cleaned up);
- a ``zmq.Context`` not terminated, or collected without ``term()``/``destroy()``;
  ``Context.instance()`` is shared and may stay open (sockets on it may not);
- a live thread named ``pybus...`` or any live non-daemon thread;
- a child process still running, or exited and never waited for (a zombie).

Things that wind down asynchronously after ``close()`` (a server thread, a monitor socket the
pybus hub closes when its socket's monitor stops) get a grace period: threads are joined and
the rest re-checked until ``grace_s`` has passed in total, so a slow machine is not a leaky
one. A leak-free test pays only for the bookkeeping (a few microseconds per socket created).

A socket a test creates itself (not through pybus) gets ``RCVTIMEO`` = :data:`RAW_RCVTIMEO_MS`
unless the test sets its own, so a receive that would wait forever fails instead of hanging.

One piece of pybus state is long-lived by design and not a leak: the *hub* of a context that
outlives tests (``Context.instance()``) once it serves ZAP - its thread and its ZAP socket
live as long as that context.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import zmq

DEFAULT_GRACE_S = float(os.environ.get("PYBUS_LEAK_GRACE_S", "5"))

_seq = itertools.count(1)
_installed = False
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ZMQ_DIR = os.path.dirname(os.path.abspath(zmq.__file__)) + os.sep
_THIS = os.path.abspath(__file__)
_THREADING = os.path.abspath(threading.__file__)


@dataclass(eq=False)
class _Rec:
    """One socket or context created while recording."""

    seq: int
    kind: str  # "socket" or "context"
    ref: weakref.ref
    where: tuple[tuple[str, int, str], ...]
    label: str = ""
    endpoints: list[str] = field(default_factory=list)


#: RCVTIMEO given to every socket a test creates itself (not through pybus): a receive that
#: would block forever fails the test with zmq.Again after this long instead of hanging it.
RAW_RCVTIMEO_MS = 20_000

# seq -> record, in creation order; a record goes when its object does (weakref callback)
_SOCKETS: dict[int, _Rec] = {}
_CONTEXTS: dict[int, _Rec] = {}
# records of objects finalized (``__del__``) while still open: the leaks gc cleaned up
_COLLECTED: list[_Rec] = []


def _where(skip: int = 2) -> tuple[tuple[str, int, str], ...]:
    """The first caller outside pyzmq/this module, and the first frame in tests/ (cheap)."""
    out: list[tuple[str, int, str]] = []
    f: Any = sys._getframe(skip)
    n = 0
    while f is not None and n < 60:
        fn = f.f_code.co_filename
        if not (fn.startswith(_ZMQ_DIR) or fn == _THIS or fn == _THREADING):
            if not out:
                out.append((fn, f.f_lineno, f.f_code.co_name))
                if fn.startswith(_TESTS_DIR):
                    break
            elif fn.startswith(_TESTS_DIR):
                out.append((fn, f.f_lineno, f.f_code.co_name))
                break
        f = f.f_back
        n += 1
    return tuple(out)


def _fmt_where(where: tuple[tuple[str, int, str], ...]) -> str:
    if not where:
        return "?"
    root = os.path.dirname(_TESTS_DIR.rstrip(os.sep)) + os.sep
    return " <- ".join(
        f"{fn[len(root):] if fn.startswith(root) else fn}:{line} in {name}"
        for fn, line, name in where
    )


def _forget(table: dict[int, _Rec], seq: int) -> None:
    table.pop(seq, None)


def install() -> None:
    """Start recording every ``zmq.Socket``/``zmq.Context`` created and every thread started.

    Idempotent. Wraps ``__init__``/``__del__`` of pyzmq's Socket and Context, Socket's
    ``bind``/``connect`` (to name endpoints in reports) and ``threading.Thread.start`` (to say
    where a thread was started).
    """
    global _installed
    if _installed:
        return
    _installed = True

    sock_init, sock_del = zmq.Socket.__init__, zmq.Socket.__del__
    sock_bind, sock_connect = zmq.Socket.bind, zmq.Socket.connect
    ctx_init, ctx_del = zmq.Context.__init__, zmq.Context.__del__
    thread_start = threading.Thread.start

    def socket_init(self: zmq.Socket, *args: Any, **kwargs: Any) -> None:
        sock_init(self, *args, **kwargs)
        if self._shadow:
            return  # borrows another socket: closing it is that socket's owner's job
        seq = next(_seq)
        where = _where()
        if where and where[0][0].startswith(_TESTS_DIR):
            # A raw socket of the test's own: no receive on it may wait forever (a test that
            # means to wait longer sets its own RCVTIMEO; poll and NOBLOCK are not affected).
            self.rcvtimeo = RAW_RCVTIMEO_MS
        rec = _Rec(seq, "socket", weakref.ref(self, lambda _r, s=seq: _forget(_SOCKETS, s)),
                   where)
        self.__dict__["_leakcheck_rec"] = rec
        _SOCKETS[seq] = rec

    def socket_del(self: zmq.Socket) -> None:
        rec = self.__dict__.get("_leakcheck_rec")
        if rec is not None and not self._shadow and not self.closed:
            rec.label = _socket_label(self, rec)
            _COLLECTED.append(rec)
        sock_del(self)

    def _note(self: zmq.Socket, how: str, addr: Any) -> None:
        rec = self.__dict__.get("_leakcheck_rec")
        if rec is not None and len(rec.endpoints) < 4:
            rec.endpoints.append(f"{how} {addr}")

    def socket_bind(self: zmq.Socket, addr: str) -> Any:
        out = sock_bind(self, addr)
        _note(self, "bind", addr)
        return out

    def socket_connect(self: zmq.Socket, addr: str) -> Any:
        out = sock_connect(self, addr)
        _note(self, "connect", addr)
        return out

    def context_init(self: zmq.Context, *args: Any, **kwargs: Any) -> None:
        ctx_init(self, *args, **kwargs)
        if self._shadow:
            return
        seq = next(_seq)
        rec = _Rec(seq, "context", weakref.ref(self, lambda _r, s=seq: _forget(_CONTEXTS, s)),
                   _where())
        self.__dict__["_leakcheck_rec"] = rec
        _CONTEXTS[seq] = rec

    def context_del(self: zmq.Context) -> None:
        rec = self.__dict__.get("_leakcheck_rec")
        if rec is not None and not self._shadow and not self.closed:
            rec.label = f"{type(self).__module__}.{type(self).__name__}"
            _COLLECTED.append(rec)
        ctx_del(self)

    def start(self: threading.Thread) -> None:
        self.__dict__["_leakcheck_where"] = _where()
        thread_start(self)

    for obj, name, fn, orig in (
        (zmq.Socket, "__init__", socket_init, sock_init),
        (zmq.Socket, "__del__", socket_del, sock_del),
        (zmq.Socket, "bind", socket_bind, sock_bind),
        (zmq.Socket, "connect", socket_connect, sock_connect),
        (zmq.Context, "__init__", context_init, ctx_init),
        (zmq.Context, "__del__", context_del, ctx_del),
        (threading.Thread, "start", start, thread_start),
    ):
        fn.__wrapped__ = orig  # type: ignore[attr-defined]
        fn.__doc__ = orig.__doc__
        setattr(obj, name, fn)


def _socket_label(sock: zmq.Socket, rec: _Rec) -> str:
    kind = getattr(sock, "_type_name", "?")
    eps = list(rec.endpoints)
    if not eps:
        try:
            last = sock.getsockopt(zmq.LAST_ENDPOINT)
            if last:
                eps.append(f"bind {last.decode(errors='replace')}")
        except Exception:
            pass
    return f"{kind} socket" + (f" ({', '.join(eps)})" if eps else " (no bind/connect)")


@dataclass(frozen=True)
class Snapshot:
    seq: int
    threads: frozenset[threading.Thread]
    children: frozenset[int]


def snapshot() -> Snapshot:
    """What exists now; :func:`find_leaks` reports what was created after it."""
    return Snapshot(next(_seq), frozenset(threading.enumerate()), frozenset(_children()))


def forget_collected(upto_seq: int | None = None) -> None:
    """Drop collected-while-open records created before ``upto_seq`` (default: all), once
    judged."""
    _COLLECTED[:] = [] if upto_seq is None else [r for r in _COLLECTED if r.seq >= upto_seq]


# --- child processes (Linux /proc; elsewhere this part finds nothing) -------------------

def _children() -> set[int]:
    out: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _proc_info(pid: int) -> tuple[str, str] | None:
    """(state letter, command line) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        state = stat[stat.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return state, cmd


# helper processes the standard library keeps for the whole run, by design
_LONG_LIVED_CHILDREN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


# --- long-lived pybus state ---------------------------------------------------------------

def _shared_context(ctx: Any) -> bool:
    return ctx is not None and getattr(type(ctx), "_instance", None) is ctx and not ctx.closed


def _hub_allowances() -> tuple[set[int], set[threading.Thread]]:
    """ZAP sockets and hub threads of shared contexts (alive as long as the context)."""
    socks: set[int] = set()
    threads: set[threading.Thread] = set()
    mod = sys.modules.get("pybus.transport.sockets")
    if mod is None:
        return socks, threads
    with mod._HUBS_LOCK:
        hubs = list(mod._HUBS.values())
    for hub in hubs:
        if _shared_context(hub._ctx_ref()) and hub._zap is not None:
            socks.add(id(hub._zap))
            threads.add(hub._thread)
    return socks, threads


# --- the check ------------------------------------------------------------------------------

def _suspect_thread(t: threading.Thread) -> bool:
    if isinstance(t, threading._DummyThread) or t is threading.main_thread():
        return False
    return t.name.startswith("pybus") or not t.daemon


def _describe_thread(t: threading.Thread) -> str:
    target = getattr(t, "_target", None)
    tgt = ""
    if target is not None:
        tgt = f", target {getattr(target, '__module__', '?')}." \
              f"{getattr(target, '__qualname__', repr(target))}"
    where = t.__dict__.get("_leakcheck_where")
    return (f"thread {t.name!r} ({'daemon' if t.daemon else 'non-daemon'}{tgt}), "
            f"started at {_fmt_where(where) if where else '?'}")


def _keys(table: dict[int, _Rec]) -> list[int]:
    """The table's keys; a weakref callback (another thread, or gc) may change it meanwhile."""
    for _ in range(10):
        try:
            return list(table)
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return list(table.copy())


def _open_sockets(since: int, allowed: set[int]) -> list[tuple[_Rec, zmq.Socket]]:
    out = []
    for seq in reversed(_keys(_SOCKETS)):
        if seq <= since:
            break
        rec = _SOCKETS.get(seq)
        sock = rec.ref() if rec is not None else None
        if sock is not None and not sock.closed and id(sock) not in allowed:
            out.append((rec, sock))
    return out


def _open_contexts(since: int) -> list[tuple[_Rec, zmq.Context]]:
    out = []
    for seq in reversed(_keys(_CONTEXTS)):
        if seq <= since:
            break
        rec = _CONTEXTS.get(seq)
        ctx = rec.ref() if rec is not None else None
        if ctx is not None and not ctx.closed and not _shared_context(ctx):
            out.append((rec, ctx))
    return out


def find_leaks(before: Snapshot, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """One line per socket, context, thread or child process left open since ``before``.

    Waits up to ``grace_s`` in total for things that are still winding down (threads are
    joined, sockets, contexts and children re-checked every 20 ms); returns at once when
    nothing is left.
    """
    deadline = time.monotonic() + grace_s

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    _, hub_threads = _hub_allowances()
    threads = [t for t in threading.enumerate()
               if t not in before.threads and t not in hub_threads and _suspect_thread(t)]
    for t in threads:
        t.join(remaining())
    _, hub_threads = _hub_allowances()
    leaks = [_describe_thread(t) for t in threads if t.is_alive() and t not in hub_threads]

    def pending() -> tuple[list[Any], list[Any], list[int]]:
        allowed, _ = _hub_allowances()
        kids = [p for p in _children() - before.children if _proc_child_suspect(p)]
        return _open_sockets(before.seq, allowed), _open_contexts(before.seq), kids

    socks, ctxs, kids = pending()
    while (socks or ctxs or kids) and remaining() > 0:
        time.sleep(min(0.02, remaining()))
        socks, ctxs, kids = pending()

    for rec, sock in reversed(socks):
        leaks.append(f"{_socket_label(sock, rec)} not closed, created at {_fmt_where(rec.where)}")
    for rec in _COLLECTED:
        if rec.seq > before.seq:
            leaks.append(f"{rec.label} never closed: garbage collection closed it, created at "
                         f"{_fmt_where(rec.where)}")
    for rec, ctx in reversed(ctxs):
        leaks.append(f"{type(ctx).__module__}.{type(ctx).__name__} not terminated, created at "
                     f"{_fmt_where(rec.where)}")
    for pid in sorted(kids):
        info = _proc_info(pid)
        if info is None:
            continue
        state, cmd = info
        what = "zombie (exited, never waited for)" if state == "Z" else f"running (state {state})"
        leaks.append(f"child process {pid} {what}: {cmd[:200]!r}")
    return leaks


def _proc_child_suspect(pid: int) -> bool:
    info = _proc_info(pid)
    if info is None:
        return False
    return not any(s in info[1] for s in _LONG_LIVED_CHILDREN)
