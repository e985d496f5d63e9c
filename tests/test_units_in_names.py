"""Units are in the names (issue 12): every time-like option of a public class says its unit
(``_s``, ``_ms``, ``_us``), and "linger" means only ZeroMQ's LINGER. An old spelling is kept
for one release as a keyword that warns and carries the same value."""

from __future__ import annotations

import inspect
import re
import warnings

import pytest
import zmq

import pybus

TIME_LIKE = re.compile(r"timeout|interval|delay|linger|deadline|threshold_?s?$|^initial|^step")
UNITS = ("_s", "_ms", "_us", "_ns")
# the old spellings, each a keyword defaulting to None that warns (tested below)
DEPRECATED = {
    "Publisher": {"slow_consumer_timeout", "block_timeout", "linger_us"},
    "Client": {"timeout"},
    "AsyncClient": {"timeout"},
    "WorkQueue": {"heartbeat_interval", "ack_timeout", "put_timeout"},
    "Worker": {"heartbeat_interval", "ack_flush_interval"},
    "CircuitBreaker": {"slow_call_threshold", "reset_timeout"},
    "RetryPolicy": {"initial", "step", "max_delay", "deadline"},
}
NOT_TIME = {"failure_threshold", "success_threshold"}  # counts, not durations


def _public_classes():
    for name in pybus.__all__:
        obj = getattr(pybus, name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            yield name, obj


def test_every_time_like_option_names_its_unit():
    missing = []
    for name, cls in _public_classes():
        for p in inspect.signature(cls.__init__).parameters:
            if p in NOT_TIME or not TIME_LIKE.search(p) or p.endswith(UNITS):
                continue
            if p not in DEPRECATED.get(name, ()):
                missing.append(f"{name}({p}=)")
    assert missing == []


@pytest.mark.parametrize("cls_name", sorted(DEPRECATED))
def test_old_spellings_are_keywords_defaulting_to_none(cls_name):
    params = inspect.signature(getattr(pybus, cls_name).__init__).parameters
    for old in DEPRECATED[cls_name]:
        assert params[old].default is None, (cls_name, old)
        assert params[old].kind is inspect.Parameter.KEYWORD_ONLY, (cls_name, old)


def _warns_and_same(make_new, make_old, read):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling says nothing
        new = make_new()
    with pytest.warns(DeprecationWarning, match="is deprecated: use"):
        old = make_old()
    try:
        assert read(old) == read(new)
    finally:
        for obj in (new, old):
            close = getattr(obj, "close", None)
            if close is not None:
                close()


def test_retry_policy_old_names():
    _warns_and_same(lambda: pybus.RetryPolicy("linear", initial_s=0.2, step_s=0.3,
                                              max_delay_s=0.7, deadline_s=9.0),
                    lambda: pybus.RetryPolicy("linear", initial=0.2, step=0.3, max_delay=0.7,
                                              deadline=9.0),
                    lambda p: (list(p.delays())[:4], p.deadline_s))
    p = pybus.RetryPolicy.exponential(0.1, max_delay_s=2.0)
    with pytest.warns(DeprecationWarning, match=r"RetryPolicy\.max_delay is deprecated"):
        assert p.max_delay == 2.0


def test_circuit_breaker_old_names():
    _warns_and_same(lambda: pybus.CircuitBreaker(reset_timeout_s=7.0, slow_call_threshold_s=0.5,
                                                 registry=False),
                    lambda: pybus.CircuitBreaker(reset_timeout=7.0, slow_call_threshold=0.5,
                                                 registry=False),
                    lambda b: (b.reset_timeout_s, b.slow_call_threshold_s))


def test_client_old_timeout_name():
    ep = "inproc://units-client"
    ctx = zmq.Context()
    try:
        _warns_and_same(lambda: pybus.Client(ep, timeout_s=0.75, registry=False, context=ctx),
                        lambda: pybus.Client(ep, timeout=0.75, registry=False, context=ctx),
                        lambda c: c.timeout)
    finally:
        ctx.term()


def test_work_queue_old_timeout_names():
    _warns_and_same(
        lambda: pybus.WorkQueue("inproc://units-q1", ack_timeout_s=3.0, put_timeout_s=2.0,
                                registry=False),
        lambda: pybus.WorkQueue("inproc://units-q2", ack_timeout=3.0, put_timeout=2.0,
                                registry=False),
        lambda q: (q.ack_timeout_s, q.put_timeout_s))
