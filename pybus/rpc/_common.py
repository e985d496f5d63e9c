"""What both ends of request/reply share besides the wire codec (that is
:mod:`pybus.wire.reqrep`): the plain-int socket flags, timeout validation, the latency
histograms' cap, the socket monitor's counters in ``stats()``, the metric samples and the
``with`` protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from .._deprecated import deprecated_attribute, renamed
from ..errors import ValidationError
from ..metrics.samples import NS, HdrValue, RawSample, transport_samples
from ..transport.sockets import SocketWatch, check_rpc_liveness

# Plain ints: pyzmq's flag constants are IntEnum members, converted on every call.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

#: Latencies above this (1 hour, in ns) are recorded as this.
LATENCY_MAX_NS = 3_600_000_000_000


def check_timeout(name: str, value: Any) -> float:
    """``value`` as a float of seconds, or ValidationError unless it is a number in (0, 1e9)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValidationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def watch_stats(watch: SocketWatch | None) -> dict[str, Any]:
    """The socket monitor's part of ``stats()``: ``peer_events`` (event name -> count) and
    ``peers`` (connections up; None without a monitor)."""
    if watch is None:
        return {"peer_events": {}, "peers": None}
    return {"peer_events": dict(watch.events), "peers": watch.peers}


class InFlightLimit:
    """``max_in_flight`` of an AsyncClient or a Server (requests in flight at once) and its
    deprecated old name ``max_inflight``, as a constructor argument and as an attribute."""

    max_in_flight: int

    @staticmethod
    def _in_flight_option(
        cls: str, max_in_flight: int, max_inflight: int | None, default: int, liveness: Any
    ) -> int:
        """The constructor's ``max_in_flight`` (given as itself or as ``max_inflight=``, with a
        DeprecationWarning), after the check of its ``liveness``, which both constructors share."""
        max_in_flight = renamed(cls, "max_inflight", max_inflight, "max_in_flight",
                                max_in_flight, default, depth=1)
        check_rpc_liveness(liveness)
        return max_in_flight

    @property
    def max_inflight(self) -> int:
        """Deprecated: :attr:`max_in_flight` (the old name; removed in the next release)."""
        return int(deprecated_attribute(self, "max_inflight", "max_in_flight"))


def rpc_samples(role: str, s: dict[str, Any], outcomes: Iterable[tuple[str, str]],
                more: Iterable[RawSample], latency: tuple[str, Any],
                security: Any) -> Iterator[RawSample]:
    """What a client or server reports (``metrics_samples``): ``pybus_rpc_requests_total``
    by role and outcome (``outcomes``: stats key -> outcome label), decode errors, the
    endpoint's ``more`` samples, its latency histogram (family, Histogram) and its socket
    monitor's samples; ``s`` is its ``stats()``."""
    for key, outcome in outcomes:
        yield "pybus_rpc_requests_total", {"role": role, "outcome": outcome}, s[key]
    yield "pybus_decode_errors_total", {}, s["decode_errors"]
    yield from more
    yield latency[0], {}, HdrValue(latency[1], NS)
    yield from transport_samples(s, security)
