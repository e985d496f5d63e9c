# The one mapper of the C core's status codes (csrc/pb_common.h, PB_E*) to pybus exceptions.
# Included by every extension module that calls the core: compiled into each, written once.
# Each call site says what it was doing (``message``); the code decides the exception's kind.
# (_zmqfast maps ZeroMQ's errno values instead, through pybus.errors.from_zmq, as pyzmq's own
# calls are.)


cdef int check_status(int rc, str message) except -1:
    """rc >= 0 passes; otherwise raise the exception of rc's kind with ``message``."""
    if rc >= 0:
        return 0
    text = f"{message} ({pb_strerror(rc).decode()})"
    if rc == PB_ENOMEM:
        raise MemoryError(text)
    if rc == PB_EFULL:
        raise BackpressureError(text)
    if rc == PB_EFRAME:
        raise FrameError(text)
    if rc == PB_ERANGE:
        raise HistogramRangeError(text)
    raise ValidationError(text)
