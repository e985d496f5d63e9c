# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False
# cython: initializedcheck=False, cdivision=True
"""Request/reply I/O straight into libzmq, on pyzmq's own sockets (csrc/pb_zmq.c).

pyzmq's ``send``/``recv`` wrappers cost about 5k instructions per frame in Python-level
bookkeeping; these functions call the libzmq that pyzmq loaded (found at import, never linked
or loaded by pybus itself) on the raw socket pointer pyzmq exposes as ``Socket.underlying``,
and build/parse the 12-byte request/reply header of docs/wire-reqrep.md in C.

Contract of every I/O function
------------------------------
``sock`` is ``zmq.Socket.underlying`` of an open pyzmq socket, read after the socket's latest
(re)creation; 0 (what pyzmq reports once the socket is closed) raises ``pybus.ClosedError``.
Passing the address of a socket closed since is undefined behaviour, as in C: the caller
(pybus.rpc) keeps the address next to the socket and drops both together. Only the thread
that owns a socket may call these with it (ZeroMQ sockets are not thread-safe). Blocking
receives release the GIL and are bounded by the socket's ``RCVTIMEO``; a signal that
interrupts one runs the Python signal handlers (so Ctrl-C raises KeyboardInterrupt) and, if
they do not raise, the call returns as if it had timed out, so the caller re-checks its own
deadline. ZeroMQ errors are raised as pybus errors (``pybus.errors.from_zmq``, the
``zmq.ZMQError`` as ``__cause__``; ENOTSOCK and ETERM as ``ClosedError``), except where a
function documents that it returns the errno.

``AVAILABLE`` is False when the library could not be resolved, its version differs from
``zmq.zmq_version_info()``, or the environment sets ``PYBUS_NO_ZMQ_FASTPATH=1``; the I/O
functions then raise ``pybus.BusError`` and pybus uses pyzmq's own calls instead.
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport PyObject
from libc.errno cimport EAGAIN, EINTR, ENOTSOCK
from libc.stdint cimport uint8_t, uint64_t

from pybus._native.ccommon cimport *
from pybus._native.czmq cimport *


import os

import zmq

from pybus.errors import BusError, ClosedError, from_zmq


# docs/wire-reqrep.md, "Frame layout"
cdef enum:
    HEADER_SIZE = 12
    WIRE_VERSION = 1
    KIND_REQUEST = 1
    KIND_REPLY = 2
    FLAG_MSGPACK = 1
    FLAGS_REQUEST = 3  # FLAG_MSGPACK | FLAG_HEADERS (wire.reqrep): the others are reserved

# Why recv_request judged a frame malformed (the names Server.stats() counts them under).
REASON_SHORT = "short"
REASON_VERSION = "version"
REASON_FLAGS = "flags"
REASON_KIND = "kind"
REASON_METHOD = "method"
REASON_MULTIPART = "multipart"

cdef bint _ok = False


def _load():
    global _ok
    if os.environ.get("PYBUS_NO_ZMQ_FASTPATH", "") not in ("", "0"):
        return "disabled by PYBUS_NO_ZMQ_FASTPATH"
    cdef int rc = pb_zmq_load(NULL)
    cdef bytes first
    if rc != PB_OK:
        # pyzmq built with libzmq linked statically into its extension: try that object.
        first = pb_zmq_load_error()
        try:
            from zmq.backend.cython import _zmq as _ext
            rc = pb_zmq_load(os.fsencode(_ext.__file__))
        except (ImportError, AttributeError):
            pass
        if rc != PB_OK:
            return first.decode("utf-8", "replace")
    cdef int major = 0, minor = 0, patch = 0
    pb_zmq_version(&major, &minor, &patch)
    reason = version_mismatch((major, minor, patch), tuple(zmq.zmq_version_info()),
                              library_path())
    if reason:
        return reason
    _ok = True
    return ""


def version_mismatch(found, reported, path):
    """Why the libzmq found at ``path`` may not be driven directly ("" when it may): its
    version ``found`` must be the ``reported`` one pyzmq runs on (a different libzmq in the
    process would take messages pyzmq's sockets do not own)."""
    if tuple(found) == tuple(reported):
        return ""
    return (f"libzmq {'.'.join(map(str, found))} found at {path} is not the "
            f"{'.'.join(map(str, reported))} pyzmq reports")


def library_path() -> str:
    """The file libzmq's functions were resolved from ("" when not resolved)."""
    return (<bytes>pb_zmq_library_path()).decode("utf-8", "replace")


UNAVAILABLE_REASON = _load()
AVAILABLE = bool(_ok)


# -- helpers ------------------------------------------------------------------------------
cdef inline uint64_t _le64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16)
            | (<uint64_t>p[3] << 24) | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40)
            | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline void _header(uint8_t *h, uint8_t kind, uint8_t flags, uint8_t mlen,
                         uint64_t cid) noexcept nogil:
    cdef int i
    h[0] = WIRE_VERSION
    h[1] = kind
    h[2] = flags
    h[3] = mlen
    for i in range(8):
        h[4 + i] = <uint8_t>(cid >> (8 * i))


