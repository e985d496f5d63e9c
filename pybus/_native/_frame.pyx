# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""The batch frame codec (csrc/pb_frame.c) for Python: :class:`Message` and the functions
that read and write the frames of docs/wire.md.

Thread safety: the decode functions hold the frame's buffer for the call and are safe on
frames nobody mutates meanwhile (bytes always are).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from pybus._native.ccommon cimport *
from pybus._native.cbatch cimport *

import msgpack

from pybus.errors import FrameError, ValidationError


FRAME_VERSION = PB_FRAME_VERSION
FRAME_HEADER_SIZE = PB_FRAME_HEADER_SIZE
RECORD_HEADER_SIZE = PB_FRAME_RECORD_HEADER_SIZE
FLAG_MSGPACK = PB_FRAME_REC_MSGPACK

cdef object _packb = msgpack.packb
cdef object _unpackb = msgpack.unpackb

cdef object _unpack_payload(bytes raw):
    # strict_map_key=False: payload maps keep int keys ({1: "a"} round-trips); headers keep
    # msgpack's strict default (string keys by convention, docs/wire.md)
    try:
        return _unpackb(raw, strict_map_key=False)
    except Exception as exc:
        raise FrameError(f"msgpack payload of {len(raw)} bytes does not decode: {exc}",
                         reason="bad msgpack payload") from exc


cdef object _frame_error(pb_frame_error *err):
    msg = err.message.decode("utf-8", "replace")
    reason = err.reason.decode("ascii") if err.reason != NULL else "malformed"
    exc = FrameError(msg, offset=err.offset, reason=reason, record=err.record)
    exc.offset = err.offset
    exc.reason = reason
    exc.record = err.record
    return exc


cdef int _check_int(str name, object v, object lo, object hi) except -1:
    if not isinstance(v, int) or isinstance(v, bool) or not (lo <= v <= hi):
        raise ValidationError(f"{name}={v!r} is not allowed; use an int from {lo} to {hi}")
    return 0


# --------------------------------------------------------------------------------------------
# Message


cdef Message _new_message(object topic, bytes raw, object raw_header, uint8_t flags,
                          uint64_t seq, uint64_t publisher_id, int64_t timestamp_ns):
    cdef Message m = Message.__new__(Message)
    m._topic = topic
    m._raw = raw
    m._raw_header = raw_header
    m._flags = flags
    m.seq = seq
    m.publisher_id = publisher_id
    m.timestamp_ns = timestamp_ns
    return m


def _message_from_wire(topic, raw, raw_header, flags, seq, publisher_id, timestamp_ns):
    """Rebuild a Message from its wire parts (the pickle path)."""
    return _new_message(topic, raw, raw_header, flags, seq, publisher_id, timestamp_ns)


