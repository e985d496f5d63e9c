/* pb_hist.c - HDR histogram: HdrHistogram's bucket layout, V2 (uncompressed) codec. */
#include "pb_hist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pb_glibc.h"
PB_PIN(log);

/* 128-bit sum for the mean: hdrhistogram sums count * median exactly (Python ints), and a
 * 1e6-value histogram of hour-long values already reaches 3.6e18, near INT64_MAX. */
__extension__ typedef unsigned __int128 pb_u128;

/* ---- layout ------------------------------------------------------------------------- */

typedef struct {
    int32_t unit_magnitude;
    int32_t sub_bucket_half_count_magnitude;
    int32_t sub_bucket_count;
    int32_t bucket_count;
    int64_t counts_len;
    int64_t max_trackable;
} pb_layout;

static int layout_for(int64_t lowest, int64_t highest, int sig, pb_layout *lay) {
    if (lowest < 1 || sig < 1 || sig > 5 || highest / 2 < lowest) return PB_EINVAL;
    /* The smallest power of two holding 2 * 10^sig distinct values at unit resolution. */
    int64_t largest_single_unit = 2;
    for (int i = 0; i < sig; i++) largest_single_unit *= 10;
    int32_t sub_bucket_count_magnitude = 0;
    while (((int64_t)1 << sub_bucket_count_magnitude) < largest_single_unit)
        sub_bucket_count_magnitude++;
    int32_t shcm = sub_bucket_count_magnitude > 1 ? sub_bucket_count_magnitude - 1 : 0;
    /* Same floating-point formula as HdrHistogram (Java, C, Python), so that a lowest just
     * below a power of two rounds the same way everywhere. */
    int32_t unit_magnitude = (int32_t)floor(log((double)lowest) / log(2.0));
    if (unit_magnitude + shcm > 61) return PB_EINVAL;
    int32_t sub_bucket_count = (int32_t)1 << (shcm + 1);

    int64_t smallest_untrackable = (int64_t)sub_bucket_count << unit_magnitude;
    int32_t buckets = 1;
    while (smallest_untrackable <= highest) {
        if (smallest_untrackable > INT64_MAX / 2) {
            buckets++;
            break;
        }
        smallest_untrackable <<= 1;
        buckets++;
    }
    lay->unit_magnitude = unit_magnitude;
    lay->sub_bucket_half_count_magnitude = shcm;
    lay->sub_bucket_count = sub_bucket_count;
    lay->bucket_count = buckets;
    lay->counts_len = (int64_t)(buckets + 1) * (sub_bucket_count / 2);
    /* The last counter's highest equivalent value is 2^(shcm + buckets + unit_mag) - 1. */
    int32_t e = shcm + buckets + unit_magnitude;
    /* e <= 63 by construction (the doubling stops at 2^62), so every counter's values fit
     * int64; refuse anything else rather than let an index map past INT64_MAX. */
    if (e > 63) return PB_EINVAL;
    lay->max_trackable = e >= 63 ? INT64_MAX : (int64_t)((UINT64_C(1) << e) - 1);
    return PB_OK;
}

int64_t pb_hist_counts_len_for(int64_t lowest, int64_t highest, int significant_figures) {
    pb_layout lay;
    int rc = layout_for(lowest, highest, significant_figures, &lay);
    return rc < 0 ? rc : lay.counts_len;
}

int pb_hist_init(int64_t lowest, int64_t highest, int significant_figures, pb_hist **out) {
    pb_layout lay;
    int rc = layout_for(lowest, highest, significant_figures, &lay);
    if (rc < 0) return rc;
    pb_hist *h = calloc(1, sizeof(*h));
    if (!h) return PB_ENOMEM;
    h->counts = calloc((size_t)lay.counts_len, sizeof(int64_t));
    if (!h->counts) {
        free(h);
        return PB_ENOMEM;
    }
    h->lowest = lowest;
    h->highest = highest;
    h->max_trackable = lay.max_trackable;
    h->significant_figures = significant_figures;
    h->unit_magnitude = lay.unit_magnitude;
    h->sub_bucket_half_count_magnitude = lay.sub_bucket_half_count_magnitude;
    h->sub_bucket_count = lay.sub_bucket_count;
    h->sub_bucket_half_count = lay.sub_bucket_count / 2;
    h->bucket_count = lay.bucket_count;
    h->sub_bucket_mask = (int64_t)(lay.sub_bucket_count - 1) << lay.unit_magnitude;
    h->counts_len = lay.counts_len;
    h->min_value = INT64_MAX;
    h->max_value = 0;
    h->total_count = 0;
    *out = h;
    return PB_OK;
}