cdef inline bytes _msg_bytes(pb_zmq_msg *msg):
    """A copy of the message part's bytes."""
    return PyBytes_FromStringAndSize(<const char *>pb_zmq_msg_data(msg),
                                     <Py_ssize_t>pb_zmq_msg_size(msg))


cdef int _unavailable() except -1:
    raise BusError(f"the libzmq fast path is not available: {UNAVAILABLE_REASON}")


cdef inline void *_socket(size_t sock) except NULL:
    if not _ok:
        _unavailable()
    if sock == 0:
        raise ClosedError("the ZeroMQ socket is closed")
    return <void *>sock


cdef int _raise(int err, str what) except -1:
    exc = zmq.ZMQError(err)
    if err == ENOTSOCK or err == PB_ZMQ_ETERM:
        raise ClosedError(f"{what}: the ZeroMQ socket or its context is closed "
                          f"({exc.strerror})") from exc
    raise from_zmq(exc, what) from exc


cdef inline int _signalled() except -1:
    # EINTR: let Python's signal handlers run now (Ctrl-C raises here).
    if PyErr_CheckSignals() < 0:
        return -1
    return 0


cdef int _send_concat(void *s, const pb_zmq_buf *bufs, size_t n, int flags) except -1:
    """Send without blocking; EINTR retried after the signal handlers ran. 0 or errno."""
    cdef int err
    while True:
        err = pb_zmq_send_concat(s, bufs, n, flags | PB_ZMQ_DONTWAIT)
        if err != EINTR:
            return err
        _signalled()


cdef int _wait_part(pb_zmq_msg *msg, void *s, bint dontwait, str what) except -1:
    """The first frame of the next message into msg: 0, or 1 when none came (EAGAIN: nothing
    ready, or RCVTIMEO expired; EINTR after the signal handlers ran and did not raise), so
    the caller re-checks its deadline. Waiting releases the GIL; other errors raise."""
    cdef int err
    if dontwait:
        err = pb_zmq_msg_recv(msg, s, PB_ZMQ_DONTWAIT)
    else:
        with nogil:
            err = pb_zmq_msg_recv(msg, s, 0)
    if err == 0:
        return 0
    if err == EAGAIN:
        return 1
    if err == EINTR:
        _signalled()
        return 1
    _raise(err, what)


cdef inline int _recv_rest(pb_zmq_msg *msg, void *s, str what) except -1:
    """The next part of a multipart message already delivered (ZeroMQ delivers all parts
    atomically): it never waits, so EINTR is retried without running signal handlers (which
    could leave the socket in the middle of a message)."""
    cdef int err
    while True:
        err = pb_zmq_msg_recv(msg, s, 0)
        if err != EINTR:
            break
    if err:
        _raise(err, what)
    return 0