# no_gc: a Message holds only str/bytes/decoded msgpack values, never itself; skipping GC
# tracking saves the allocation cost and the gen-0 collections a batch of thousands would
# trigger. (Storing a Message inside its own headers dict would leak it: don't.)
@cython.final
@cython.no_gc
@cython.freelist(16384)
cdef class Message:
    """One message: topic, payload, headers, per-topic sequence number, publisher and time.

    Parameters
    ----------
    topic : str
    payload : bytes-like or any msgpack-serialisable object
        Bytes-like payloads are carried as is; anything else is msgpack-packed and
        ``is_msgpack`` is True (``payload`` then returns the decoded object).
    headers : dict or None
        Packed with msgpack; ``headers`` returns ``{}`` when there are none.
    seq, publisher_id, timestamp_ns : int
        Normally set by the bus: the per-topic sequence number, the publisher's id and the
        publish time (CLOCK_REALTIME ns).

    Examples
    --------
    >>> Message("orders.created", {"id": 1}).payload
    {'id': 1}
    """

    cdef object _topic
    cdef bytes _raw
    cdef object _raw_header    # bytes, or None when the message has no headers
    cdef object _payload       # decoded payload, valid when _payload_done
    cdef object _headers       # decoded headers dict, valid when _headers_done
    cdef bint _payload_done
    cdef bint _headers_done
    cdef uint8_t _flags
    cdef readonly uint64_t seq
    cdef readonly uint64_t publisher_id
    cdef readonly int64_t timestamp_ns

    def __init__(self, topic, payload, headers=None, seq=0, publisher_id=0, timestamp_ns=0):
        if not isinstance(topic, str):
            raise ValidationError(f"topic must be a str, got {type(topic).__name__}")
        self._topic = topic
        if isinstance(payload, bytes):
            self._raw = payload
            self._flags = 0
        elif PyObject_CheckBuffer(payload):
            self._raw = bytes(payload)
            self._flags = 0
        else:
            self._raw = _packb(payload)
            self._flags = PB_FRAME_REC_MSGPACK
            self._payload = payload
            self._payload_done = True
        if headers is not None:
            if not isinstance(headers, dict):
                raise ValidationError(
                    f"headers must be a dict or None, got {type(headers).__name__}")
            self._headers = dict(headers)
            self._headers_done = True
            if headers:
                self._raw_header = _packb(headers)
        self.seq = seq
        self.publisher_id = publisher_id
        self.timestamp_ns = timestamp_ns

    @property
    def topic(self):
        """The topic (str)."""
        return self._topic

    @property
    def raw_payload(self):
        """The payload bytes as carried on the wire."""
        return self._raw

    @property
    def raw_headers(self):
        """The msgpack-packed headers as carried on the wire, or None."""
        return self._raw_header

    @property
    def is_msgpack(self):
        """True when the payload is msgpack (``payload`` decodes it)."""
        return (self._flags & PB_FRAME_REC_MSGPACK) != 0

    @property
    def payload(self):
        """The payload: bytes, or the msgpack-decoded object (decoded once, then cached)."""
        if not (self._flags & PB_FRAME_REC_MSGPACK):
            return self._raw
        if not self._payload_done:
            self._payload = _unpack_payload(self._raw)
            self._payload_done = True
        return self._payload

    @property
    def headers(self):
        """The headers dict (decoded once, then cached; ``{}`` when there are none)."""
        if not self._headers_done:
            if self._raw_header is None:
                self._headers = {}
            else:
                try:
                    h = _unpackb(self._raw_header)
                except Exception as exc:
                    raise FrameError(f"message headers of {len(self._raw_header)} bytes do "
                                     f"not decode as msgpack: {exc}",
                                     reason="bad msgpack headers") from exc
                if not isinstance(h, dict):
                    raise FrameError(
                        f"message headers decode to a {type(h).__name__}; they must be a "
                        "msgpack map", reason="headers not a map")
                self._headers = h
            self._headers_done = True
        return self._headers

    def __repr__(self):
        full = self._raw if self._raw is not None else b""
        raw = full if len(full) <= 32 else full[:32] + b"..."
        return (f"Message(topic={self._topic!r}, seq={self.seq}, "
                f"publisher_id={self.publisher_id:#x}, timestamp_ns={self.timestamp_ns}, "
                f"payload={raw!r} ({len(full)} B{', msgpack' if self.is_msgpack else ''}), "
                f"headers={'yes' if self._raw_header is not None or self._headers else 'none'})")

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        cdef Message o = <Message>other
        return (self._topic == o._topic and self.seq == o.seq
                and self.publisher_id == o.publisher_id
                and self.timestamp_ns == o.timestamp_ns
                and (self._flags & PB_FRAME_REC_MSGPACK) == (o._flags & PB_FRAME_REC_MSGPACK)
                and self._raw == o._raw and self.headers == o.headers)

    def __hash__(self):
        return hash((self._topic, self.seq, self.publisher_id, self._raw))

    def __reduce__(self):
        raw_header = self._raw_header
        if self._headers_done:  # the decoded dict may have been changed since: pickle it as is
            raw_header = _packb(self._headers) if self._headers else None
        return (_message_from_wire, (self._topic, self._raw, raw_header,
                                     self._flags & PB_FRAME_REC_MSGPACK, self.seq,
                                     self.publisher_id, self.timestamp_ns))


