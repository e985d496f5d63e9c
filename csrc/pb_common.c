/* pb_common.c - status code descriptions shared by the C core. */
#include "pb_common.h"

const char *pb_strerror(int status) {
    switch (status) {
    case PB_OK: return "ok";
    case PB_EINVAL: return "invalid argument";
    case PB_ENOMEM: return "out of memory";
    case PB_ERANGE: return "value outside the trackable range";
    case PB_EFULL: return "ring full";
    case PB_EFRAME: return "malformed frame";
    default: return "unknown status";
    }
}