void pb_hist_close(pb_hist *h) {
    if (!h) return;
    free(h->counts);
    free(h);
}

/* ---- index arithmetic (values are in range: 0 <= v <= max_trackable) ------------------ */

static inline int32_t bucket_index_of(const pb_hist *h, uint64_t v) {
    int32_t pow2ceiling = 64 - __builtin_clzll(v | (uint64_t)h->sub_bucket_mask);
    return pow2ceiling - h->unit_magnitude - (h->sub_bucket_half_count_magnitude + 1);
}

static inline int64_t counts_index_of(const pb_hist *h, uint64_t v) {
    int32_t b = bucket_index_of(h, v);
    /* ((b + 1) << shcm) + sub_bucket - half_count, with half_count == 1 << shcm. */
    return ((int64_t)b << h->sub_bucket_half_count_magnitude) +
           (int64_t)(v >> (b + h->unit_magnitude));
}

static inline int64_t value_from_index(const pb_hist *h, int64_t index) {
    int32_t b = (int32_t)(index >> h->sub_bucket_half_count_magnitude) - 1;
    int64_t sub = (index & (h->sub_bucket_half_count - 1)) + h->sub_bucket_half_count;
    if (b < 0) {
        sub -= h->sub_bucket_half_count;
        b = 0;
    }
    return (int64_t)((uint64_t)sub << (b + h->unit_magnitude));
}

int64_t pb_hist_lowest_equivalent(const pb_hist *h, int64_t value) {
    uint64_t v = (uint64_t)value;
    int32_t b = bucket_index_of(h, v);
    uint64_t sub = v >> (b + h->unit_magnitude);
    return (int64_t)(sub << (b + h->unit_magnitude));
}

static inline uint64_t equivalent_range_size(const pb_hist *h, uint64_t v) {
    int32_t b = bucket_index_of(h, v);
    uint64_t sub = v >> (b + h->unit_magnitude);
    if (sub >= (uint64_t)h->sub_bucket_count) b++;
    return UINT64_C(1) << (h->unit_magnitude + b);
}

int64_t pb_hist_highest_equivalent(const pb_hist *h, int64_t value) {
    uint64_t lo = (uint64_t)pb_hist_lowest_equivalent(h, value);
    return (int64_t)(lo + equivalent_range_size(h, (uint64_t)value) - 1);
}

static inline uint64_t median_equivalent(const pb_hist *h, int64_t value) {
    return (uint64_t)pb_hist_lowest_equivalent(h, value) +
           (equivalent_range_size(h, (uint64_t)value) >> 1);
}

/* ---- recording ---------------------------------------------------------------------- */

int pb_hist_record(pb_hist *h, int64_t value) {
    /* One unsigned compare rejects negatives and values past the last counter. */
    if (PB_UNLIKELY((uint64_t)value > (uint64_t)h->max_trackable)) return PB_ERANGE;
    h->counts[counts_index_of(h, (uint64_t)value)]++;
    h->total_count++;
    if (value < h->min_value) h->min_value = value;
    if (value > h->max_value) h->max_value = value;
    return PB_OK;
}

int pb_hist_record_n(pb_hist *h, int64_t value, int64_t count) {
    if (PB_UNLIKELY((uint64_t)value > (uint64_t)h->max_trackable)) return PB_ERANGE;
    if (count < 0 || count > INT64_MAX - h->total_count) return PB_EINVAL;
    if (count == 0) return PB_OK;
    h->counts[counts_index_of(h, (uint64_t)value)] += count;
    h->total_count += count;
    if (value < h->min_value) h->min_value = value;
    if (value > h->max_value) h->max_value = value;
    return PB_OK;
}

int pb_hist_record_corrected(pb_hist *h, int64_t value, int64_t expected_interval) {
    int rc = pb_hist_record(h, value);
    if (rc < 0 || expected_interval <= 0 || value <= expected_interval) return rc;
    for (int64_t missing = value - expected_interval; missing > 0; missing -= expected_interval)
        pb_hist_record(h, missing); /* in range: 0 < missing < value */
    return PB_OK;
}

