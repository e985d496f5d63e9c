"""Testing kit: test code that uses pybus without sockets where it can, and without timing
games where it cannot (docs/testing.md).

- :class:`Bus`: one test's own context and fresh ``inproc://`` endpoints, with factories for
  every endpoint class and one ``close()`` for all (the ``bus`` pytest fixture);
- :func:`expect_messages`, :func:`wait_until`: waits with deadlines, never fixed sleeps;
- :func:`call`: a Server's handler as a client would call it; :func:`run_handler`: a Worker's
  handler as the queue would deliver to it (real codec and error mapping, no socket);
- :class:`FakeClock`: time for retry policies and circuit breakers that moves when told.

The pytest plugin (:mod:`pybus.testing.plugin`) is registered through the ``pytest11`` entry
point: installing pybus makes the ``bus`` and ``fake_clock`` fixtures available.
"""

from __future__ import annotations

from .bus import Bus
from .calls import WorkOutcome, call, run_handler
from .clock import FakeClock
from .waits import expect_messages, wait_until

__all__ = ["Bus", "FakeClock", "WorkOutcome", "call", "expect_messages", "run_handler",
           "wait_until"]
