# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""The batcher and the batch frame codec (csrc/pb_ring.c, csrc/pb_frame.c) for Python.

Thread safety: a Batcher is used under its owner's lock. None of its methods releases the
GIL, so each single call is atomic with respect to other Python threads, but sequences of
calls are not, and publish() runs Python hooks in the middle. The decode functions hold the
frame's buffer for the call and are safe on frames nobody mutates meanwhile (bytes always are).
The wire format is specified in docs/wire.md.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport Py_INCREF, PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from pybus._native.ccommon cimport *
from pybus._native.cbatch cimport *
from pybus._native.czmq cimport (
    PB_ZMQ_DONTWAIT, PB_ZMQ_SNDMORE, pb_zmq_load, pb_zmq_load_error, pb_zmq_loaded, pb_zmq_send,
    pb_zmq_send_filled,
)

import operator
import secrets

import msgpack

from pybus.errors import BackpressureError, FrameError, HistogramRangeError, ValidationError

__all__ = [
    "Batcher",
    "Message",
    "decode_batch",
    "decode_into",
    "decode_payloads",
    "encode_frame",
    "frame_info",
    "iter_frame",
    "READY",
    "PENDING",
    "FULL",
    "FRAME_VERSION",
    "FRAME_HEADER_SIZE",
    "RECORD_HEADER_SIZE",
    "RING_RECORD_OVERHEAD",
    "FLAG_MSGPACK",
    "ring_record_size",
]

READY = PB_RING_READY
PENDING = PB_RING_PENDING
FULL = PB_EFULL
FRAME_VERSION = PB_FRAME_VERSION
FRAME_HEADER_SIZE = PB_FRAME_HEADER_SIZE
RECORD_HEADER_SIZE = PB_FRAME_RECORD_HEADER_SIZE
RING_RECORD_OVERHEAD = PB_RING_RECORD_OVERHEAD
FLAG_MSGPACK = PB_FRAME_REC_MSGPACK

cdef object _NO_TOPIC = object()  # never a topic: publish()'s last-topic cache starts empty
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


def ring_record_size(header_len: int, payload_len: int) -> int:
    """Bytes a record takes in a Batcher's ring (the documented byte accounting).

    ``32 + header_len + payload_len`` rounded up to a multiple of 8.
    """
    if header_len < 0 or payload_len < 0:
        raise ValidationError("header_len and payload_len must be >= 0")
    return PB_RING_RECORD_SIZE(header_len, payload_len)


def set_thread_timer_slack(ns):
    """Set the calling thread's timer slack (Linux): its timed waits end at most ``ns``
    nanoseconds late instead of the default 50 us. Returns True when set, False when the
    platform has no such setting. Used by the publisher's flusher, whose waits are ~20 us."""
    _check_int("ns", ns, 1, 1 << 40)
    return pb_thread_timer_slack(ns) == PB_OK


cdef object _frame_error(pb_frame_error *err):
    msg = err.message.decode("utf-8", "replace")
    reason = err.reason.decode("ascii") if err.reason != NULL else "malformed"
    exc = FrameError(msg, offset=err.offset, reason=reason, record=err.record)
    exc.offset = err.offset
    exc.reason = reason
    exc.record = err.record
    return exc


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
# Batcher


include "_status.pxi"


cdef struct _Fill:
    pb_ring *r
    uint32_t count


cdef int _fill_frame(void *dst, size_t length, void *arg) noexcept nogil:
    # Write the planned frame into libzmq's message buffer (drain_to).
    cdef _Fill *f = <_Fill *>arg
    cdef pb_frame_info info
    if pb_ring_write_frame(f.r, <uint8_t *>dst, length) < 0:
        return -1
    f.count = info.count if pb_frame_read_header(<const uint8_t *>dst, length, &info,
                                                 NULL) == PB_OK else 0
    return 0


cdef struct _Positions:
    PyObject *out     # list of (topic bytes, frame bytes)
    PyObject *names   # the Batcher's id -> topic bytes
    uint64_t publisher_id
    int64_t timestamp_ns