size_t pb_hist_record_many(pb_hist *h, const int64_t *values, size_t n) {
    /* Layout in locals so the compiler keeps it in registers across the counts stores. */
    int64_t *const counts = h->counts;
    const uint64_t limit = (uint64_t)h->max_trackable;
    const uint64_t mask = (uint64_t)h->sub_bucket_mask;
    const int32_t unit = h->unit_magnitude;
    const int32_t shcm = h->sub_bucket_half_count_magnitude;
    const int32_t bias = unit + shcm + 1;
    uint64_t lo = (uint64_t)h->min_value, hi = (uint64_t)h->max_value;
    size_t skipped = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = (uint64_t)values[i];
        if (PB_UNLIKELY(v > limit)) {
            skipped++;
            continue;
        }
        int32_t b = 64 - __builtin_clzll(v | mask) - bias;
        counts[((int64_t)b << shcm) + (int64_t)(v >> (b + unit))]++;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    h->total_count += (int64_t)(n - skipped);
    h->min_value = (int64_t)lo;
    h->max_value = (int64_t)hi;
    return skipped;
}

/* ---- queries ------------------------------------------------------------------------ */

int64_t pb_hist_total_count(const pb_hist *h) { return h->total_count; }

int64_t pb_hist_min(const pb_hist *h) {
    if (h->total_count == 0 || h->counts[0] > 0) return 0;
    return pb_hist_lowest_equivalent(h, h->min_value);
}

int64_t pb_hist_max(const pb_hist *h) {
    if (h->max_value == 0) return 0;
    return pb_hist_highest_equivalent(h, h->max_value);
}

/* Index range holding every non-zero counter (valid only when total_count > 0). */
static inline int64_t min_index(const pb_hist *h) {
    return counts_index_of(h, (uint64_t)h->min_value);
}
static inline int64_t max_index(const pb_hist *h) {
    return counts_index_of(h, (uint64_t)h->max_value);
}

double pb_hist_mean(const pb_hist *h) {
    if (h->total_count == 0) return 0.0;
    pb_u128 total = 0;
    int64_t last = max_index(h);
    for (int64_t i = min_index(h); i <= last; i++) {
        int64_t c = h->counts[i];
        if (c) total += (pb_u128)(uint64_t)c * median_equivalent(h, value_from_index(h, i));
    }
    return (double)total / (double)h->total_count;
}

double pb_hist_stddev(const pb_hist *h) {
    if (h->total_count == 0) return 0.0;
    double mean = pb_hist_mean(h);
    double acc = 0.0;
    int64_t last = max_index(h);
    /* Same order and rounding as hdrhistogram: sum((median - mean)^2 * count). */
    for (int64_t i = min_index(h); i <= last; i++) {
        int64_t c = h->counts[i];
        if (c) {
            double dev = (double)median_equivalent(h, value_from_index(h, i)) - mean;
            acc += (dev * dev) * (double)c;
        }
    }
    return sqrt(acc / (double)h->total_count);
}

/* hdrhistogram's rounding: int(p * total / 100 + 0.5), at least 1. */
static inline int64_t target_count(const pb_hist *h, double p) {
    if (p > 100.0) p = 100.0;
    if (!(p >= 0.0)) p = 0.0;
    int64_t t = (int64_t)(((p * (double)h->total_count) / 100.0) + 0.5);
    if (t > h->total_count) t = h->total_count; /* only past 2^53 values can round up */
    return t < 1 ? 1 : t;
}

static inline int64_t value_for(const pb_hist *h, int64_t index, double p) {
    int64_t v = value_from_index(h, index);
    return p != 0.0 ? pb_hist_highest_equivalent(h, v) : pb_hist_lowest_equivalent(h, v);
}

int64_t pb_hist_value_at_percentile(const pb_hist *h, double p) {
    if (h->total_count == 0) return 0;
    int64_t target = target_count(h, p);
    const int64_t *counts = h->counts;
    int64_t i;
    if (target <= h->total_count / 2) {
        int64_t cum = 0;
        for (i = min_index(h);; i++) {
            cum += counts[i];
            if (cum >= target) break;
        }
    } else {
        /* High percentiles: walk down from the max. cum(i) = total - above(i), and we want
         * the smallest i with above(i) <= total - target. */
        int64_t allowed = h->total_count - target, above = 0;
        i = max_index(h);
        while (i > 0 && above + counts[i] <= allowed) {
            above += counts[i];
            i--;
        }
    }
    return value_for(h, i, p);
}

