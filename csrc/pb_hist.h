/* pb_hist.h - an HDR (high dynamic range) latency histogram in plain C11.
 *
 * The bucket layout is HdrHistogram's: values from 0 up to a highest trackable value are
 * counted in buckets whose width keeps `significant_figures` decimal digits of precision,
 * so that for the same (lowest, highest, significant_figures) every count index, every
 * equivalent-value range and every percentile equals the reference implementations
 * (HdrHistogram Java / HdrHistogram_c / the `hdrhistogram` PyPI package).
 *
 * Threading: a pb_hist is not synchronised. Concurrent queries on a histogram nobody is
 * writing are safe; any writer (record*, add, reset) needs exclusive access.
 * Memory: only pb_hist_init, pb_hist_copy and pb_hist_decode allocate. Everything else,
 * including the record path, works in place.
 */
#ifndef PB_HIST_H
#define PB_HIST_H

#include <stddef.h>
#include <stdint.h>

#include "pb_common.h"

/* The V2 encoding's fixed header: cookie, payload length, normalizing index offset,
 * significant figures (4 bytes each), lowest, highest (8 bytes each), conversion ratio
 * (an IEEE double), all big-endian. */
#define PB_HIST_V2_HEADER_BYTES 40
/* The cookie of an uncompressed V2 payload (word size 8 in bits 4-7, as hdrhistogram writes). */
#define PB_HIST_V2_ENCODING_COOKIE 0x1c849313u
/* The cookie of the compressed V2 envelope (cookie + length + zlib(payload)). */
#define PB_HIST_V2_COMPRESSION_COOKIE 0x1c849314u
/* Cookies are compared with bits 4-7 (the word size) masked out. */
#define PB_HIST_COOKIE_BASE_MASK (~0xf0u)

typedef struct pb_hist {
    /* Layout (fixed at init). */
    int64_t lowest;                   /* lowest discernible value, >= 1 */
    int64_t highest;                  /* highest trackable value asked for, >= 2 * lowest */
    int64_t max_trackable;            /* the largest value record() accepts (>= highest) */
    int32_t significant_figures;      /* 1..5 */
    int32_t unit_magnitude;           /* floor(log2(lowest)) */
    int32_t sub_bucket_half_count_magnitude;
    int32_t sub_bucket_half_count;
    int32_t sub_bucket_count;
    int32_t bucket_count;
    int64_t sub_bucket_mask;
    int64_t counts_len;
    /* State. */
    int64_t min_value;                /* smallest raw value recorded, INT64_MAX if none */
    int64_t max_value;                /* largest raw value recorded, 0 if none */
    int64_t total_count;
    int64_t *counts;                  /* counts_len entries, owned */
} pb_hist;

/* Create an empty histogram tracking values in [0, highest] with `significant_figures`
 * decimal digits of precision; values below `lowest` are indistinguishable from 0.
 * Requires lowest >= 1, highest >= 2 * lowest, 1 <= significant_figures <= 5 and
 * floor(log2(lowest)) + the sub-bucket magnitude <= 61 (as HdrHistogram_c).
 * On success stores a new histogram (owned by the caller, free with pb_hist_close) in
 * *out and returns PB_OK. Errors: PB_EINVAL (bad arguments, *out untouched), PB_ENOMEM. */
int pb_hist_init(int64_t lowest, int64_t highest, int significant_figures, pb_hist **out);

/* The number of counters a histogram with this layout holds (what pb_hist_init would
 * allocate, 8 bytes each), or PB_EINVAL if pb_hist_init would refuse the arguments.
 * Pure; lets a decoder bound memory before allocating. */
int64_t pb_hist_counts_len_for(int64_t lowest, int64_t highest, int significant_figures);

/* Free a histogram made by pb_hist_init, pb_hist_copy or pb_hist_decode. NULL is a no-op. */
void pb_hist_close(pb_hist *h);

/* Count one occurrence of `value`. Returns PB_OK, or PB_ERANGE (nothing recorded) when
 * value < 0 or value > h->max_trackable. Never allocates; O(1). */
int pb_hist_record(pb_hist *h, int64_t value);

/* Count `count` occurrences of `value`. count == 0 records nothing and returns PB_OK.
 * Errors (nothing recorded): PB_ERANGE for a value out of range, PB_EINVAL for count < 0
 * or when the total count would overflow int64. */
int pb_hist_record_n(pb_hist *h, int64_t value, int64_t count);

