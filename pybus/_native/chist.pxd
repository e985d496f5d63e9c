# Declarations of csrc/pb_hist.h (the status codes: ccommon.pxd); no logic here.
from libc.stdint cimport int64_t, uint8_t


cdef extern from "pb_hist.h" nogil:
    int PB_HIST_V2_HEADER_BYTES
    unsigned int PB_HIST_V2_ENCODING_COOKIE
    unsigned int PB_HIST_V2_COMPRESSION_COOKIE
    unsigned int PB_HIST_COOKIE_BASE_MASK

    ctypedef struct pb_hist:
        int64_t lowest
        int64_t highest
        int64_t max_trackable
        int significant_figures
        int unit_magnitude
        int sub_bucket_half_count_magnitude
        int sub_bucket_half_count
        int sub_bucket_count
        int bucket_count
        int64_t sub_bucket_mask
        int64_t counts_len
        int64_t min_value
        int64_t max_value
        int64_t total_count
        int64_t *counts

    int pb_hist_init(int64_t lowest, int64_t highest, int significant_figures, pb_hist **out)
    int64_t pb_hist_counts_len_for(int64_t lowest, int64_t highest, int significant_figures)
    void pb_hist_close(pb_hist *h)
    int pb_hist_record(pb_hist *h, int64_t value)
    int pb_hist_record_n(pb_hist *h, int64_t value, int64_t count)
    int pb_hist_record_corrected(pb_hist *h, int64_t value, int64_t expected_interval)
    size_t pb_hist_record_many(pb_hist *h, const int64_t *values, size_t n)
    int64_t pb_hist_min(const pb_hist *h)
    int64_t pb_hist_max(const pb_hist *h)
    double pb_hist_mean(const pb_hist *h)
    double pb_hist_stddev(const pb_hist *h)
    int64_t pb_hist_total_count(const pb_hist *h)
    int64_t pb_hist_value_at_percentile(const pb_hist *h, double p)
    int pb_hist_values_at_percentiles(const pb_hist *h, const double *ps, size_t n, int64_t *out)
    int64_t pb_hist_lowest_equivalent(const pb_hist *h, int64_t value)
    int64_t pb_hist_highest_equivalent(const pb_hist *h, int64_t value)
    int pb_hist_add(pb_hist *dst, const pb_hist *src)
    void pb_hist_reset(pb_hist *h)
    int pb_hist_copy(const pb_hist *h, pb_hist **out)
    int pb_hist_next_recorded(const pb_hist *h, size_t *cursor, int64_t *value, int64_t *count)
    size_t pb_hist_encode_bound(const pb_hist *h)
    int pb_hist_encode(const pb_hist *h, uint8_t *buf, size_t cap, size_t *written)
    int pb_hist_decode(const uint8_t *buf, size_t len, pb_hist **out, const char **detail)