int pb_hist_values_at_percentiles(const pb_hist *h, const double *ps, size_t n, int64_t *out) {
    for (size_t k = 0; k < n; k++) {
        if (!(ps[k] >= 0.0 && ps[k] <= 100.0)) return PB_EINVAL;
        if (k > 0 && ps[k] < ps[k - 1]) return PB_EINVAL;
    }
    if (h->total_count == 0) {
        for (size_t k = 0; k < n; k++) out[k] = 0;
        return PB_OK;
    }
    int64_t i = min_index(h), cum = h->counts[i];
    for (size_t k = 0; k < n; k++) {
        int64_t target = target_count(h, ps[k]);
        while (cum < target) cum += h->counts[++i]; /* target <= total: stops by max index */
        out[k] = value_for(h, i, ps[k]);
    }
    return PB_OK;
}

/* ---- whole-histogram operations ----------------------------------------------------- */

int pb_hist_add(pb_hist *dst, const pb_hist *src) {
    if (src->total_count == 0) return PB_OK;
    if (pb_hist_max(src) > dst->max_trackable) return PB_ERANGE;
    if (src->total_count > INT64_MAX - dst->total_count) return PB_EINVAL;
    int64_t first = min_index(src), last = max_index(src);
    if (dst->unit_magnitude == src->unit_magnitude &&
        dst->sub_bucket_half_count_magnitude == src->sub_bucket_half_count_magnitude &&
        dst->counts_len == src->counts_len) {
        for (int64_t i = first; i <= last; i++) dst->counts[i] += src->counts[i];
        dst->total_count += src->total_count;
        if (src->min_value < dst->min_value) dst->min_value = src->min_value;
        if (src->max_value > dst->max_value) dst->max_value = src->max_value;
        return PB_OK;
    }
    for (int64_t i = first; i <= last; i++) {
        if (src->counts[i])
            pb_hist_record_n(dst, value_from_index(src, i), src->counts[i]); /* fits: checked */
    }
    return PB_OK;
}

void pb_hist_reset(pb_hist *h) {
    memset(h->counts, 0, (size_t)h->counts_len * sizeof(int64_t));
    h->total_count = 0;
    h->min_value = INT64_MAX;
    h->max_value = 0;
}

int pb_hist_copy(const pb_hist *h, pb_hist **out) {
    pb_hist *c = malloc(sizeof(*c));
    if (!c) return PB_ENOMEM;
    *c = *h;
    c->counts = malloc((size_t)h->counts_len * sizeof(int64_t));
    if (!c->counts) {
        free(c);
        return PB_ENOMEM;
    }
    memcpy(c->counts, h->counts, (size_t)h->counts_len * sizeof(int64_t));
    *out = c;
    return PB_OK;
}

int pb_hist_next_recorded(const pb_hist *h, size_t *cursor, int64_t *value, int64_t *count) {
    if (h->total_count == 0) return 0;
    size_t i = *cursor, end = (size_t)max_index(h) + 1;
    while (i < end && h->counts[i] == 0) i++;
    if (i >= end) {
        *cursor = i;
        return 0;
    }
    *value = pb_hist_highest_equivalent(h, value_from_index(h, (int64_t)i));
    *count = h->counts[i];
    *cursor = i + 1;
    return 1;
}

/* ---- V2 codec ----------------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v) {
    for (int k = 3; k >= 0; k--, v >>= 8) p[k] = (uint8_t)v;
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int k = 7; k >= 0; k--, v >>= 8) p[k] = (uint8_t)v;
}
static uint32_t get_u32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint64_t get_u64(const uint8_t *p) {
    return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
}

/* LEB128-64b9B: 7 bits a byte for 8 bytes, then a 9th byte carrying the top 8 bits. */
static uint8_t *put_zigzag(uint8_t *p, int64_t x) {
    uint64_t u = ((uint64_t)x << 1) ^ (x < 0 ? UINT64_MAX : 0);
    for (int k = 0; k < 8; k++) {
        if (u < 0x80) {
            *p++ = (uint8_t)u;
            return p;
        }
        *p++ = (uint8_t)((u & 0x7f) | 0x80);
        u >>= 7;
    }
    *p++ = (uint8_t)u;
    return p;
}

/* Returns the new position, or NULL when the varint runs past end. */
static const uint8_t *get_zigzag(const uint8_t *p, const uint8_t *end, int64_t *x) {
    uint64_t u = 0;
    int k;
    for (k = 0; k < 8; k++) {
        if (p >= end) return NULL;
        uint8_t b = *p++;
        u |= (uint64_t)(b & 0x7f) << (7 * k);
        if (!(b & 0x80)) break;
    }
    if (k == 8) {
        if (p >= end) return NULL;
        u |= (uint64_t)*p++ << 56;
    }
    *x = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    return p;
}