/* Record `value`, then correct for coordinated omission the way the Python `hdrhistogram`
 * package does (pybus's interoperability oracle): when expected_interval > 0 and
 * value > expected_interval, also record value - k * expected_interval for k = 1, 2, ...
 * while that is > 0. (HdrHistogram Java and C stop at >= expected_interval, so they omit
 * the last remainder below the interval.)
 * Errors (nothing recorded): PB_ERANGE when value is out of range. */
int pb_hist_record_corrected(pb_hist *h, int64_t value, int64_t expected_interval);

/* Record n values from `values` (which may be NULL when n == 0) in one tight loop.
 * Out-of-range values are skipped; returns how many were skipped. Never fails. */
size_t pb_hist_record_many(pb_hist *h, const int64_t *values, size_t n);

/* Smallest recorded value, rounded down to its bucket's lowest equivalent value;
 * 0 for an empty histogram. */
int64_t pb_hist_min(const pb_hist *h);

/* Largest recorded value, rounded up to its bucket's highest equivalent value;
 * 0 for an empty histogram. */
int64_t pb_hist_max(const pb_hist *h);

/* Mean of the recorded values, each taken at its bucket's median equivalent value;
 * 0.0 for an empty histogram. Exact sum (128-bit), as hdrhistogram computes it. */
double pb_hist_mean(const pb_hist *h);

/* Population standard deviation around pb_hist_mean (bucket medians); 0.0 when empty. */
double pb_hist_stddev(const pb_hist *h);

/* Total number of recorded values. */
int64_t pb_hist_total_count(const pb_hist *h);

/* The value at percentile p (clamped to [0, 100]): the highest equivalent value of the
 * first bucket whose cumulative count reaches round(p * total / 100) (at least 1); for
 * p == 0 the lowest equivalent value of that bucket. 0 for an empty histogram. O(buckets),
 * scanning from whichever end is nearer. */
int64_t pb_hist_value_at_percentile(const pb_hist *h, double p);

/* Answer n percentile queries in one pass. `ps` must be sorted ascending and lie in
 * [0, 100]; results go to out[0..n). Returns PB_OK or PB_EINVAL (unsorted, NaN or out of
 * [0, 100]; out untouched). */
int pb_hist_values_at_percentiles(const pb_hist *h, const double *ps, size_t n, int64_t *out);

/* Lowest / highest value counted in the same bucket as `value` (value must be in range). */
int64_t pb_hist_lowest_equivalent(const pb_hist *h, int64_t value);
int64_t pb_hist_highest_equivalent(const pb_hist *h, int64_t value);

/* Add every count of `src` into `dst`. Same layout: count-wise sum. Different layout: each
 * of src's recorded buckets is re-recorded into dst at its lowest equivalent value. Returns
 * PB_ERANGE (dst untouched) when src's max does not fit dst, PB_EINVAL if the total count
 * would overflow. dst and src may not be the same object. */
int pb_hist_add(pb_hist *dst, const pb_hist *src);

/* Forget every recorded value (the layout stays). */
void pb_hist_reset(pb_hist *h);

/* Deep copy: stores a new histogram in *out (caller owns it). Errors: PB_ENOMEM. */
int pb_hist_copy(const pb_hist *h, pb_hist **out);

/* Iterate over non-empty buckets in ascending order. Start with *cursor = 0; each call
 * that returns 1 stores the bucket's highest equivalent value and its count and advances
 * *cursor; returns 0 when no bucket is left. */
int pb_hist_next_recorded(const pb_hist *h, size_t *cursor, int64_t *value, int64_t *count);

/* Upper bound of the bytes pb_hist_encode writes for h in its current state. */
size_t pb_hist_encode_bound(const pb_hist *h);

/* Write h's uncompressed V2 encoding (header + ZigZag LEB128 counts up to the bucket of
 * the max, zero runs as negative numbers) into buf[0..cap). Stores the length in *written.
 * Errors: PB_EINVAL if cap < pb_hist_encode_bound(h) (nothing written). */
int pb_hist_encode(const pb_hist *h, uint8_t *buf, size_t cap, size_t *written);

/* Decode an uncompressed V2 encoding of exactly `len` bytes into a new histogram stored in
 * *out (caller owns it). Every length, varint, run and count is checked against the buffer
 * end and the layout; nothing is read past buf + len. On failure returns PB_EFRAME
 * (malformed: *detail, if not NULL, gets a static English reason) or PB_ENOMEM. */
int pb_hist_decode(const uint8_t *buf, size_t len, pb_hist **out, const char **detail);

#endif