# -- client -------------------------------------------------------------------------------
def send_request(size_t sock, uint64_t cid, uint8_t flags, bytes method not None,
                 bytes payload not None) -> int:
    """Send one REQUEST frame (header + method + payload) without blocking.

    Parameters
    ----------
    sock : int
        ``zmq.Socket.underlying`` of a DEALER.
    cid : int
        Correlation id (0 - 2**64-1).
    flags : int
        Header flags (``0x01``: the payload is msgpack).
    method, payload : bytes
        The method name (1-255 bytes; the caller validates) and the payload.

    Returns
    -------
    int
        0 once queued, or the ZeroMQ errno: EAGAIN when it would block (e.g. IMMEDIATE and no
        connection yet), others as ZeroMQ reports them.
    """
    return _send_request(_socket(sock), cid, flags, method, payload)


cdef int _send_request(void *s, uint64_t cid, uint8_t flags, bytes method,
                       bytes payload) except -1:
    cdef uint8_t head[HEADER_SIZE]
    cdef pb_zmq_buf bufs[3]
    cdef Py_ssize_t mlen = PyBytes_GET_SIZE(method)
    if mlen < 1 or mlen > 255:
        raise ValueError(f"method is {mlen} bytes; allowed: 1-255")
    _header(head, KIND_REQUEST, flags, <uint8_t>mlen, cid)
    bufs[0].data = head
    bufs[0].len = HEADER_SIZE
    bufs[1].data = PyBytes_AS_STRING(method)
    bufs[1].len = <size_t>mlen
    bufs[2].data = PyBytes_AS_STRING(payload)
    bufs[2].len = <size_t>PyBytes_GET_SIZE(payload)
    return _send_concat(s, bufs, 3, 0)


def recv_reply(size_t sock, uint64_t cid):
    """Wait (GIL released, up to the socket's RCVTIMEO) for the next frame on a DEALER.

    Returns
    -------
    bytes
        The payload of a REPLY whose correlation id is ``cid`` and whose flags are 0 (raw
        bytes): the common case, judged here.
    bytearray
        Any other frame, whole (header included), for the caller to judge: a msgpack or
        ERROR reply, a late reply, a malformed frame.
    None
        Nothing arrived within RCVTIMEO, or a signal interrupted the wait (its handlers ran
        and did not raise): re-check the deadline.
    """
    return _recv_reply(_socket(sock), cid)


cdef object _recv_reply(void *s, uint64_t cid):
    cdef pb_zmq_msg msg
    cdef const uint8_t *data
    cdef size_t n
    pb_zmq_msg_init(&msg)
    try:
        if _wait_part(&msg, s, False, "RPC client receive"):
            return None
        data = <const uint8_t *>pb_zmq_msg_data(&msg)
        n = pb_zmq_msg_size(&msg)
        if (n >= HEADER_SIZE and data[1] == KIND_REPLY and data[2] == 0
                and data[0] == WIRE_VERSION and _le64(data + 4) == cid):
            return PyBytes_FromStringAndSize(<const char *>data + HEADER_SIZE,
                                             <Py_ssize_t>(n - HEADER_SIZE))
        return PyByteArray_FromStringAndSize(<const char *>data, <Py_ssize_t>n)
    finally:
        pb_zmq_msg_close(&msg)


def call(size_t sock, uint64_t cid_base, uint64_t seq, uint8_t flags, bytes method not None,
         bytes payload not None):
    """:func:`send_request` then :func:`recv_reply` in one call (the client's hot path).

    The correlation id is ``(cid_base + seq) mod 2**64``: a client keeps a random base and a
    small counter, so its per-request arithmetic stays on small Python ints.

    Returns
    -------
    bytes, bytearray or None
        As :func:`recv_reply`, once the request was queued.
    int
        The ZeroMQ errno when the request could not be queued (nothing was sent and nothing
        waited for): EAGAIN when it would block, others as ZeroMQ reports them.
    """
    return _call(_socket(sock), cid_base + seq, flags, method, payload)


cdef object _call(void *s, uint64_t cid, uint8_t flags, bytes method, bytes payload):
    cdef int err = _send_request(s, cid, flags, method, payload)
    if err:
        return err
    return _recv_reply(s, cid)


