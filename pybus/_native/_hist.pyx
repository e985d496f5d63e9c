# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""HDR latency histogram over csrc/pb_hist.c (HdrHistogram's layout and V2 wire format)."""

import base64
import binascii
import math
import operator
import struct
import zlib

from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t

from pybus._native.ccommon cimport *
from pybus._native.chist cimport *

from pybus.errors import BackpressureError, FrameError, HistogramRangeError, ValidationError

include "_status.pxi"


cdef object _HEADER = struct.Struct(">IIiiqqd")   # the 40-byte V2 payload header
cdef object _ENVELOPE = struct.Struct(">Ii")       # compressed cookie + compressed length
cdef unsigned int _COOKIE_MASK = PB_HIST_COOKIE_BASE_MASK
# A varint never takes more than 9 bytes, so a payload longer than 9 bytes per counter of
# the declared layout is malformed; this bounds decompression before anything is inflated.
cdef int _MAX_VARINT_BYTES = 9
cdef Py_ssize_t _STRIDED_CHUNK = 1024


cdef int64_t _as_int(object value, str name) except? -1:
    """An exact int argument (bool refused), as int64, or a ValidationError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = operator.index(value)
        except TypeError:
            raise ValidationError(
                f"{name} must be an integer, got {type(value).__name__} {value!r}"
            ) from None
        if isinstance(value, bool):
            raise ValidationError(f"{name} must be an integer, got bool {value!r}")
    if not -(1 << 63) <= value < (1 << 63):
        raise ValidationError(f"{name} must fit in a signed 64-bit integer, got {value}")
    return value


cdef inline bint _to_i64(object value, int64_t *out) except -1:
    """Store an integer argument in *out; False if it is an int beyond int64 (so out of any
    histogram's range). Non-integers (floats included) raise ValidationError rather than
    being truncated."""
    if not PyLong_CheckExact(value):
        try:
            value = operator.index(value)
        except TypeError:
            raise ValidationError(
                f"histogram values must be integers, got {type(value).__name__} {value!r}"
            ) from None
    # No try/except here: it cost ~18 ns per record() call when measured.
    cdef int overflow = 0
    out[0] = PyLong_AsLongLongAndOverflow(value, &overflow)
    return overflow == 0


cdef class Histogram:
    """An HDR histogram of non-negative integer values (latencies in ns, say).

    Values in ``[0, highest]`` are counted in buckets keeping ``significant_figures``
    decimal digits: with 3, every value is stored within 0.1 % of itself. The layout,
    percentiles and the ``encode()`` format are HdrHistogram's, so histograms interoperate
    with the ``hdrhistogram`` package and other HdrHistogram ports (V2 "HISTF..." strings).

    Parameters
    ----------
    lowest : int, default 1
        Lowest discernible value (>= 1); smaller values count as 0.
    highest : int, default 3_600_000_000_000
        Highest trackable value (>= 2 * lowest); 1 hour in nanoseconds by default.
        The histogram accepts up to the end of the last bucket, which may be above it.
    significant_figures : int, default 3
        Decimal digits of precision, 1 to 5.

    Raises
    ------
    ValidationError
        If an argument is outside what is allowed (the message says what is).

    Notes
    -----
    Not thread-safe: use one histogram per thread and ``merge`` them. Memory is fixed at
    construction (8 bytes per counter; 270 KB for the defaults).

    Examples
    --------
    >>> h = Histogram(1, 60_000_000_000, 3)
    >>> h.record(1500); h.percentile(99.0)
    1500
    """

    cdef pb_hist *_h
    cdef int64_t _out_of_range

    def __cinit__(self, lowest=1, highest=3_600_000_000_000, significant_figures=3):
        cdef int64_t lo = _as_int(lowest, "lowest")
        cdef int64_t hi = _as_int(highest, "highest")
        cdef int64_t sig = _as_int(significant_figures, "significant_figures")
        if lo < 1:
            raise ValidationError(f"lowest must be >= 1, got {lo}")
        if not 1 <= sig <= 5:
            raise ValidationError(f"significant_figures must be 1..5, got {sig}")
        if hi // 2 < lo:
            raise ValidationError(
                f"highest must be >= 2 * lowest (= {2 * <object>lo}), got {hi}"
            )
        cdef int rc = pb_hist_init(lo, hi, <int>sig, &self._h)
        if rc != PB_OK:
            # EINVAL: the one layout rule left, HdrHistogram's cap of log2(lowest) + sub-bucket
            # bits at 61 (ENOMEM: no memory for the counters)
            check_status(rc, f"lowest={lo} is too large for {sig} significant figures: "
                             f"floor(log2(lowest)) + ceil(log2(2 * 10**{sig})) - 1 must be "
                             f"<= 61" if rc == PB_EINVAL else "histogram counters")
        self._out_of_range = 0

    def __dealloc__(self):
        pb_hist_close(self._h)
        self._h = NULL

    # ---- recording ----------------------------------------------------------------------

    def record(self, value):
        """Count one occurrence of ``value`` (an int).

        Raises
        ------
        HistogramRangeError
            If ``value`` is negative or above the last bucket (the message gives the range).
        """
        cdef int64_t v
        if not _to_i64(value, &v):
            raise self._range_error_obj(value)
        if pb_hist_record(self._h, v) != PB_OK:
            raise self._range_error(v)

    def record_n(self, value, count):
        """Count ``count`` (>= 0) occurrences of ``value``.

        Raises
        ------
        HistogramRangeError
            If ``value`` is out of range.
        ValidationError
            If ``count`` is negative or the total count would overflow int64.
        """
        cdef int64_t v, c
        if not _to_i64(value, &v):
            raise self._range_error_obj(value)
        if not _to_i64(count, &c):
            c = -1
        cdef int rc = pb_hist_record_n(self._h, v, c)
        if rc != PB_OK:
            if rc == PB_ERANGE:
                raise self._range_error(v)  # names the value and the range
            check_status(rc, f"count must be >= 0 and keep the total count within int64, "
                             f"got {count}")

    def record_corrected(self, value, expected_interval):
        """Record ``value`` and back-fill for coordinated omission.

        As the ``hdrhistogram`` package's ``record_corrected_value``: when
        ``expected_interval > 0`` and ``value`` exceeds it, also record
        ``value - k * expected_interval`` for k = 1, 2, ... while that is ``> 0``.
        (HdrHistogram Java and C omit the last remainder below ``expected_interval``.)

        Raises
        ------
        HistogramRangeError
            If ``value`` is out of range (nothing is recorded).
        """
        cdef int64_t v, interval
        if not _to_i64(value, &v):
            raise self._range_error_obj(value)
        if not _to_i64(expected_interval, &interval):
            raise ValidationError(
                f"expected_interval must fit in int64, got {expected_interval}"
            )
        if pb_hist_record_corrected(self._h, v, interval) != PB_OK:
            raise self._range_error(v)

    def record_many(self, const int64_t[:] values):
        """Record every value of a 1-D int64 buffer (numpy array, ``array('q')``, ...).

        Runs in C with the GIL released. Out-of-range values are skipped, not raised:
        their number is returned and also added to :attr:`out_of_range`.

        Returns
        -------
        int
            How many values were out of range (and skipped).
        """
        cdef Py_ssize_t n = values.shape[0], i, k, m
        cdef size_t skipped = 0
        cdef int64_t chunk[1024]
        if n == 0:
            return 0
        if values.strides[0] == sizeof(int64_t):
            with nogil:
                skipped = pb_hist_record_many(self._h, &values[0], <size_t>n)
        else:
            # Strided view (e.g. arr[::2]): gather into a stack buffer, record per chunk.
            with nogil:
                i = 0
                while i < n:
                    m = n - i if n - i < _STRIDED_CHUNK else _STRIDED_CHUNK
                    for k in range(m):
                        chunk[k] = values[i + k]
                    skipped += pb_hist_record_many(self._h, chunk, <size_t>m)
                    i += m
        self._out_of_range += <int64_t>skipped
        return skipped

    cdef object _range_error(self, int64_t value):
        return self._range_error_obj(value)

    cdef object _range_error_obj(self, object value):
        return HistogramRangeError(
            f"value {value} is outside the histogram's range: values must be in "
            f"[0, {self._h.max_trackable}] (highest={self._h.highest})"
        )

    # ---- queries --------------------------------------------------------------------

    def percentile(self, double p):
        """The value at percentile ``p`` in [0, 100] (HdrHistogram's definition).

        Returns the highest value equivalent to the bucket where the cumulative count
        reaches ``round(p * total_count / 100)`` (for p == 0 the bucket's lowest value);
        0 when the histogram is empty.

        Raises
        ------
        ValidationError
            If ``p`` is not in [0, 100].
        """
        if not (0.0 <= p <= 100.0):
            raise ValidationError(f"percentile must be in [0, 100], got {p}")
        return pb_hist_value_at_percentile(self._h, p)

    def percentiles(self, ps):
        """Answer several percentile queries in one pass.

        Parameters
        ----------
        ps : iterable of float
            Percentiles in [0, 100], any order.

        Returns
        -------
        dict
            ``{p: value}`` in the order given.
        """
        keys = list(ps)
        cdef Py_ssize_t n = len(keys), k
        if n == 0:
            return {}
        try:
            floats = [float(q) for q in keys]
        except (TypeError, ValueError):
            raise ValidationError(f"percentiles must be numbers in [0, 100], got {keys!r}") from None
        order = sorted(range(n), key=floats.__getitem__)
        cdef double *buf = <double *>PyMem_Malloc(n * sizeof(double))
        cdef int64_t *out = <int64_t *>PyMem_Malloc(n * sizeof(int64_t))
        cdef double p
        try:
            if buf == NULL or out == NULL:
                raise MemoryError()
            for k in range(n):
                p = floats[order[k]]
                if not (0.0 <= p <= 100.0):
                    raise ValidationError(
                        f"percentiles must be in [0, 100], got {keys[order[k]]!r}"
                    )
                buf[k] = p
            pb_hist_values_at_percentiles(self._h, buf, <size_t>n, out)
            values = [None] * n
            for k in range(n):
                values[order[k]] = out[k]
            return {keys[k]: values[k] for k in range(n)}
        finally:
            PyMem_Free(buf)
            PyMem_Free(out)

    def equivalent_range(self, int64_t value):
        """``(lowest, highest)`` values counted in the same bucket as ``value``."""
        if <unsigned long long>value > <unsigned long long>self._h.max_trackable:
            raise self._range_error(value)
        return (pb_hist_lowest_equivalent(self._h, value),
                pb_hist_highest_equivalent(self._h, value))

    @property
    def min(self):
        """Smallest recorded value (bucket's lowest equivalent); 0 when empty."""
        return pb_hist_min(self._h)

    @property
    def max(self):
        """Largest recorded value (bucket's highest equivalent); 0 when empty."""
        return pb_hist_max(self._h)

    @property
    def mean(self):
        """Mean of the recorded values at their buckets' medians; 0.0 when empty."""
        return pb_hist_mean(self._h)

    @property
    def stddev(self):
        """Population standard deviation (bucket medians); 0.0 when empty."""
        return pb_hist_stddev(self._h)

    @property
    def total_count(self):
        """Number of values recorded."""
        return pb_hist_total_count(self._h)

    @property
    def out_of_range(self):
        """Values skipped by :meth:`record_many` because they were out of range, in total
        since construction (``reset()`` zeroes it; ``merge`` adds the other's)."""
        return self._out_of_range

    @property
    def lowest(self):
        """Lowest discernible value given at construction."""
        return self._h.lowest

    @property
    def highest(self):
        """Highest trackable value given at construction."""
        return self._h.highest

    @property
    def significant_figures(self):
        """Decimal digits of precision (1..5)."""
        return self._h.significant_figures

    def iter_buckets(self):
        """Yield ``(value, count)`` for every non-empty bucket in ascending order; ``value``
        is the bucket's highest equivalent value (as hdrhistogram's recorded iterator)."""
        cdef size_t cursor = 0
        cdef int64_t value, count
        while pb_hist_next_recorded(self._h, &cursor, &value, &count):
            yield (value, count)

    def __iter__(self):
        return self.iter_buckets()

    # ---- whole-histogram operations ------------------------------------------------

    def merge(self, Histogram other not None):
        """Add every count of ``other`` (any layout) into this histogram.

        A different layout is merged by re-recording each of other's buckets at its lowest
        equivalent value, as HdrHistogram does.

        Raises
        ------
        HistogramRangeError
            If other's max does not fit this histogram (nothing is merged).
        """
        cdef pb_hist *src = other._h
        cdef pb_hist *tmp = NULL
        cdef int rc
        if other is self:
            if pb_hist_copy(self._h, &tmp) != PB_OK:
                raise MemoryError()
            src = tmp
        rc = pb_hist_add(self._h, src)
        pb_hist_close(tmp)
        if rc != PB_OK:
            check_status(rc, f"cannot merge: the other histogram's max {pb_hist_max(other._h)} "
                             f"is above this histogram's range [0, {self._h.max_trackable}]"
                             if rc == PB_ERANGE else
                             "cannot merge: the total count would overflow int64")
        self._out_of_range += other._out_of_range

    def reset(self):
        """Forget every value (and zero :attr:`out_of_range`); the layout stays."""
        pb_hist_reset(self._h)
        self._out_of_range = 0

    def copy(self):
        """An independent copy with the same layout and counts."""
        cdef Histogram c = Histogram.__new__(
            Histogram, self._h.lowest, self._h.highest, self._h.significant_figures
        )
        cdef pb_hist *h = NULL
        if pb_hist_copy(self._h, &h) != PB_OK:
            raise MemoryError()
        pb_hist_close(c._h)
        c._h = h
        c._out_of_range = self._out_of_range
        return c

    # ---- V2 encoding --------------------------------------------------------------

    def encode(self):
        """The HdrHistogram V2 compressed, base64 form ("HISTF..."), as str.

        Readable by ``hdrh.histogram.HdrHistogram.decode`` and every HdrHistogram port.
        ``out_of_range`` is not part of the format.
        """
        cdef size_t cap = pb_hist_encode_bound(self._h), written = 0
        raw = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>cap)
        pb_hist_encode(self._h, <uint8_t *>PyBytes_AS_STRING(raw), cap, &written)
        # Level 1: measured 180 us vs 480 us at the default level 6 on a 16 KB payload of
        # 1e6 lognormal values, for a 0.3 % larger output.
        packed = zlib.compress(memoryview(raw)[:written], 1)
        envelope = _ENVELOPE.pack(PB_HIST_V2_COMPRESSION_COOKIE, len(packed)) + packed
        return base64.b64encode(envelope).decode("ascii")

    @classmethod
    def decode(cls, text):
        """Rebuild a histogram from :meth:`encode`'s output (or any V2 "HISTF..." blob).

        Parameters
        ----------
        text : str or bytes
            Base64 of the compressed V2 envelope; surrounding whitespace is ignored.

        Raises
        ------
        FrameError
            If the input is not a valid V2 histogram (the message says why).
        ValidationError
            If ``text`` is neither str nor bytes-like.
        """
        if isinstance(text, str):
            try:
                raw = text.strip().encode("ascii")
            except UnicodeEncodeError:
                raise FrameError("histogram text is not base64: it has non-ASCII characters") from None
        elif isinstance(text, (bytes, bytearray, memoryview)):
            raw = bytes(text).strip()
        else:
            raise ValidationError(
                f"decode() takes str or bytes, got {type(text).__name__}"
            )
        try:
            env = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FrameError(f"histogram text is not valid base64: {exc}") from None
        if len(env) < _ENVELOPE.size:
            raise FrameError(
                f"histogram blob is {len(env)} bytes; the envelope alone needs {_ENVELOPE.size}"
            )
        cookie, length = _ENVELOPE.unpack_from(env)
        if cookie & _COOKIE_MASK != PB_HIST_V2_COMPRESSION_COOKIE & _COOKIE_MASK:
            raise FrameError(
                f"bad cookie 0x{cookie:08x}: expected a compressed V2 histogram "
                f"(0x{PB_HIST_V2_COMPRESSION_COOKIE:08x})"
            )
        if length != len(env) - _ENVELOPE.size:
            raise FrameError(
                f"envelope declares {length} compressed bytes but {len(env) - _ENVELOPE.size} follow"
            )
        inflater = zlib.decompressobj()
        try:
            head = inflater.decompress(env[_ENVELOPE.size:], PB_HIST_V2_HEADER_BYTES)
        except zlib.error as exc:
            raise FrameError(f"histogram payload is not valid zlib data: {exc}") from None
        if len(head) < PB_HIST_V2_HEADER_BYTES:
            raise FrameError(
                f"histogram payload is {len(head)} bytes, shorter than the "
                f"{PB_HIST_V2_HEADER_BYTES}-byte V2 header"
            )
        _, payload_len, _, sig, lowest, highest, _ = _HEADER.unpack(head)
        counts_len = pb_hist_counts_len_for(lowest, highest, sig)
        if counts_len < 0:
            raise FrameError(
                f"histogram header has an invalid layout (lowest={lowest}, highest={highest}, "
                f"significant_figures={sig}); need lowest >= 1, highest >= 2*lowest, 1..5 figures"
            )
        if payload_len > _MAX_VARINT_BYTES * counts_len:
            raise FrameError(
                f"histogram header declares a {payload_len}-byte payload; its layout allows at "
                f"most {_MAX_VARINT_BYTES * counts_len}"
            )
        try:
            body = inflater.decompress(inflater.unconsumed_tail, payload_len + 1)
        except zlib.error as exc:
            raise FrameError(f"histogram payload is not valid zlib data: {exc}") from None
        if len(body) != payload_len:
            raise FrameError(
                f"histogram header declares {payload_len} payload bytes but "
                f"{'more' if len(body) > payload_len else len(body)} follow"
            )
        if not inflater.eof:
            raise FrameError("histogram zlib stream is truncated")
        if inflater.unused_data:
            raise FrameError("histogram blob has bytes after the end of its zlib stream")
        payload = head + body
        cdef const char *detail = NULL
        cdef pb_hist *h = NULL
        cdef int rc = pb_hist_decode(<const uint8_t *>PyBytes_AS_STRING(payload),
                                     <size_t>len(payload), &h, &detail)
        if rc != PB_OK:
            check_status(rc, f"malformed histogram payload: {detail.decode()}"
                             if detail != NULL else "decoding a histogram payload")
        cdef Histogram result = cls.__new__(cls, lowest, highest, sig)
        pb_hist_close(result._h)
        result._h = h
        return result

    def __reduce__(self):
        return (_restore, (self.encode(), self._out_of_range))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __repr__(self):
        return (
            f"Histogram(lowest={self._h.lowest}, highest={self._h.highest}, "
            f"significant_figures={self._h.significant_figures}, "
            f"total_count={self._h.total_count}, min={pb_hist_min(self._h)}, "
            f"max={pb_hist_max(self._h)})"
        )


def _restore(text, out_of_range):
    """Unpickle: decode the V2 form and restore the out-of-range counter."""
    cdef Histogram h = Histogram.decode(text)
    h._out_of_range = out_of_range
    return h
