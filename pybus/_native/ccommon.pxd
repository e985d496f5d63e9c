# ccommon.pxd - declarations of csrc/pb_common.h, the status codes every part of the core
# returns (declarations only; cimported by each extension module that calls the core).
from libc.stdint cimport int64_t


cdef extern from "pb_common.h" nogil:
    int PB_OK
    int PB_EINVAL
    int PB_ENOMEM
    int PB_ERANGE
    int PB_EFULL
    int PB_EFRAME
    int PB_ENOTFOUND
    const char *pb_strerror(int status)
    int pb_thread_timer_slack(int64_t ns)