# -- server -------------------------------------------------------------------------------
def recv_request(size_t sock):
    """Wait (GIL released, up to the socket's RCVTIMEO) for the next request on a ROUTER.

    Reads the identity frame and the frame after it, and judges that frame against
    docs/wire-reqrep.md in the order the Python server does (length, version, flags, kind,
    method length).

    Returns
    -------
    None
        Nothing arrived within RCVTIMEO (or a signal interrupted the wait and its handlers did
        not raise).
    tuple
        ``(reason, identity, cid, flags, method, data)``. A well-formed REQUEST has reason
        None, its correlation id, flags, method name and payload (bytes). Otherwise reason is
        one of the ``REASON_*`` strings, cid and flags are 0, method is None and data is the
        whole frame after the identity. With ``REASON_MULTIPART`` further parts of the
        message are still unread (the caller reads or drains them).
    """
    cdef void *s = _socket(sock)
    cdef pb_zmq_msg msg
    cdef int more
    cdef const uint8_t *data
    cdef size_t n, end
    cdef bytes ident
    cdef bytes frame
    pb_zmq_msg_init(&msg)
    try:
        if _wait_part(&msg, s, False, "RPC server receive"):
            return None
        ident = _msg_bytes(&msg)
        if not pb_zmq_msg_more(&msg):
            # Not a ROUTER's [identity][frame]: nothing follows the "identity".
            return (REASON_SHORT, ident, 0, 0, None, b"")
        _recv_rest(&msg, s, "RPC server receive")
        data = <const uint8_t *>pb_zmq_msg_data(&msg)
        n = pb_zmq_msg_size(&msg)
        more = pb_zmq_msg_more(&msg)
        if (not more and n >= HEADER_SIZE and data[0] == WIRE_VERSION and data[2] <= FLAGS_REQUEST
                and data[1] == KIND_REQUEST and data[3] != 0 and n >= HEADER_SIZE + data[3]):
            end = HEADER_SIZE + data[3]
            return (None, ident, _le64(data + 4), data[2],
                    PyBytes_FromStringAndSize(<const char *>data + HEADER_SIZE, data[3]),
                    PyBytes_FromStringAndSize(<const char *>data + end, <Py_ssize_t>(n - end)))
        frame = PyBytes_FromStringAndSize(<const char *>data, <Py_ssize_t>n)
        if more:
            reason = REASON_MULTIPART
        elif n < HEADER_SIZE:
            reason = REASON_SHORT
        elif data[0] != WIRE_VERSION:
            reason = REASON_VERSION
        elif data[2] & ~FLAGS_REQUEST:
            reason = REASON_FLAGS
        elif data[1] != KIND_REQUEST:
            reason = REASON_KIND
        else:
            reason = REASON_METHOD
        return (reason, ident, 0, 0, None, frame)
    finally:
        pb_zmq_msg_close(&msg)


def send_reply(size_t sock, bytes identity not None, uint64_t cid, uint8_t kind, uint8_t flags,
               bytes payload not None) -> int:
    """Send ``[identity][header + payload]`` on a ROUTER without blocking.

    Returns
    -------
    int
        0 once queued, or the ZeroMQ errno: EHOSTUNREACH (ROUTER_MANDATORY and the peer is
        gone), EAGAIN (its queue is full), ENOTSOCK / ETERM (closed), others as ZeroMQ
        reports them.
    """
    cdef void *s = _socket(sock)
    cdef uint8_t head[HEADER_SIZE]
    cdef pb_zmq_buf bufs[2]
    cdef int err
    bufs[0].data = PyBytes_AS_STRING(identity)
    bufs[0].len = <size_t>PyBytes_GET_SIZE(identity)
    err = _send_concat(s, bufs, 1, PB_ZMQ_SNDMORE)
    if err:
        return err
    _header(head, kind, flags, 0, cid)
    bufs[0].data = head
    bufs[0].len = HEADER_SIZE
    bufs[1].data = PyBytes_AS_STRING(payload)
    bufs[1].len = <size_t>PyBytes_GET_SIZE(payload)
    return _send_concat(s, bufs, 2, 0)