cdef int _emit_position(uint32_t tid, uint64_t next_seq, void *arg) noexcept with gil:
    # pb_ring_positions_due's callback: one position frame (docs/wire.md)
    cdef _Positions *p = <_Positions *>arg
    cdef bytes frame
    try:
        frame = PyBytes_FromStringAndSize(NULL, PB_FRAME_HEADER_SIZE)
        pb_frame_write_position(<uint8_t *>PyBytes_AS_STRING(frame), p.publisher_id, next_seq,
                                p.timestamp_ns)
        (<list>p.out).append(((<list>p.names)[tid], frame))
    except BaseException:  # MemoryError: the scan stops, the topic stays due
        return -1
    return 0


cdef void _discard_planned(pb_ring *r, size_t length) noexcept:
    # A failed send: remove the planned frame's records (into a scratch buffer), as a
    # drained frame whose send failed is gone too. No effect once the plan was written.
    cdef bytes scratch = PyBytes_FromStringAndSize(NULL, length)
    pb_ring_write_frame(r, <uint8_t *>PyBytes_AS_STRING(scratch), length)


@cython.final
cdef class Batcher:
    """Per-topic batching of messages into batch frames, in a bounded ring (C).

    Not thread-safe: use one Batcher under the caller's lock.

    Parameters
    ----------
    capacity_bytes : int
        Size of the ring; each record takes ``ring_record_size(header_len, payload_len)``
        bytes. Appending when the record does not fit returns FULL and stores nothing.
    max_batch_records, max_batch_bytes : int
        Bounds of one frame, and READY thresholds (records of one topic pending / ring bytes
        pending). One record larger than max_batch_bytes goes alone in its frame.
    max_message_bytes : int
        Bound of payload + header bytes of one message.
    max_topics : int
        Size of the topic table.
    publisher_id : int
        u64 written into each frame; 0 picks a random nonzero id.
    idle_us : float
        A message appended to an empty batcher that was never drained, or whose last drain
        emptied it at least this long ago, is READY at once (a lone message goes out at raw
        transport latency).
    max_delay_us : float
        READY once the oldest pending record is this old.
    """

    READY = PB_RING_READY
    PENDING = PB_RING_PENDING
    FULL = PB_EFULL

    cdef pb_ring *_r
    cdef dict _ids_by_str      # publish cache: str topic -> id
    cdef object _last_topic    # the last topic object publish() saw, and its id
    cdef uint32_t _last_tid
    cdef dict _ids_by_bytes    # bytes topic -> id
    cdef list _names           # id -> bytes topic
    cdef uint32_t _max_message
    cdef uint32_t _max_batch_records
    cdef size_t _max_batch_bytes
    cdef double _idle_us
    cdef double _max_delay_us
    cdef object _resolve_topic
    cdef object _pack
    cdef object _default_pack
    cdef object _on_ready
    cdef object _on_pending
    cdef object _on_full

    def __cinit__(self):
        self._r = NULL
        self._last_topic = _NO_TOPIC

    def __init__(self, capacity_bytes=8 << 20, max_batch_records=8192, max_batch_bytes=256 << 10,
                 max_message_bytes=1 << 20, max_topics=65536, publisher_id=0, idle_us=5.0,
                 max_delay_us=100.0):
        if self._r != NULL:
            raise ValidationError("Batcher.__init__ called twice")
        _check_int("capacity_bytes", capacity_bytes, PB_RING_MIN_CAPACITY, PB_RING_MAX_CAPACITY)
        _check_int("max_batch_records", max_batch_records, 1, 0xFFFFFFFF)
        _check_int("max_batch_bytes", max_batch_bytes, 64, 1 << 40)
        _check_int("max_message_bytes", max_message_bytes, 1, PB_RING_MAX_MESSAGE)
        _check_int("max_topics", max_topics, 1, PB_RING_MAX_TOPICS)
        _check_int("publisher_id", publisher_id, 0, 0xFFFFFFFFFFFFFFFF)
        need = PB_RING_RECORD_SIZE(0, max_message_bytes)
        if need > (capacity_bytes & ~7):
            raise ValidationError(
                f"capacity_bytes={capacity_bytes} cannot hold one message of "
                f"max_message_bytes={max_message_bytes} ({need} ring bytes); allowed: "
                f"capacity_bytes >= 32 + max_message_bytes rounded up to 8")
        for name, v in (("idle_us", idle_us), ("max_delay_us", max_delay_us)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 <= v <= 1e9):
                raise ValidationError(f"{name}={v!r} is not allowed; use a number of "
                                      "microseconds from 0 to 1e9")
        while publisher_id == 0:
            publisher_id = secrets.randbits(64)
        cdef pb_ring_config cfg
        cfg.capacity_bytes = capacity_bytes
        cfg.max_topics = max_topics
        cfg.max_batch_records = max_batch_records
        cfg.max_batch_bytes = max_batch_bytes
        cfg.max_message_bytes = max_message_bytes
        cfg.idle_ns = <int64_t>(idle_us * 1000.0)
        cfg.max_delay_ns = <int64_t>(max_delay_us * 1000.0)
        cfg.publisher_id = publisher_id
        check_status(pb_ring_init(&cfg, &self._r), "Batcher")
        self._max_message = max_message_bytes
        self._max_batch_records = max_batch_records
        self._max_batch_bytes = max_batch_bytes
        self._idle_us = idle_us
        self._max_delay_us = max_delay_us
        self._ids_by_str = {}
        self._ids_by_bytes = {}
        self._names = []
        self._resolve_topic = None
        # a reused Packer packs a dict in about half the time of msgpack.packb (anchor numbers,
        # section 6); it is not thread-safe, and neither is the Batcher
        self._default_pack = msgpack.Packer().pack
        self._pack = self._default_pack
        self._on_ready = None
        self._on_pending = None
        self._on_full = None

    def __dealloc__(self):
        pb_ring_close(self._r)
        self._r = NULL

    cdef inline int _ok(self) except -1:
        if self._r == NULL:
            raise ValidationError("Batcher is not initialised")
        return 0

    # -- topics ------------------------------------------------------------------------------

    def topic_id(self, topic):
        """Find or register a topic (bytes) and return its id (0, 1, 2... in order).

        Raises ValidationError when max_topics are already registered.
        """
        self._ok()
        if not isinstance(topic, bytes):
            raise ValidationError(f"topic must be bytes here, got {type(topic).__name__}")
        tid = self._ids_by_bytes.get(topic)
        if tid is not None:
            return tid
        cdef uint32_t new_id
        if pb_ring_topic_add(self._r, &new_id) != PB_OK:
            raise ValidationError(
                f"cannot register topic {topic!r}: all max_topics={len(self._names)} topics "
                "are in use; create the Batcher with a larger max_topics")
        self._ids_by_bytes[topic] = new_id
        self._names.append(topic)
        return new_id

    def topic_name(self, topic_id):
        """The bytes topic registered under topic_id."""
        if not 0 <= topic_id < len(self._names):
            raise ValidationError(f"unknown topic id {topic_id}; "
                                  f"registered ids are 0..{len(self._names) - 1}")
        return self._names[topic_id]

    @property
    def topic_count(self):
        """Number of registered topics."""
        return len(self._names)

    def next_seq(self, topic_id):
        """The sequence number the next record of topic_id will get (first is 1)."""
        self._ok()
        if not 0 <= topic_id < len(self._names):
            raise ValidationError(f"unknown topic id {topic_id}; "
                                  f"registered ids are 0..{len(self._names) - 1}")
        return pb_ring_next_seq(self._r, topic_id)

    # -- append ------------------------------------------------------------------------------

    cdef int _append_buf(self, object topic_id, object payload, object header, object flags,
                         bint use_now, int64_t now_ns) except -10:
        if self._r == NULL:
            self._ok()
        cdef long long tid = _as_int64(topic_id, "topic_id")
        cdef long long fl = _as_int64(flags, "flags")
        cdef int rc
        if tid < 0 or tid >= pb_ring_topic_count(self._r):
            raise ValidationError(f"unknown topic id {topic_id!r}; register it with topic_id() "
                                  f"(registered ids are 0..{len(self._names) - 1})")
        if fl != 0 and fl != PB_FRAME_REC_MSGPACK:
            raise ValidationError(f"flags={flags!r} is not allowed; use 0 or FLAG_MSGPACK (1)")
        if type(payload) is bytes and header is None:
            # the common case, without buffer-protocol round trips
            if PyBytes_GET_SIZE(payload) > self._max_message:
                self._too_big(PyBytes_GET_SIZE(payload), 0)
            if use_now:
                rc = pb_ring_append(self._r, <uint32_t>tid, PyBytes_AS_STRING(payload),
                                    <uint32_t>PyBytes_GET_SIZE(payload), NULL, 0, <uint8_t>fl)
            else:
                rc = pb_ring_append_at(self._r, <uint32_t>tid, PyBytes_AS_STRING(payload),
                                       <uint32_t>PyBytes_GET_SIZE(payload), NULL, 0,
                                       <uint8_t>fl, now_ns)
        else:
            rc = self._append_views(<uint32_t>tid, payload, header, <uint8_t>fl, use_now, now_ns)
        if rc == PB_RING_PENDING_FIRST:
            return PB_RING_PENDING
        if rc == PB_EFULL or rc >= 0:
            return rc
        check_status(rc, "append refused")
        return -10  # not reached

    cdef int _append_views(self, uint32_t tid, object payload, object header, uint8_t fl,
                           bint use_now, int64_t now_ns) except -10:
        cdef Py_buffer pv
        cdef Py_buffer hv
        cdef int rc
        cdef Py_ssize_t hlen = 0
        PyObject_GetBuffer(payload, &pv, PyBUF_SIMPLE)
        try:
            if header is not None:
                PyObject_GetBuffer(header, &hv, PyBUF_SIMPLE)
                hlen = hv.len
            try:
                if hlen > 0xFFFF:
                    raise ValidationError(f"header of {hlen} bytes is too large; "
                                          "allowed: at most 65535")
                if pv.len + hlen > self._max_message:
                    self._too_big(pv.len, hlen)
                if use_now:
                    rc = pb_ring_append(self._r, tid, pv.buf, <uint32_t>pv.len,
                                        hv.buf if hlen else NULL, <uint16_t>hlen, fl)
                else:
                    rc = pb_ring_append_at(self._r, tid, pv.buf, <uint32_t>pv.len,
                                           hv.buf if hlen else NULL, <uint16_t>hlen, fl, now_ns)
            finally:
                if header is not None:
                    PyBuffer_Release(&hv)
        finally:
            PyBuffer_Release(&pv)
        return rc

    def append(self, topic_id, payload, header=None, flags=0):
        """Append one record; returns READY, PENDING or FULL (nothing stored).

        Parameters
        ----------
        topic_id : int
            From topic_id().
        payload, header : bytes-like
            header is a packed msgpack map or None.
        flags : int
            0, or FLAG_MSGPACK when the payload is msgpack.
        """
        return self._append_buf(topic_id, payload, header, flags, True, 0)

    def append_at(self, topic_id, payload, now_ns, header=None, flags=0):
        """append() with the caller's clock reading (ns) instead of CLOCK_REALTIME."""
        return self._append_buf(topic_id, payload, header, flags, False, now_ns)

    def set_hooks(self, resolve_topic, pack, on_ready, on_pending, on_full):
        """Install the callables publish() uses.

        Parameters
        ----------
        resolve_topic : callable(str) -> int or None
            Called on a topic cache miss; validates the topic (may raise TopicError) and
            returns ``self.topic_id(topic.encode())``. None: register without validation.
        pack : callable(object) -> bytes or None
            Packs non-bytes payloads and headers (None: a msgpack.Packer of this Batcher).
        on_ready : callable() or None
            Called when the batcher should be drained now.
        on_pending : callable() or None
            Called when a pending record made the batcher go from empty to non-empty (arm a
            drain for later).
        on_full : callable(topic, payload, headers) or None
            Called when the ring is full (nothing stored); publish returns its result. None:
            raise BackpressureError.
        """
        for name, f in (("resolve_topic", resolve_topic), ("pack", pack),
                        ("on_ready", on_ready), ("on_pending", on_pending),
                        ("on_full", on_full)):
            if f is not None and not callable(f):
                raise ValidationError(f"{name} must be callable or None, got {f!r}")
        self._resolve_topic = resolve_topic
        self._pack = self._default_pack if pack is None else pack
        self._on_ready = on_ready
        self._on_pending = on_pending
        self._on_full = on_full

    cdef uint32_t _resolve(self, object topic) except? 0xFFFFFFFF:
        if not isinstance(topic, str):
            raise ValidationError(f"topic must be a str, got {type(topic).__name__}")
        if self._resolve_topic is None:
            tid = self.topic_id((<str>topic).encode())
        else:
            tid = self._resolve_topic(topic)
            if not isinstance(tid, int) or not 0 <= tid < len(self._names):
                raise ValidationError(f"resolve_topic({topic!r}) returned {tid!r}; it must "
                                      "return an id from Batcher.topic_id()")
        self._ids_by_str[topic] = tid
        return tid

    def publish(self, topic, payload, headers=None):
        """Append one message by topic name: the hot path, one call per message.

        Bytes-like payloads go as is; anything else is packed with the pack hook and flagged
        msgpack; headers (a dict) are packed too. Then the hooks act on the status (see
        set_hooks): READY -> on_ready(), PENDING that made the batcher non-empty ->
        on_pending(), FULL -> return on_full(topic, payload, headers) (nothing stored).
        The message is stored before on_ready/on_pending run: if a hook raises, the exception
        propagates and the message stays queued.

        Returns
        -------
        None, or what on_full returned.

        Raises
        ------
        ValidationError
            payload + headers exceed max_message_bytes, headers is not a dict, the topic is
            not a str, or the pack hook returned something other than bytes.
        TopicError
            From resolve_topic on a topic not seen before.
        BackpressureError
            The ring is full and there is no on_full hook.
        """
        cdef PyObject *cached
        cdef uint32_t tid
        if topic is self._last_topic:
            # publishers mostly repeat one topic object: an identity check beats the dict
            tid = self._last_tid
        else:
            cached = PyDict_GetItem(self._ids_by_str, topic)
            if cached != NULL:
                tid = <uint32_t><object>cached
            else:
                self._ok()
                tid = self._resolve(topic)
            self._last_topic = topic
            self._last_tid = tid
        cdef uint8_t flags = 0
        cdef object data = payload
        cdef object hdr = None
        cdef const char *hp = NULL
        cdef Py_ssize_t hlen = 0
        cdef Py_buffer pv
        cdef int rc
        cdef bint was_buffer = False
        if headers is not None:
            if not isinstance(headers, dict):
                raise ValidationError(f"headers must be a dict or None, got "
                                      f"{type(headers).__name__}")
            for k in headers:  # receivers decode headers with string keys only (docs/wire.md)
                if type(k) is not str:
                    raise ValidationError(f"header keys must be str, got {k!r} "
                                          f"({type(k).__name__})")
            hdr = self._pack(headers)
            if not isinstance(hdr, bytes):
                raise ValidationError(f"the pack hook returned {type(hdr).__name__}; "
                                      "it must return bytes")
            hp = PyBytes_AS_STRING(hdr)
            hlen = PyBytes_GET_SIZE(hdr)
            if hlen > 0xFFFF:
                raise ValidationError(f"headers pack to {hlen} bytes; allowed: at most 65535")
        if type(data) is bytes:
            if PyBytes_GET_SIZE(data) + hlen > self._max_message:
                self._too_big(PyBytes_GET_SIZE(data), hlen)
            rc = pb_ring_append(self._r, tid, PyBytes_AS_STRING(data),
                                <uint32_t>PyBytes_GET_SIZE(data), hp, <uint16_t>hlen, 0)
        elif PyObject_CheckBuffer(data):
            PyObject_GetBuffer(data, &pv, PyBUF_SIMPLE)
            try:
                if pv.len + hlen > self._max_message:
                    self._too_big(pv.len, hlen)
                rc = pb_ring_append(self._r, tid, pv.buf, <uint32_t>pv.len, hp,
                                    <uint16_t>hlen, 0)
            finally:
                PyBuffer_Release(&pv)
        else:
            data = self._pack(payload)
            if not isinstance(data, bytes):
                raise ValidationError(f"the pack hook returned {type(data).__name__}; "
                                      "it must return bytes")
            if PyBytes_GET_SIZE(data) + hlen > self._max_message:
                self._too_big(PyBytes_GET_SIZE(data), hlen)
            rc = pb_ring_append(self._r, tid, PyBytes_AS_STRING(data),
                                <uint32_t>PyBytes_GET_SIZE(data), hp, <uint16_t>hlen,
                                PB_FRAME_REC_MSGPACK)
        if rc == PB_RING_PENDING:
            return None
        if rc == PB_RING_READY:
            if self._on_ready is not None:
                self._on_ready()
                # idle time counts from the end of the send, not of the drain
                pb_ring_mark_flushed(self._r, pb_now_ns())
            return None
        if rc == PB_RING_PENDING_FIRST:
            if self._on_pending is not None:
                self._on_pending()
            return None
        if rc == PB_EFULL:
            if self._on_full is not None:
                return self._on_full(topic, payload, headers)
            raise BackpressureError(
                f"batcher ring full ({pb_ring_pending_bytes(self._r)} of "
                f"{pb_ring_capacity(self._r)} bytes pending); drain it or raise capacity_bytes")
        check_status(rc, "publish refused")

    cdef int _too_big(self, Py_ssize_t plen, Py_ssize_t hlen) except -1:
        raise ValidationError(
            f"message of {plen} payload + {hlen} header bytes is too large; allowed: "
            f"payload + headers <= max_message_bytes={self._max_message}")

    # -- positions ---------------------------------------------------------------------------

    def position_frames(self, int64_t now_ns, int64_t interval_ns, uint32_t repeats,
                        bint force=False, uint32_t limit=0):
        """The position frames due at ``now_ns`` (docs/wire.md): one per topic that should
        tell subscribers its next sequence number, so they detect the loss of a stream's last
        messages, which no later message would reveal.

        A topic qualifies once it has published and none of its records is pending. When its
        sequence moved since its last announcement it is due ``interval_ns`` after that one (at
        once the first time, or with ``force``); each announcement is made ``repeats`` times,
        1, 2, 4 ... intervals apart, in case ZeroMQ drops one at a high-water mark.

        Parameters
        ----------
        now_ns, interval_ns : int
            A monotonic clock reading and the base interval, in ns (the caller's clock).
        repeats : int
            Announcements of one next sequence number.
        force : bool
            Announce moved topics now, whatever the interval (a closing publisher).
        limit : int
            At most this many frames per call (0: all due); the next call resumes where this
            one stopped, and the returned due time is then a tenth of an interval away.

        Returns
        -------
        (list of (topic bytes, frame bytes), int or None)
            The frames to send (as [topic][frame], like batch frames), and when the next one
            falls due (None: nothing is scheduled until a topic moves again).
        """
        self._ok()
        if interval_ns <= 0:
            raise ValidationError(f"interval_ns must be > 0, got {interval_ns}")
        cdef list out = []
        cdef _Positions p
        p.out = <PyObject *>out
        p.names = <PyObject *>self._names
        p.publisher_id = pb_ring_publisher_id(self._r)
        p.timestamp_ns = pb_now_ns()
        cdef int64_t due = pb_ring_positions_due(self._r, now_ns, interval_ns, repeats, limit,
                                                 force, _emit_position, &p)
        if due < 0:
            raise MemoryError("position frames: out of memory")
        return out, (due if due else None)

    # -- drain -------------------------------------------------------------------------------

    def drain_to(self, size_t sock, size_t max_frames=0, size_t max_bytes=0):
        """Send pending records as frames straight into ZeroMQ messages, without a bytes
        object in between (one copy fewer than drain() then a send).

        Parameters
        ----------
        sock : int
            The address of a pyzmq socket's libzmq socket (``zmq.Socket.underlying``), which
            the caller owns and uses from this thread only. Each frame goes as the two parts
            [topic][batch frame], without blocking (an XPUB never blocks).
        max_frames, max_bytes : int
            Stop after this many frames, or once this many frame bytes were sent (the frame
            that crosses the bound is sent whole); 0: no bound. What is left stays pending,
            in order (a publisher's flow-control window, docs/wire.md).

        Returns
        -------
        (list of (topic bytes, records, frame bytes), int)
            The frames sent, in order, and 0 or the ZeroMQ errno of the send that failed
            (then that frame's records are gone, as a failed send of a drained frame loses
            it; frames after it stay pending).
        """
        self._ok()
        if not pb_zmq_loaded() and pb_zmq_load(NULL) != PB_OK:
            raise RuntimeError(f"libzmq unavailable: {pb_zmq_load_error().decode()}")
        cdef void *s = <void *>sock
        cdef list out = []
        cdef uint32_t tid
        cdef size_t flen
        cdef bytes name
        cdef int err
        cdef _Fill fill
        cdef size_t nframes = 0, nbytes = 0
        fill.r = self._r
        if s == NULL:
            raise ValueError("drain_to needs a socket address (zmq.Socket.underlying)")
        while ((max_frames == 0 or nframes < max_frames) and (max_bytes == 0 or nbytes < max_bytes)
               and pb_ring_next_frame(self._r, &tid, &flen)):
            name = self._names[tid]
            err = pb_zmq_send(s, PyBytes_AS_STRING(name), <size_t>PyBytes_GET_SIZE(name),
                              PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT)
            if err == 0:
                err = pb_zmq_send_filled(s, flen, _fill_frame, &fill, PB_ZMQ_DONTWAIT)
            if err:
                # the frame's records leave the ring, as in a failed send of a drained frame
                # (a no-op when _fill_frame already wrote them out)
                _discard_planned(self._r, flen)
                return out, err
            out.append((name, fill.count, flen))
            nframes += 1
            nbytes += flen
        return out, 0

    def drain(self, size_t max_frames=0, size_t max_bytes=0):
        """Pending records as frames: a list of (topic bytes, frame bytes).

        Frames of one topic come in sequence order. Without bounds the ring is empty
        afterwards; ``max_frames`` and ``max_bytes`` bound the drain as in :meth:`drain_to`.
        """
        self._ok()
        cdef list out = []
        cdef uint32_t tid
        cdef size_t flen
        cdef size_t nframes = 0, nbytes = 0
        cdef bytes frame
        while ((max_frames == 0 or nframes < max_frames) and (max_bytes == 0 or nbytes < max_bytes)
               and pb_ring_next_frame(self._r, &tid, &flen)):
            frame = PyBytes_FromStringAndSize(NULL, flen)
            if pb_ring_write_frame(self._r, <uint8_t *>PyBytes_AS_STRING(frame), flen) < 0:
                raise RuntimeError("pb_ring_write_frame refused its own plan")  # not reachable
            out.append((self._names[tid], frame))
            nframes += 1
            nbytes += flen
        return out

    def mark_flushed(self):
        """Note that the frames drained last have been sent (call after sending them).

        The idle interval then counts from now rather than from the end of the drain, so a
        slow send does not make the next message look idle. publish() does this itself after
        on_ready returns; call it after draining and sending from elsewhere (a flusher).
        No effect while records are pending.
        """
        self._ok()
        pb_ring_mark_flushed(self._r, pb_now_ns())

    def mark_quiet(self):
        """Note that the last drain happened because appends had stopped (a flusher found no
        append during its wait).

        The idle interval then counts from the last append rather than from the drain: the
        next record, if it comes at least idle_us after the previous one, is READY at once
        even though the drain was recent (the tail of a burst was just sent for it). No effect
        while records are pending.
        """
        self._ok()
        pb_ring_mark_quiet(self._r)

    # -- state -------------------------------------------------------------------------------

    @property
    def pending_records(self):
        """Records waiting to be drained."""
        self._ok()
        return pb_ring_pending_records(self._r)

    @property
    def pending_bytes(self):
        """Ring bytes in use (sum of ring_record_size of pending records)."""
        self._ok()
        return pb_ring_pending_bytes(self._r)

    @property
    def capacity_bytes(self):
        """Ring size in bytes (the requested size rounded down to a multiple of 8)."""
        self._ok()
        return pb_ring_capacity(self._r)

    @property
    def publisher_id(self):
        """The u64 publisher id written into every frame."""
        self._ok()
        return pb_ring_publisher_id(self._r)

    @property
    def max_message_bytes(self):
        """Bound of payload + header bytes of one message."""
        return self._max_message

    @property
    def max_batch_records(self):
        """Records per frame at most (and the per-topic READY bound)."""
        return self._max_batch_records

    @property
    def max_batch_bytes(self):
        """Frame bytes at most (and the pending-bytes READY bound)."""
        return self._max_batch_bytes

    @property
    def idle_us(self):
        """Idle time after a drain from which a lone message is READY at once."""
        return self._idle_us

    @property
    def max_delay_us(self):
        """Age of the oldest pending record at which an append returns READY; a caller's
        timer armed by on_pending should drain at oldest_pending_ns + max_delay_us."""
        return self._max_delay_us

    @property
    def records_appended(self):
        """Records stored since creation."""
        self._ok()
        return pb_ring_records_appended(self._r)

    @property
    def frames_drained(self):
        """Frames written by drain() since creation."""
        self._ok()
        return pb_ring_frames_drained(self._r)

    @property
    def full_count(self):
        """Appends refused because the ring was full."""
        self._ok()
        return pb_ring_full_count(self._r)

    @property
    def oldest_pending_ns(self):
        """Timestamp (CLOCK_REALTIME ns) of the oldest pending record, 0 when empty."""
        self._ok()
        return pb_ring_oldest_ns(self._r)

    @property
    def last_append_ns(self):
        """Timestamp (CLOCK_REALTIME ns) of the newest record appended, 0 before the first."""
        self._ok()
        return pb_ring_last_append_ns(self._r)

    @staticmethod
    def now_ns():
        """The clock records are stamped with (CLOCK_REALTIME ns)."""
        return pb_now_ns()