# --------------------------------------------------------------------------------------------
# Frame decoding


cdef inline int _validate(Py_buffer *view, pb_frame_info *info) except -1:
    cdef pb_frame_error err
    if pb_frame_validate(<const uint8_t *>view.buf, view.len, info, &err) != PB_OK:
        raise _frame_error(&err)
    return 0


def frame_info(frame):
    """(publisher_id, first_seq, count, base_timestamp_ns) of a frame; checks the header only.

    Raises FrameError when the header is malformed.
    """
    cdef Py_buffer view
    cdef pb_frame_info info
    cdef pb_frame_error err
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        if pb_frame_read_header(<const uint8_t *>view.buf, view.len, &info, &err) != PB_OK:
            raise _frame_error(&err)
    finally:
        PyBuffer_Release(&view)
    return (info.publisher_id, info.first_seq, info.count, info.base_timestamp_ns)


def decode_batch(topic, frame):
    """Decode a whole frame into Message objects (the frame is validated first).

    Parameters
    ----------
    topic : str
        The topic the frame arrived on (its ZeroMQ topic frame, decoded).
    frame : bytes-like

    Raises
    ------
    FrameError
        With ``offset``, ``reason`` and ``record`` attributes, on any malformation.
    """
    return _decode(frame, topic, True)


def decode_payloads(frame):
    """The payload bytes of every record of a frame (validated first); the fastest path."""
    return _decode(frame, None, False)


cdef list _decode(object frame, object topic, bint messages):
    # one record loop for both: Messages, or payload bytes only (no Message object at all)
    cdef Py_buffer view
    cdef pb_frame_info info
    cdef pb_frame_record rec
    cdef size_t off = PB_FRAME_HEADER_SIZE
    cdef uint32_t i
    cdef list out
    cdef Message m
    cdef object item
    cdef const uint8_t *buf
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        _validate(&view, &info)
        buf = <const uint8_t *>view.buf
        out = PyList_New(info.count)
        for i in range(info.count):
            off = pb_frame_next_unchecked(buf, off, info.base_timestamp_ns, &rec)
            item = PyBytes_FromStringAndSize(<const char *>rec.payload, rec.payload_len)
            if messages:
                m = Message.__new__(Message)
                m._topic = topic
                m._raw = item
                if rec.header_len:
                    m._raw_header = PyBytes_FromStringAndSize(<const char *>rec.header,
                                                              rec.header_len)
                m._flags = rec.flags
                m.seq = info.first_seq + i
                m.publisher_id = info.publisher_id
                m.timestamp_ns = rec.timestamp_ns
                item = m
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
    finally:
        PyBuffer_Release(&view)
    return out


def decode_into(frame, int64_t[::1] seqs, int64_t[::1] offsets, int64_t[::1] lengths):
    """Fill int64 arrays with each record's seq, payload offset in the frame and length.

    Returns the record count. Raises ValidationError when an array is shorter than the count
    (nothing is written then) and FrameError on a malformed frame.
    """
    cdef Py_buffer view
    cdef pb_frame_info info
    cdef pb_frame_record rec
    cdef size_t off = PB_FRAME_HEADER_SIZE
    cdef uint32_t i
    cdef const uint8_t *buf
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        _validate(&view, &info)
        n = info.count
        if seqs.shape[0] < n or offsets.shape[0] < n or lengths.shape[0] < n:
            raise ValidationError(
                f"decode_into: the frame has {n} records but the arrays hold "
                f"{seqs.shape[0]}/{offsets.shape[0]}/{lengths.shape[0]}; allocate >= {n}")
        buf = <const uint8_t *>view.buf
        with nogil:
            for i in range(info.count):
                off = pb_frame_next_unchecked(buf, off, info.base_timestamp_ns, &rec)
                seqs[i] = <int64_t>(info.first_seq + i)
                offsets[i] = <int64_t>rec.payload_offset
                lengths[i] = rec.payload_len
    finally:
        PyBuffer_Release(&view)
    return info.count


