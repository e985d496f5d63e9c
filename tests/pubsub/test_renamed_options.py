"""Publisher options with units in their names (issue 12): "linger" means only ZeroMQ's LINGER
(``close_linger_ms``, ``close(linger_ms=)``); the batch hold time is ``batch_hold_us``; the
timeouts say seconds. The old spellings warn and keep working for one release."""

from __future__ import annotations

import uuid
import warnings

import pytest

import pybus


def _inproc() -> str:
    return f"inproc://renamed-{uuid.uuid4().hex}"


def _held_after_first(pub: pybus.Publisher, sub: pybus.Subscriber) -> int:
    """Publish one message (sent at once) then ten: how many the publisher still holds."""
    pub.wait_for_subscribers(1, timeout=10)
    pub.publish("t", b"first")
    assert sub.recv(timeout=10).payload == b"first"
    for i in range(10):
        pub.publish("t", bytes([i]))
    return int(pub.stats()["pending"])


def test_batch_hold_us_holds_and_linger_us_is_its_deprecated_name():
    ep = _inproc()
    with pybus.Subscriber(ep, topics=["t"], bind=True) as sub:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the new spelling says nothing
            pub = pybus.Publisher(ep, connect=True, batch_hold_us=5_000_000)
        with pub:
            assert _held_after_first(pub, sub) == 10
    ep = _inproc()
    with pybus.Subscriber(ep, topics=["t"], bind=True) as sub:
        with pytest.warns(DeprecationWarning, match=r"Publisher\(linger_us=\) is deprecated: "
                          r"use batch_hold_us="):
            pub = pybus.Publisher(ep, connect=True, linger_us=5_000_000)
        with pub:
            assert _held_after_first(pub, sub) == 10


@pytest.mark.parametrize("old,new", [("slow_consumer_timeout", "slow_consumer_timeout_s"),
                                     ("block_timeout", "block_timeout_s")])
def test_timeouts_in_seconds_keep_their_old_names_for_a_release(old, new):
    # the old name's value is checked as the new option's (the error names the new one)
    with pytest.warns(DeprecationWarning, match=rf"Publisher\({old}=\) is deprecated"), \
            pytest.raises(pybus.ValidationError, match=rf"{new} must be"):
        pybus.Publisher(_inproc(), **{old: -1.0})
    with pytest.raises(pybus.ValidationError, match=rf"{new} must be"):
        pybus.Publisher(_inproc(), **{new: -1.0})
    with pytest.warns(DeprecationWarning), \
            pytest.raises(pybus.ValidationError, match=rf"pass {new}= only"):
        pybus.Publisher(_inproc(), **{old: 1.0, new: 2.0})


def test_close_linger_ms_and_the_deprecated_seconds():
    pub = pybus.Publisher(_inproc())
    with pytest.raises(pybus.ValidationError, match="linger_ms must be an int >= 0"):
        pub.close(linger_ms=-1)
    with pytest.warns(DeprecationWarning), \
            pytest.raises(pybus.ValidationError, match="pass linger_ms= only"):
        pub.close(1.0, linger_ms=1000)
    assert not pub.closed  # a refused close leaves the publisher open
    with pytest.warns(DeprecationWarning, match=r"close\(linger=seconds\) is deprecated: "
                      r"use close\(linger_ms=milliseconds\)"):
        pub.close(linger=0.05)
    assert pub.closed
    other = pybus.Publisher(_inproc())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.close(linger_ms=0)
    assert other.closed