cdef inline long long _as_int64(object v, str name) except? -1:
    cdef int overflow = 0
    cdef long long x
    if type(v) is int:
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0:
            return x
    return _bad_int(v, name)


cdef long long _bad_int(object v, str name) except? -1:
    # the slow path: int subclasses and objects with __index__ (numpy integers), or errors
    if type(v) is not int:
        if isinstance(v, bool) or not hasattr(type(v), "__index__"):
            raise ValidationError(f"{name} must be an int, got {type(v).__name__}")
        v = operator.index(v)
    if not (-(1 << 63) <= v < (1 << 63)):
        raise ValidationError(f"{name}={v} is out of range")
    return v


cdef int _check_int(str name, object v, object lo, object hi) except -1:
    if not isinstance(v, int) or isinstance(v, bool) or not (lo <= v <= hi):
        raise ValidationError(f"{name}={v!r} is not allowed; use an int from {lo} to {hi}")
    return 0


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
    cdef Py_buffer view
    cdef pb_frame_info info
    cdef pb_frame_record rec
    cdef size_t off = PB_FRAME_HEADER_SIZE
    cdef uint32_t i
    cdef list out
    cdef Message m
    cdef const uint8_t *buf
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        _validate(&view, &info)
        buf = <const uint8_t *>view.buf
        out = PyList_New(info.count)
        for i in range(info.count):
            off = pb_frame_next_unchecked(buf, off, info.base_timestamp_ns, &rec)
            m = Message.__new__(Message)
            m._topic = topic
            m._raw = PyBytes_FromStringAndSize(<const char *>rec.payload, rec.payload_len)
            if rec.header_len:
                m._raw_header = PyBytes_FromStringAndSize(<const char *>rec.header,
                                                          rec.header_len)
            m._flags = rec.flags
            m.seq = info.first_seq + i
            m.publisher_id = info.publisher_id
            m.timestamp_ns = rec.timestamp_ns
            Py_INCREF(m)
            PyList_SET_ITEM(out, i, m)
    finally:
        PyBuffer_Release(&view)
    return out


def decode_payloads(frame):
    """The payload bytes of every record of a frame (validated first); the fastest path."""
    cdef Py_buffer view
    cdef pb_frame_info info
    cdef pb_frame_record rec
    cdef size_t off = PB_FRAME_HEADER_SIZE
    cdef uint32_t i
    cdef list out
    cdef object b
    cdef const uint8_t *buf
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        _validate(&view, &info)
        buf = <const uint8_t *>view.buf
        out = PyList_New(info.count)
        for i in range(info.count):
            off = pb_frame_next_unchecked(buf, off, info.base_timestamp_ns, &rec)
            b = PyBytes_FromStringAndSize(<const char *>rec.payload, rec.payload_len)
            Py_INCREF(b)
            PyList_SET_ITEM(out, i, b)
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
