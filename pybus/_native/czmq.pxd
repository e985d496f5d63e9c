# czmq.pxd - declarations of csrc/pb_zmq.h (declarations only).

cdef extern from "pb_zmq.h" nogil:
    int PB_ZMQ_DONTWAIT
    int PB_ZMQ_SNDMORE
    int PB_ZMQ_EFSM
    int PB_ZMQ_ETERM

    ctypedef struct pb_zmq_msg:
        pass

    ctypedef struct pb_zmq_buf:
        const void *data
        size_t len

    int pb_zmq_load(const char *path)
    int pb_zmq_loaded()
    const char *pb_zmq_load_error()
    const char *pb_zmq_library_path()
    void pb_zmq_version(int *major, int *minor, int *patch)
    const char *pb_zmq_strerror(int errnum)
    int pb_zmq_send(void *socket, const void *data, size_t len, int flags)
    int pb_zmq_send_concat(void *socket, const pb_zmq_buf *bufs, size_t n, int flags)
    int pb_zmq_send_filled(void *socket, size_t len,
                           int (*fill)(void *dst, size_t len, void *arg) noexcept nogil,
                           void *arg, int flags)
    void pb_zmq_msg_init(pb_zmq_msg *msg)
    int pb_zmq_msg_recv(pb_zmq_msg *msg, void *socket, int flags)
    const void *pb_zmq_msg_data(pb_zmq_msg *msg)
    size_t pb_zmq_msg_size(const pb_zmq_msg *msg)
    int pb_zmq_msg_more(const pb_zmq_msg *msg)
    void pb_zmq_msg_close(pb_zmq_msg *msg)
