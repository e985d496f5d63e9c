"""pybus.Histogram against the `hdrhistogram` package (module hdrh) as an independent oracle."""

from __future__ import annotations

import array
import base64
import copy
import math
import pickle
import struct
import zlib

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybus
from pybus import FrameError, Histogram, HistogramRangeError, ValidationError

HOUR_NS = 3_600_000_000_000
PERCENTILES = [
    0.0,
    0.1,
    1.0,
    10.0,
    25.0,
    33.3,
    50.0,
    66.6,
    75.0,
    90.0,
    95.0,
    99.0,
    99.5,
    99.9,
    99.99,
    100.0,
]

# (lowest, highest, significant_figures): every sig-fig setting, small and large ranges,
# a lowest that is not a power of two. Kept so hdrh's pure-Python scans stay quick.
LAYOUTS = [
    (1, HOUR_NS, 1),
    (1, HOUR_NS, 2),
    (1, HOUR_NS, 3),
    (1000, HOUR_NS, 3),
    (1, 10_000_000, 3),
    (3, 100_000_000, 4),
    (7, 1_000_000, 5),
]


def _data(kind: str, highest: int, n: int = 3000, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = min(highest, 10**12)
    v: np.ndarray
    if kind == "uniform":
        v = rng.integers(0, top, n)
    elif kind == "lognormal":
        v = rng.lognormal(math.log(max(top / 1000, 2)), 1.5, n)
    elif kind == "bimodal":
        a = rng.normal(top / 100, top / 1000, n // 2)
        b = rng.normal(top / 5, top / 50, n - n // 2 - 5)
        outliers = rng.integers(top // 2, top, 5)
        v = np.concatenate([a, b, outliers])
    elif kind == "constant":
        v = np.full(n, min(12345, top))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return np.clip(np.asarray(v, dtype=np.float64), 0, highest).astype(np.int64)


def _oracle(lowest: int, highest: int, sig: int, values) -> HdrHistogram:
    o = HdrHistogram(lowest, highest, sig)
    for v in values:
        assert o.record_value(int(v))
    return o


def _assert_same(ours: Histogram, o: HdrHistogram, ps=PERCENTILES) -> None:
    assert ours.total_count == o.get_total_count()
    assert ours.min == o.get_min_value()
    assert ours.max == o.get_max_value()
    assert ours.mean == o.get_mean_value()
    assert ours.stddev == o.get_stddev()
    expected = o.get_percentile_to_value_dict(ps)
    assert {p: ours.percentile(p) for p in ps} == expected
    assert ours.percentiles(ps) == expected
    assert list(ours.iter_buckets()) == [
        (it.value_iterated_to, it.count_added_in_this_iter_step) for it in o.get_recorded_iterator()
    ]


# ---- layout and equivalent ranges -----------------------------------------------------


@pytest.mark.parametrize("lowest,highest,sig", LAYOUTS + [(1023, HOUR_NS, 2), (1024, 10**9, 1)])
def test_equivalent_ranges_match_hdrh(lowest, highest, sig):
    o = HdrHistogram(lowest, highest, sig)
    h = Histogram(lowest, highest, sig)
    rng = np.random.default_rng(lowest + sig)
    values = [
        0,
        1,
        lowest,
        2 * lowest - 1,
        2047,
        2048,
        2049,
        highest,
        *(int(x) for x in rng.integers(0, highest, 300)),
    ]
    for v in values:
        assert h.equivalent_range(v) == (
            o.get_lowest_equivalent_value(v),
            o.get_highest_equivalent_value(v),
        ), v


@pytest.mark.parametrize("lowest,highest,sig", LAYOUTS)
def test_range_limit_is_the_end_of_the_last_bucket(lowest, highest, sig):
    o = HdrHistogram(lowest, highest, sig)
    limit = o.get_highest_equivalent_value(o.get_value_from_index(o.counts_len - 1))
    h = Histogram(lowest, highest, sig)
    h.record(limit)
    with pytest.raises(HistogramRangeError, match=rf"\[0, {limit}\]"):
        h.record(limit + 1)
    assert o.record_value(limit) and not o.record_value(limit + 1)


# ---- agreement with hdrh on data -------------------------------------------------------


# hdrh's mean, stddev and recorded iterator scan every counter in Python (0.4 s a pass at
# 5 figures): the 4- and 5-figure layouts get the distribution with outliers only.
STAT_CASES = [
    (kind, *layout)
    for layout in LAYOUTS
    for kind in (["uniform", "lognormal", "bimodal", "constant"] if layout[2] <= 3 else ["bimodal"])
]


@pytest.mark.parametrize("kind,lowest,highest,sig", STAT_CASES)
def test_statistics_match_hdrh(kind, lowest, highest, sig):
    values = _data(kind, highest)
    h = Histogram(lowest, highest, sig)
    assert h.record_many(values) == 0
    _assert_same(h, _oracle(lowest, highest, sig, values))


def test_record_one_by_one_equals_record_many():
    values = _data("lognormal", HOUR_NS)
    a, b = Histogram(), Histogram()
    for v in values.tolist():
        a.record(v)
    b.record_many(values)
    assert list(a) == list(b) and a.encode() == b.encode()


def test_percentile_equals_hdrh_get_value_at_percentile():
    values = _data("bimodal", HOUR_NS, n=20_000)
    h = Histogram()
    h.record_many(values)
    o = _oracle(1, HOUR_NS, 3, values)
    rng = np.random.default_rng(3)
    for p in [*PERCENTILES, *rng.uniform(0, 100, 40).tolist()]:
        assert h.percentile(p) == o.get_value_at_percentile(p), p


def test_empty_histogram_matches_hdrh():
    h, o = Histogram(), HdrHistogram(1, HOUR_NS, 3)
    assert (h.total_count, h.min, h.max, h.mean, h.stddev) == (0, 0, 0, 0.0, 0.0)
    assert h.percentile(99) == o.get_value_at_percentile(99) == 0
    assert list(h) == []


def test_zero_and_sub_lowest_values_count_as_zero_like_hdrh():
    h, o = Histogram(1000, HOUR_NS, 3), HdrHistogram(1000, HOUR_NS, 3)
    for v in (0, 5, 511, 512, 100_000):
        h.record(v)
        o.record_value(v)
    _assert_same(h, o)
    assert h.min == 0


def test_record_n_matches_hdrh_counts():
    h, o = Histogram(), HdrHistogram(1, HOUR_NS, 3)
    for v, c in [(10, 5), (1_000_000, 1000), (42, 1), (7_000_000_000, 3)]:
        h.record_n(v, c)
        o.record_value(v, c)
    h.record_n(99, 0)  # a zero count records nothing (not even min/max)
    _assert_same(h, o)
    with pytest.raises(ValidationError, match="count must be >= 0"):
        h.record_n(5, -1)
    with pytest.raises(HistogramRangeError):
        h.record_n(-5, 1)
    assert h.total_count == o.get_total_count()


# ---- coordinated-omission correction ----------------------------------------------------

CORRECTED = [
    (10, 3),
    (9, 3),
    (100, 10),
    (1_000_000, 1000),
    (5_000_123, 250_000),
    (7, 10),
    (7, 0),
    (123_456, 1),
]


def test_record_corrected_rule_restated():
    """The rule: record v, then v - k*i for k >= 1 while > 0 (re-stated independently)."""
    h = Histogram()
    o = HdrHistogram(1, HOUR_NS, 3)
    for value, interval in CORRECTED:
        h.record_corrected(value, interval)
        o.record_value(value)
        if interval > 0:
            missing = value - interval
            while missing > 0:
                o.record_value(missing)
                missing -= interval
    _assert_same(h, o)


@pytest.mark.parametrize("value,interval", CORRECTED)
def test_record_corrected_vs_hdrh_record_corrected_value(value, interval):
    """Equal to hdrh's record_corrected_value, the interoperability oracle."""
    h = Histogram()
    h.record_corrected(value, interval)
    o = HdrHistogram(1, HOUR_NS, 3)
    o.record_corrected_value(value, interval)
    _assert_same(h, o)


def test_record_corrected_out_of_range_records_nothing():
    h = Histogram(1, 1000, 3)
    with pytest.raises(HistogramRangeError, match="outside"):
        h.record_corrected(5000, 100)
    assert h.total_count == 0


# ---- record_many --------------------------------------------------------------------------


def test_record_many_numpy_and_array_with_out_of_range():
    h = Histogram(1, 1_000_000, 3)
    values = np.array([5, -1, 999_999, 10**12, 2**63 - 1, -(2**63), 1000], dtype=np.int64)
    assert h.record_many(values) == 4
    assert h.out_of_range == 4
    assert h.record_many(array.array("q", [1, 2, -3, 4])) == 1
    assert h.out_of_range == 5
    assert h.total_count == 3 + 3
    o = _oracle(1, 1_000_000, 3, [5, 999_999, 1000, 1, 2, 4])
    _assert_same(h, o)
    assert h.record_many(np.array([], dtype=np.int64)) == 0
    assert h.record_many(memoryview(array.array("q", [7, 8]))) == 0
    assert h.total_count == 8


def test_record_many_strided_and_readonly_buffers():
    values = _data("lognormal", HOUR_NS, n=5001)
    a, b = Histogram(), Histogram()
    a.record_many(values[::3])  # strided view: gathered in chunks
    b.record_many(np.ascontiguousarray(values[::3]))
    assert a.encode() == b.encode() and a.total_count == len(values[::3])
    ro = values.copy()
    ro.flags.writeable = False
    c = Histogram()
    c.record_many(ro)
    c.record_many(memoryview(values.tobytes()).cast("q"))
    assert c.total_count == 2 * len(values)


def test_record_many_rejects_non_int64_buffers():
    h = Histogram()
    with pytest.raises(ValueError):
        h.record_many(np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        h.record_many(np.array([1, 2], dtype=np.int32))
    with pytest.raises(ValueError):
        h.record_many(np.zeros((2, 2), dtype=np.int64))
    assert h.total_count == 0


# ---- merge / reset / copy / pickle ---------------------------------------------------------


def test_merge_equals_recording_everything_in_one():
    x, y = _data("lognormal", HOUR_NS, seed=1), _data("bimodal", HOUR_NS, seed=2)
    a, b, both = Histogram(), Histogram(), Histogram()
    a.record_many(x)
    b.record_many(y)
    both.record_many(np.concatenate([x, y]))
    a.merge(b)
    assert a.encode() == both.encode()
    _assert_same(a, _oracle(1, HOUR_NS, 3, np.concatenate([x, y])))
    assert b.total_count == len(y)  # the source is untouched


def test_merge_different_layout_matches_hdrh_add():
    x, y = _data("uniform", 10**9, seed=4), _data("lognormal", 10**9, seed=5)
    ours, other = Histogram(1, HOUR_NS, 3), Histogram(1000, 10**10, 2)
    ours.record_many(x)
    other.record_many(y)
    o, o_other = _oracle(1, HOUR_NS, 3, x), _oracle(1000, 10**10, 2, y)
    ours.merge(other)
    o.add(o_other)
    _assert_same(ours, o)


def test_merge_refuses_values_that_do_not_fit_and_merges_nothing():
    small, big = Histogram(1, 10_000, 3), Histogram()
    small.record(5)
    big.record_many(np.array([5, 10**9], dtype=np.int64))
    with pytest.raises(HistogramRangeError, match="cannot merge"):
        small.merge(big)
    assert small.total_count == 1
    with pytest.raises(TypeError):
        small.merge("not a histogram")


def test_merge_with_itself_doubles():
    h = Histogram()
    h.record_many(_data("uniform", HOUR_NS))
    before = dict(h.iter_buckets())
    h.merge(h)
    assert dict(h.iter_buckets()) == {v: 2 * c for v, c in before.items()}


def test_reset_copy_pickle_repr():
    h = Histogram(10, 10**8, 2)
    h.record_many(np.array([10, 200, 3000, -1], dtype=np.int64))
    c = h.copy()
    p = pickle.loads(pickle.dumps(h))
    d = copy.deepcopy(h)
    h.reset()
    assert h.total_count == 0 and h.out_of_range == 0 and list(h) == [] and h.max == 0
    for other in (c, p, d):
        assert other.total_count == 3 and other.out_of_range == 1
        assert (other.lowest, other.highest, other.significant_figures) == (10, 10**8, 2)
        assert other.percentile(100) == HdrHistogram(10, 10**8, 2).get_highest_equivalent_value(
            3000
        )
    assert "significant_figures=2" in repr(c) and "total_count=3" in repr(c)
    h.record(77)
    assert c.total_count == 3  # copies are independent


# ---- encode / decode ------------------------------------------------------------------


def _raw_payload(encoded) -> bytes:
    env = base64.b64decode(encoded)
    return zlib.decompress(env[8:])


@pytest.mark.parametrize("kind", ["lognormal", "bimodal", "constant"])
@pytest.mark.parametrize("lowest,highest,sig", LAYOUTS[:5])
def test_encoding_interoperates_with_hdrh(kind, lowest, highest, sig):
    values = _data(kind, highest, n=2000)
    h = Histogram(lowest, highest, sig)
    h.record_many(values)
    o = _oracle(lowest, highest, sig, values)
    ours = h.encode()
    assert ours.startswith("HISTF")
    # The uncompressed V2 payloads are byte-identical (only zlib's level differs).
    assert _raw_payload(ours) == _raw_payload(o.encode())
    _assert_same(h, HdrHistogram.decode(ours))
    back = Histogram.decode(o.encode())
    _assert_same(back, o)
    assert (back.lowest, back.highest, back.significant_figures) == (lowest, highest, sig)
    assert Histogram.decode(ours.encode("ascii")).encode() == ours


def test_encode_empty_and_decode_hdrh_empty():
    h = Histogram()
    assert HdrHistogram.decode(h.encode()).get_total_count() == 0
    e = Histogram.decode(HdrHistogram(1, HOUR_NS, 3).encode())
    assert e.total_count == 0 and list(e) == []


def _envelope(payload: bytes, cookie: int = 0x1C849314) -> str:
    packed = zlib.compress(payload)
    return base64.b64encode(struct.pack(">Ii", cookie, len(packed)) + packed).decode()


def _header(payload_len=0, sig=3, lowest=1, highest=HOUR_NS, cookie=0x1C849313, offset=0):
    return struct.pack(">IIiiqqd", cookie, payload_len, offset, sig, lowest, highest, 1.0)


def test_decode_rejects_malformed_input():
    good = Histogram()
    good.record_many(_data("lognormal", HOUR_NS, n=500))
    text = good.encode()
    env = base64.b64decode(text)
    raw = _raw_payload(text)
    cases = {
        "not valid base64": "this is not base64!!",
        "non-ASCII": "HISTF\u00e9AAA",
        "envelope alone needs": base64.b64encode(b"\x1c\x84").decode(),
        "bad cookie": base64.b64encode(b"\x00" * 64).decode(),
        "declares": base64.b64encode(env[:-3]).decode(),  # truncated
        "not valid zlib": base64.b64encode(env[:8] + b"\x00" * (len(env) - 8)).decode(),
    }
    for why, bad in cases.items():
        with pytest.raises(FrameError, match=why):
            Histogram.decode(bad)
    # An uncompressed payload wrapped where the compressed envelope belongs.
    with pytest.raises(FrameError, match="bad cookie"):
        Histogram.decode(base64.b64encode(raw).decode())
    # Envelope fine, payload wrong.
    with pytest.raises(FrameError, match="invalid layout"):
        Histogram.decode(_envelope(_header(sig=9)))
    with pytest.raises(FrameError, match="invalid layout"):
        Histogram.decode(_envelope(_header(lowest=100, highest=150)))
    with pytest.raises(FrameError, match="shorter than"):
        Histogram.decode(_envelope(raw[:30]))
    with pytest.raises(FrameError, match="payload bytes but"):
        Histogram.decode(_envelope(raw[:-2]))
    with pytest.raises(FrameError, match="allows at most"):
        Histogram.decode(_envelope(_header(payload_len=2**31 - 1)))
    with pytest.raises(FrameError, match="bad cookie"):
        Histogram.decode(_envelope(_header(cookie=0x12345678)))
    with pytest.raises(FrameError, match="normalizing"):
        Histogram.decode(_envelope(_header(offset=5)))
    with pytest.raises(FrameError, match="zero run"):
        # -(2^40) zero run in a 1-byte... 6-byte varint; layout has far fewer counters.
        Histogram.decode(_envelope(_header(payload_len=6) + b"\xff\xff\xff\xff\xff\x3f"))
    with pytest.raises(FrameError, match="truncated count varint"):
        Histogram.decode(_envelope(_header(payload_len=2) + b"\x80\x80"))
    packed = zlib.compress(raw)
    trailing = struct.pack(">Ii", 0x1C849314, len(packed) + 3) + packed + b"xyz"
    with pytest.raises(FrameError, match="after the end"):
        Histogram.decode(base64.b64encode(trailing))
    short = struct.pack(">Ii", 0x1C849314, len(packed) - 4) + packed[:-4]
    with pytest.raises(FrameError, match="truncated"):
        Histogram.decode(base64.b64encode(short))
    with pytest.raises(ValidationError, match="str or bytes"):
        Histogram.decode(12345)
    assert issubclass(FrameError, ValueError)


def test_decode_survives_corruption():
    good = Histogram()
    good.record_many(_data("bimodal", HOUR_NS, n=500))
    raw = bytearray(_raw_payload(good.encode()))
    rng = np.random.default_rng(11)
    outcomes = set()
    for _ in range(300):
        bad = bytearray(raw)
        for i in rng.integers(0, len(bad), 2):
            bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            h = Histogram.decode(_envelope(bytes(bad)))
        except FrameError:
            outcomes.add("error")
        else:
            outcomes.add("ok")
            assert sum(c for _, c in h) == h.total_count
    assert outcomes == {"ok", "error"}


# ---- constructor and argument errors ----------------------------------------------------


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 100, 3), "lowest must be >= 1"),
        ((10, 19, 3), r"highest must be >= 2 \* lowest \(= 20\)"),
        ((1, 100, 0), "significant_figures must be 1..5"),
        ((1, 100, 6), "significant_figures must be 1..5"),
        ((1.5, 100, 3), "lowest must be an integer"),
        ((1, "x", 3), "highest must be an integer"),
        ((1, 2**64, 3), "must fit in a signed 64-bit"),
        ((2**55, 2**62, 3), "too large for 3 significant figures"),
    ],
)
def test_bad_constructor_arguments(args, match):
    with pytest.raises(ValidationError, match=match):
        Histogram(*args)


def test_defaults_and_exports():
    h = Histogram()
    assert (h.lowest, h.highest, h.significant_figures) == (1, HOUR_NS, 3)
    assert pybus.Histogram is Histogram
    assert "Histogram" in pybus.__all__


def test_record_errors():
    h = Histogram(1, 1000, 3)
    for bad in (-1, 2048, 2**63, 2**70, -(2**70)):
        with pytest.raises(HistogramRangeError, match=r"values must be in \[0, 2047\]"):
            h.record(bad)
    with pytest.raises(ValidationError, match="must be integers"):
        h.record(1.5)
    with pytest.raises(ValidationError, match="must be integers"):
        h.record("3")
    h.record(np.int64(3))
    assert h.total_count == 1 and h.out_of_range == 0  # record() raises, never counts


def test_percentile_argument_errors():
    h = Histogram()
    h.record(5)
    for bad in (-0.1, 100.5, float("nan")):
        with pytest.raises(ValidationError, match=r"in \[0, 100\]"):
            h.percentile(bad)
        with pytest.raises(ValidationError, match=r"in \[0, 100\]"):
            h.percentiles([50, bad])
    with pytest.raises(ValidationError, match="numbers"):
        h.percentiles(["x"])
    assert h.percentiles([]) == {}
    assert h.percentiles([99, 50, 99]) == {99: 5, 50: 5}


# ---- property tests ---------------------------------------------------------------------

values_st = st.lists(st.integers(0, HOUR_NS), max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=values_st, sig=st.integers(1, 3))
def test_property_roundtrip(values, sig):
    h = Histogram(1, HOUR_NS, sig)
    h.record_many(np.array(values, dtype=np.int64))
    back = Histogram.decode(h.encode())
    assert list(back) == list(h)
    assert (back.total_count, back.min, back.max) == (h.total_count, h.min, h.max)
    assert back.encode() == h.encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.integers(0, 10**9), min_size=1, max_size=150),
    ps=st.lists(st.floats(0, 100), min_size=1, max_size=8),
    sig=st.integers(1, 3),
    lowest=st.sampled_from([1, 2, 100, 1000]),
)
def test_property_agrees_with_hdrh(values, ps, sig, lowest):
    h = Histogram(lowest, 10**10, sig)
    for v in values:
        h.record(v)
    o = _oracle(lowest, 10**10, sig, values)
    _assert_same(h, o, ps=sorted(set(ps)))
    assert _raw_payload(h.encode()) == _raw_payload(o.encode())


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=120), text=st.text(max_size=40))
def test_property_decode_never_fails_uncleanly(payload, text):
    """Arbitrary payloads (behind a valid envelope, with or without a valid header) and
    arbitrary text either decode to a consistent histogram or raise FrameError."""
    header = _header(payload_len=len(payload))
    for blob in (_envelope(payload), _envelope(header + payload), text):
        try:
            h = Histogram.decode(blob)
        except FrameError:
            continue
        assert sum(c for _, c in h) == h.total_count
        assert h.percentile(100) == h.max


def test_equivalent_range_out_of_range():
    with pytest.raises(HistogramRangeError, match=r"\[0, 2047\]"):
        Histogram(1, 1000, 3).equivalent_range(5000)