size_t pb_hist_encode_bound(const pb_hist *h) {
    size_t n = h->total_count ? (size_t)max_index(h) + 1 : 0;
    return PB_HIST_V2_HEADER_BYTES + 9 * n;
}

int pb_hist_encode(const pb_hist *h, uint8_t *buf, size_t cap, size_t *written) {
    if (cap < pb_hist_encode_bound(h)) return PB_EINVAL;
    uint8_t *p = buf + PB_HIST_V2_HEADER_BYTES;
    if (h->total_count) {
        int64_t last = max_index(h);
        for (int64_t i = 0; i <= last;) {
            int64_t c = h->counts[i];
            if (c) {
                p = put_zigzag(p, c);
                i++;
                continue;
            }
            int64_t run = 0;
            while (i <= last && h->counts[i] == 0) {
                run++;
                i++;
            }
            p = put_zigzag(p, -run);
        }
    }
    size_t payload = (size_t)(p - buf) - PB_HIST_V2_HEADER_BYTES;
    double ratio = 1.0;
    uint64_t ratio_bits;
    memcpy(&ratio_bits, &ratio, sizeof ratio_bits);
    put_u32(buf, PB_HIST_V2_ENCODING_COOKIE);
    put_u32(buf + 4, (uint32_t)payload);
    put_u32(buf + 8, 0); /* normalizing index offset */
    put_u32(buf + 12, (uint32_t)h->significant_figures);
    put_u64(buf + 16, (uint64_t)h->lowest);
    put_u64(buf + 24, (uint64_t)h->highest);
    put_u64(buf + 32, ratio_bits);
    *written = (size_t)(p - buf);
    return PB_OK;
}

#define DECODE_FAIL(msg)      \
    do {                      \
        if (detail) *detail = (msg); \
        rc = PB_EFRAME;       \
        goto fail;            \
    } while (0)

int pb_hist_decode(const uint8_t *buf, size_t len, pb_hist **out, const char **detail) {
    pb_hist *h = NULL;
    int rc;
    if (len < PB_HIST_V2_HEADER_BYTES) DECODE_FAIL("shorter than the 40-byte V2 header");
    uint32_t cookie = get_u32(buf);
    if ((cookie & PB_HIST_COOKIE_BASE_MASK) !=
        (PB_HIST_V2_ENCODING_COOKIE & PB_HIST_COOKIE_BASE_MASK))
        DECODE_FAIL("not a V2 histogram payload (bad cookie)");
    uint32_t payload = get_u32(buf + 4);
    if ((size_t)payload != len - PB_HIST_V2_HEADER_BYTES)
        DECODE_FAIL("payload length in the header does not match the data");
    if (get_u32(buf + 8) != 0) DECODE_FAIL("non-zero normalizing index offset is not supported");
    int32_t sig = (int32_t)get_u32(buf + 12);
    int64_t lowest = (int64_t)get_u64(buf + 16);
    int64_t highest = (int64_t)get_u64(buf + 24);
    rc = pb_hist_init(lowest, highest, sig, &h);
    if (rc == PB_ENOMEM) goto fail;
    if (rc < 0) DECODE_FAIL("header layout is invalid (need lowest >= 1, highest >= 2*lowest, "
                            "1..5 significant figures)");

    const uint8_t *p = buf + PB_HIST_V2_HEADER_BYTES, *end = buf + len;
    int64_t idx = 0, first = -1, last = -1, total = 0;
    while (p < end) {
        int64_t x;
        p = get_zigzag(p, end, &x);
        if (!p) DECODE_FAIL("truncated count varint");
        if (x < 0) {
            if (x == INT64_MIN || -x > h->counts_len - idx)
                DECODE_FAIL("zero run goes past the histogram's last counter");
            idx += -x;
            continue;
        }
        if (idx >= h->counts_len) DECODE_FAIL("more counts than the histogram's layout holds");
        if (x > INT64_MAX - total) DECODE_FAIL("total count overflows int64");
        if (x) {
            h->counts[idx] = x;
            total += x;
            if (first < 0) first = idx;
            last = idx;
        }
        idx++;
    }
    h->total_count = total;
    if (total) {
        h->min_value = value_from_index(h, first);
        h->max_value = value_from_index(h, last);
    }
    *out = h;
    return PB_OK;
fail:
    pb_hist_close(h);
    return rc;
}
