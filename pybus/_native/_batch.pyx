# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""The batcher (csrc/pb_ring.c) for Python: the ring buffer that packs published messages into
the batch frames of docs/wire.md (their codec is ``_frame``).

Thread safety: a Batcher is used under its owner's lock. None of its methods releases the
GIL, so each single call is atomic with respect to other Python threads, but sequences of
calls are not, and publish() runs Python hooks in the middle.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject
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

# Messages pickled by earlier versions name their rebuilder here; it lives in _frame now.
from pybus._native._frame import _message_from_wire


READY = PB_RING_READY
PENDING = PB_RING_PENDING
FULL = PB_EFULL
RING_RECORD_OVERHEAD = PB_RING_RECORD_OVERHEAD

cdef object _NO_TOPIC = object()  # never a topic: publish()'s last-topic cache starts empty

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
