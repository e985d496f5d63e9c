/* pb_common.h - shared definitions of pybus's C core (no Python here). */
#ifndef PB_COMMON_H
#define PB_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define PB_LIKELY(x) __builtin_expect(!!(x), 1)
#define PB_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PB_LIKELY(x) (x)
#define PB_UNLIKELY(x) (x)
#endif

/* Status codes: 0 is success, errors are negative. */
#define PB_OK 0
#define PB_EINVAL (-1)  /* an argument is out of its allowed range */
#define PB_ENOMEM (-2)  /* allocation failed (only in *_init functions) */
#define PB_ERANGE (-3)  /* a value is outside a histogram's trackable range */
#define PB_EFULL (-4)   /* the ring has no room for the record */
#define PB_EFRAME (-5)  /* a frame is malformed (see the error detail) */
#define PB_ENOTFOUND (-6)  /* a needed library or symbol is not available (pb_zmq_load) */

/* A short English description of a status code (static storage). */
const char *pb_strerror(int status);

/* Set the calling thread's timer slack to ns nanoseconds (>= 1): how late the kernel may
 * end its sleeps and timed waits to coalesce wake-ups (Linux's default is 50 us, which more
 * than doubles a 20-us wait). Affects only the calling thread. Returns PB_OK, or PB_EINVAL when
 * ns < 1 or the platform has no such setting (not Linux) or refuses it. Thread-safe. */
int pb_thread_timer_slack(int64_t ns);

#endif