def send_frame(size_t sock, bytes data not None, bint more=False) -> int:
    """Send one frame of ``data`` without blocking (``more``: further parts follow).

    Returns 0 once queued, or the ZeroMQ errno (EAGAIN, EHOSTUNREACH, ...).
    """
    cdef void *s = _socket(sock)
    cdef pb_zmq_buf buf
    buf.data = PyBytes_AS_STRING(data)
    buf.len = <size_t>PyBytes_GET_SIZE(data)
    return _send_concat(s, &buf, 1, PB_ZMQ_SNDMORE if more else 0)


# -- generic messages (the work queue) -----------------------------------------------------
def recv_message(size_t sock, bint dontwait=True):
    """Receive one whole message (every part), or None when none is ready.

    ``dontwait`` False waits (GIL released) up to the socket's RCVTIMEO; a signal
    interrupting that wait runs the handlers and returns None, as :func:`recv_reply` does.

    Returns
    -------
    list of bytes or None
        The parts in order; ZeroMQ delivers a message's parts together, so once the first
        arrived the rest never wait.
    """
    cdef void *s = _socket(sock)
    cdef pb_zmq_msg msg
    cdef list parts
    pb_zmq_msg_init(&msg)
    try:
        if _wait_part(&msg, s, dontwait, "ZeroMQ receive"):
            return None
        parts = [_msg_bytes(&msg)]
        while pb_zmq_msg_more(&msg):
            _recv_rest(&msg, s, "ZeroMQ receive")
            parts.append(_msg_bytes(&msg))
        return parts
    finally:
        pb_zmq_msg_close(&msg)


def send_message(size_t sock, tuple parts not None) -> int:
    """Send the bytes in ``parts`` as one message, without blocking.

    Returns 0 once queued, or the ZeroMQ errno of the part that failed (EAGAIN, EHOSTUNREACH
    from a ROUTER_MANDATORY ROUTER, ...). As with pyzmq's send_multipart, a failure after the
    first part leaves the parts before it queued; a ROUTER refuses an unroutable message at its
    first part, before anything is queued.
    """
    cdef void *s = _socket(sock)
    cdef Py_ssize_t i, n = len(parts)
    cdef pb_zmq_buf buf
    cdef int err
    cdef bytes part
    if n == 0:
        raise ValueError("a message needs at least one part")
    for i in range(n):
        part = parts[i]
        buf.data = PyBytes_AS_STRING(part)
        buf.len = <size_t>PyBytes_GET_SIZE(part)
        err = _send_concat(s, &buf, 1, PB_ZMQ_SNDMORE if i + 1 < n else 0)
        if err:
            return err
    return 0


# -- publish/subscribe: a subscriber's [topic][batch frame] ---------------------------------
@cython.final
cdef class ZFrame:
    """A received ZeroMQ frame, kept in libzmq's own buffer (no copy into a bytes object).

    Read-only through the buffer protocol (``memoryview(f)``, ``decode_batch(topic, f)``,
    ``frame_info(f)``); ``len(f)`` is its size. The buffer is released with the object.
    """
    cdef pb_zmq_msg _msg

    def __cinit__(self):
        pb_zmq_msg_init(&self._msg)

    def __dealloc__(self):
        pb_zmq_msg_close(&self._msg)

    def __len__(self):
        return <Py_ssize_t>pb_zmq_msg_size(&self._msg)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, <void *>pb_zmq_msg_data(&self._msg),
                          <Py_ssize_t>pb_zmq_msg_size(&self._msg), 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    @property
    def bytes(self):
        """A copy as bytes."""
        return _msg_bytes(&self._msg)


