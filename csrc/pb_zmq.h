/* pb_zmq.h - direct calls into the libzmq that pyzmq already loaded (no Python here).
 *
 * pyzmq ships its own libzmq (or uses a system one) and loads it when `zmq` is imported. This
 * module finds that library among the objects already mapped into the process, resolves the
 * few functions pybus's hot paths need, and wraps them, so compiled code can do I/O on
 * pyzmq's own sockets (zmq.Socket.underlying) without pyzmq's per-call Python overhead.
 *
 * Nothing is linked against libzmq at build time and no zmq.h is needed: the prototypes used
 * are declared privately in pb_zmq.c (they have been stable since libzmq 3.2). A caller must
 * check pb_zmq_version() against the version pyzmq reports before using the I/O functions.
 *
 * Error convention: pb_zmq_load returns 0 or a negative PB_* status; the I/O functions return
 * 0 on success or a POSITIVE ZeroMQ errno value (EAGAIN, EINTR, EHOSTUNREACH, ENOTSOCK,
 * PB_ZMQ_ETERM, ...), so callers can tell them apart from PB_* codes at a glance.
 *
 * Thread safety: pb_zmq_load must complete (in one thread) before any other function is
 * called; after that every function is as thread-safe as the libzmq call it wraps: a ZeroMQ
 * socket may be used by one thread at a time only, a pb_zmq_msg by one thread only.
 */
#ifndef PB_ZMQ_H
#define PB_ZMQ_H

#include <stddef.h>

#include "pb_common.h"

/* libzmq's flag and error values (zmq.h; errno values as on Linux). */
#define PB_ZMQ_DONTWAIT 1
#define PB_ZMQ_SNDMORE 2
#define PB_ZMQ_HAUSNUMERO 156384712
#define PB_ZMQ_EFSM (PB_ZMQ_HAUSNUMERO + 51)
#define PB_ZMQ_ETERM (PB_ZMQ_HAUSNUMERO + 53)

/* A ZeroMQ message (libzmq's zmq_msg_t: 64 opaque bytes, 8-byte aligned). Initialise with
 * pb_zmq_msg_init, release with pb_zmq_msg_close; never copy one by value. */
typedef struct pb_zmq_msg {
    _Alignas(8) unsigned char opaque[64];
} pb_zmq_msg;

/* One buffer of a frame assembled by pb_zmq_send_concat. */
typedef struct pb_zmq_buf {
    const void *data;
    size_t len;
} pb_zmq_buf;

/* Find the libzmq already loaded in this process and resolve its functions.
 * path: NULL to search the loaded objects for exactly one whose file name starts with
 * "libzmq" (a second, different one makes the choice ambiguous: PB_ENOTFOUND); or the path
 * of an already-loaded object that exports the libzmq API (e.g. an extension module that
 * links libzmq statically). Nothing is ever loaded that was not loaded before.
 * Returns PB_OK (also when already loaded), PB_ENOTFOUND when no (unique) libzmq is loaded
 * or a function is missing; pb_zmq_load_error() then says what failed. Not thread-safe: call
 * once, before anything else here. */
int pb_zmq_load(const char *path);

/* 1 when pb_zmq_load succeeded, else 0. */
int pb_zmq_loaded(void);

/* Why the last pb_zmq_load failed ("" after success); static storage. */
const char *pb_zmq_load_error(void);

/* The file the functions were resolved from ("" before a successful load); static storage. */
const char *pb_zmq_library_path(void);

/* libzmq's version (zmq_version); all three are 0 before a successful load. */
void pb_zmq_version(int *major, int *minor, int *patch);

/* libzmq's description of a ZeroMQ errno value (zmq_strerror; static storage). */
const char *pb_zmq_strerror(int errnum);

/* Send one frame holding len bytes copied from data (zmq_send). flags: PB_ZMQ_DONTWAIT and/or
 * PB_ZMQ_SNDMORE. Returns 0 or a ZeroMQ errno (EAGAIN when DONTWAIT and it would block,
 * EHOSTUNREACH from a ROUTER_MANDATORY ROUTER, EINTR, ENOTSOCK, PB_ZMQ_ETERM, ...). */
int pb_zmq_send(void *socket, const void *data, size_t len, int flags);

/* Send one frame made of the concatenation of n buffers (one allocation of the total size,
 * then one copy per buffer; the buffers stay the caller's). Returns as pb_zmq_send, or
 * ENOMEM when the frame cannot be allocated. */
int pb_zmq_send_concat(void *socket, const pb_zmq_buf *bufs, size_t n, int flags);

/* Send one frame of len bytes that fill(dst, len, arg) writes in place: one allocation by
 * libzmq and no intermediate copy (a batch frame drained straight from the ring). fill returns
 * 0, or nonzero to cancel the send (the message is released, nothing is sent; returns EINVAL).
 * Otherwise returns as pb_zmq_send, or ENOMEM when the frame cannot be allocated (fill is then
 * not called). */
int pb_zmq_send_filled(void *socket, size_t len, int (*fill)(void *dst, size_t len, void *arg),
                       void *arg, int flags);

/* Initialise an empty message (zmq_msg_init); always succeeds. */
void pb_zmq_msg_init(pb_zmq_msg *msg);

/* Receive the next frame into msg, replacing its content (zmq_msg_recv). flags: 0 to block
 * (bounded by the socket's RCVTIMEO: EAGAIN when it expires) or PB_ZMQ_DONTWAIT. Returns 0 or
 * a ZeroMQ errno; EINTR when a signal interrupted the wait. */
int pb_zmq_msg_recv(pb_zmq_msg *msg, void *socket, int flags);

/* The bytes of a received message; valid until the next recv into it or its close. */
const void *pb_zmq_msg_data(pb_zmq_msg *msg);
size_t pb_zmq_msg_size(const pb_zmq_msg *msg);

/* 1 when more frames of the same message follow, else 0 (zmq_msg_more). */
int pb_zmq_msg_more(const pb_zmq_msg *msg);

/* Release a message's content (zmq_msg_close); msg may be initialised again afterwards. */
void pb_zmq_msg_close(pb_zmq_msg *msg);

#endif
