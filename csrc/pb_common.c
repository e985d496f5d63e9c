/* pb_common.c - status code descriptions and small platform helpers of the C core. */
#ifdef __linux__
#define _GNU_SOURCE
#include <sys/prctl.h>
#endif
#include "pb_common.h"

const char *pb_strerror(int status) {
    switch (status) {
    case PB_OK: return "ok";
    case PB_EINVAL: return "invalid argument";
    case PB_ENOMEM: return "out of memory";
    case PB_ERANGE: return "value outside the trackable range";
    case PB_EFULL: return "ring full";
    case PB_EFRAME: return "malformed frame";
    case PB_ENOTFOUND: return "library or symbol not found";
    default: return "unknown status";
    }
}

int pb_thread_timer_slack(int64_t ns) {
    if (ns < 1) return PB_EINVAL;
#if defined(__linux__) && defined(PR_SET_TIMERSLACK)
    return prctl(PR_SET_TIMERSLACK, (unsigned long)ns, 0UL, 0UL, 0UL) == 0 ? PB_OK : PB_EINVAL;
#else
    return PB_EINVAL;
#endif
}