@cython.final
cdef class _FrameIterator:
    """Iterator over (seq, payload bytes) of a validated frame; holds the frame's buffer."""
    cdef Py_buffer _view
    cdef bint _held
    cdef pb_frame_info _info
    cdef size_t _off
    cdef uint32_t _i

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._view)
            self._held = False

    def __iter__(self):
        return self

    def __next__(self):
        cdef pb_frame_record rec
        if self._i >= self._info.count:
            if self._held:
                PyBuffer_Release(&self._view)
                self._held = False
            raise StopIteration
        self._off = pb_frame_next_unchecked(<const uint8_t *>self._view.buf, self._off,
                                            self._info.base_timestamp_ns, &rec)
        seq = self._info.first_seq + self._i
        self._i += 1
        return (seq, PyBytes_FromStringAndSize(<const char *>rec.payload, rec.payload_len))


def iter_frame(frame):
    """Iterate (seq, payload bytes) over a frame; the whole frame is validated first."""
    cdef _FrameIterator it = _FrameIterator.__new__(_FrameIterator)
    PyObject_GetBuffer(frame, &it._view, PyBUF_SIMPLE)
    it._held = True
    _validate(&it._view, &it._info)
    it._off = PB_FRAME_HEADER_SIZE
    it._i = 0
    return it


def encode_frame(publisher_id, first_seq, records):
    """Encode one frame from (payload, header, flags, timestamp_ns) tuples.

    payload and header are bytes-like (header None for none, else a packed msgpack map);
    flags is 0 or FLAG_MSGPACK; the first record's timestamp is the frame's base. For tests,
    interop and other layers; the Batcher writes frames itself.
    """
    _check_int("publisher_id", publisher_id, 0, 0xFFFFFFFFFFFFFFFF)
    _check_int("first_seq", first_seq, 0, 0xFFFFFFFFFFFFFFFF)
    cdef list recs = list(records)
    cdef Py_ssize_t n = len(recs)
    if n == 0 or n > 0xFFFFFFFF:
        raise ValidationError(f"a frame holds 1 to 4294967295 records, got {n}")
    cdef list payloads = []
    cdef list headers = []
    cdef list flags_l = []
    cdef list ts_l = []
    cdef Py_ssize_t total = PB_FRAME_HEADER_SIZE
    for r in recs:
        if not isinstance(r, tuple) or len(r) != 4:
            raise ValidationError("each record must be a (payload, header, flags, "
                                  f"timestamp_ns) tuple, got {r!r:.60}")
        p, h, f, ts = r
        p = bytes(p) if not isinstance(p, bytes) else p
        h = b"" if h is None else (bytes(h) if not isinstance(h, bytes) else h)
        if len(p) > 0xFFFFFFFF or len(h) > 0xFFFF:
            raise ValidationError("payload must be < 4 GiB and header <= 65535 bytes")
        if f != 0 and f != PB_FRAME_REC_MSGPACK:
            raise ValidationError(f"flags={f!r} is not allowed; use 0 or FLAG_MSGPACK (1)")
        _check_int("timestamp_ns", ts, -(1 << 63), (1 << 63) - 1)
        payloads.append(p)
        headers.append(h)
        flags_l.append(f)
        ts_l.append(ts)
        total += PB_FRAME_RECORD_HEADER_SIZE + len(p) + len(h)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *w = <uint8_t *>PyBytes_AS_STRING(out)
    cdef int64_t base = ts_l[0]
    cdef bytes pb, hb
    w = pb_frame_write_header(w, <uint32_t>n, publisher_id, first_seq, base)
    for i in range(n):
        pb = payloads[i]
        hb = headers[i]
        w = pb_frame_write_record(w, PyBytes_AS_STRING(pb), <uint32_t>len(pb),
                                  PyBytes_AS_STRING(hb), <uint16_t>len(hb), <uint8_t>flags_l[i],
                                  <int64_t>ts_l[i], base)
    return out