def recv_pubsub(size_t sock, bint dontwait=True):
    """Receive one pub/sub message, [topic][batch frame], from a SUB socket.

    ``dontwait`` False waits (GIL released) up to the socket's RCVTIMEO.

    Returns
    -------
    None
        Nothing was ready (or a signal interrupted the wait and its handlers did not raise).
    (topic bytes, ZFrame, 2)
        A well-formed two-part message; the batch frame stays in libzmq's buffer.
    (topic bytes, None, parts)
        A message of ``parts`` frames (1, or more than 2), all consumed: malformed.
    """
    return _recv_pubsub(_socket(sock), dontwait)


cdef object _recv_pubsub(void *s, bint dontwait):
    cdef pb_zmq_msg part
    cdef ZFrame frame
    cdef bytes topic
    cdef int parts, more
    pb_zmq_msg_init(&part)
    try:
        if _wait_part(&part, s, dontwait, "Subscriber receive"):
            return None
        topic = _msg_bytes(&part)
        if not pb_zmq_msg_more(&part):
            return (topic, None, 1)
        frame = ZFrame.__new__(ZFrame)
        _recv_rest(&frame._msg, s, "Subscriber receive")
        if not pb_zmq_msg_more(&frame._msg):
            return (topic, frame, 2)
        parts = 2
        more = 1
        while more:
            _recv_rest(&part, s, "Subscriber receive")
            parts += 1
            more = pb_zmq_msg_more(&part)
        return (topic, None, parts)
    finally:
        pb_zmq_msg_close(&part)


cpdef Py_ssize_t take_batch(list batches, dict topics, object decode, bytes topic_b,
                             object frame, Py_ssize_t room) except -1:
    """One step of ``recv_batches``, shared by its compiled and its pyzmq twin: append the
    batch frame ``frame`` (or None) of ``topic_b`` to ``batches`` as one entry when its topic
    is known (``topics[topic_b]`` is a str) and it decodes, with ``decode(topic, frame)``, to
    between 1 and ``room`` messages. Returns how many messages it took, or 0 when the frame is
    left to the caller (a position frame, an unknown or filtered topic, a malformed frame,
    which the caller counts, or more than ``room`` messages). Codec only: no I/O."""
    cdef PyObject *p = PyDict_GetItem(topics, topic_b)
    cdef Py_ssize_t count
    if frame is None or p == NULL or type(<object>p) is not str:
        return 0
    topic = <object>p
    try:
        msgs = decode(topic, frame)
    except Exception:  # malformed: the caller counts it
        return 0
    count = len(msgs)
    if count == 0 or count > room:
        return 0
    m0 = msgs[0]
    batches.append((topic, topic_b, m0.publisher_id, m0.seq, m0.timestamp_ns, msgs, len(frame)))
    return count


def recv_batches(size_t sock, dict topics, list batches, Py_ssize_t max_messages,
                 Py_ssize_t max_frames, object decode):
    """Subscriber._fill's common case, compiled: read queued pub/sub messages without waiting
    while each one is a batch frame of a known topic (``topics[topic] is a str``) that decodes,
    with ``decode(topic, frame)``, to at least one message and fits in ``max_messages``. Each
    such frame becomes one entry of ``batches``: ``(topic, topic_b, publisher_id, first_seq,
    timestamp_ns, messages, frame_bytes)``. I/O and the codec only: the caller accounts every
    batch (``pybus.pubsub._streams``), and a frame that is anything else (a position frame, a
    malformed or filtered message) is handed back untouched. A per-frame loop of receives in
    Python costs ~3 us, which is what frames of one message each (many topics) pay per message.

    Returns
    -------
    tuple or None
        None (nothing queued, ``max_messages`` or ``max_frames`` reached) or the
        ``recv_pubsub`` tuple of a message read but left to the caller.
    """
    cdef Py_ssize_t frames = 0, total = 0, count
    cdef tuple got
    cdef void *s = _socket(sock)
    while frames < max_frames and total < max_messages:
        got = _recv_pubsub(s, True)
        if got is None:
            break
        count = take_batch(batches, topics, decode, got[0], got[1], max_messages - total)
        if count == 0:
            return got
        total += count
        frames += 1
    return None
