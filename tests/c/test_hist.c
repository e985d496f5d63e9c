/* test_hist.c - C tests of pb_hist (run under ASan/UBSan with -DPYBUS_SANITIZE=ON). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb_hist.h"

static int failures = 0;
#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond)) {                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                   \
        }                                                                 \
    } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* Sum of iterated bucket counts; must equal total_count for any valid histogram. */
static int64_t iter_sum(const pb_hist *h) {
    size_t cursor = 0;
    int64_t v, c, sum = 0, prev = -1;
    while (pb_hist_next_recorded(h, &cursor, &v, &c)) {
        CHECK(c > 0);
        CHECK(v > prev);
        prev = v;
        sum += c;
    }
    return sum;
}

static void test_init_args(void) {
    pb_hist *h = NULL;
    CHECK(pb_hist_init(0, 100, 3, &h) == PB_EINVAL);
    CHECK(pb_hist_init(10, 19, 3, &h) == PB_EINVAL);
    CHECK(pb_hist_init(1, 100, 0, &h) == PB_EINVAL);
    CHECK(pb_hist_init(1, 100, 6, &h) == PB_EINVAL);
    CHECK(pb_hist_init(INT64_C(1) << 55, INT64_MAX, 3, &h) == PB_EINVAL); /* 55 + 10 > 61 */
    CHECK(h == NULL);
    CHECK(pb_hist_counts_len_for(1, 100, 6) == PB_EINVAL);
    /* HdrHistogram's layout for (1, 3.6e12, 3): 2048 sub-buckets, 32 buckets, 33792 counters
     * ((32 + 1) * 1024); for (1, 1000, 3) a single bucket of 2048 counters. */
    CHECK(pb_hist_counts_len_for(1, 1000, 3) == 2048);
    CHECK(pb_hist_counts_len_for(1, INT64_C(3600000000000), 3) == 33 * 1024);
    CHECK(pb_hist_init(1, INT64_MAX, 5, &h) == PB_OK);
    CHECK(h->max_trackable == INT64_MAX);
    CHECK(pb_hist_record(h, INT64_MAX) == PB_OK);
    CHECK(pb_hist_max(h) == INT64_MAX);
    CHECK(pb_hist_value_at_percentile(h, 100.0) == INT64_MAX);
    pb_hist_close(h);
    pb_hist_close(NULL);
}

static void test_record_and_percentiles(void) {
    pb_hist *h;
    CHECK(pb_hist_init(1, 1000000, 3, &h) == PB_OK);
    CHECK(pb_hist_value_at_percentile(h, 50) == 0);
    CHECK(pb_hist_min(h) == 0 && pb_hist_max(h) == 0 && pb_hist_mean(h) == 0.0);
    /* 1..1000 are all below 2048, so each has its own counter: percentiles are exact. */
    for (int64_t v = 1; v <= 1000; v++) CHECK(pb_hist_record(h, v) == PB_OK);
    CHECK(pb_hist_total_count(h) == 1000);
    CHECK(pb_hist_value_at_percentile(h, 50.0) == 500);
    CHECK(pb_hist_value_at_percentile(h, 99.0) == 990);
    CHECK(pb_hist_value_at_percentile(h, 99.95) == 1000); /* int(999.5 + 0.5) */
    CHECK(pb_hist_value_at_percentile(h, 0.0) == 1);
    CHECK(pb_hist_value_at_percentile(h, 100.0) == 1000);
    CHECK(pb_hist_value_at_percentile(h, 0.01) == 1); /* target rounds to 0, raised to 1 */
    CHECK(pb_hist_min(h) == 1 && pb_hist_max(h) == 1000);
    CHECK(pb_hist_mean(h) == 500.5);
    double ps[] = {0.0, 25.0, 50.0, 75.0, 99.0, 100.0};
    int64_t out[6];
    CHECK(pb_hist_values_at_percentiles(h, ps, 6, out) == PB_OK);
    for (int k = 0; k < 6; k++) CHECK(out[k] == pb_hist_value_at_percentile(h, ps[k]));
    double unsorted[] = {50.0, 10.0};
    CHECK(pb_hist_values_at_percentiles(h, unsorted, 2, out) == PB_EINVAL);
    double too_big[] = {101.0};
    CHECK(pb_hist_values_at_percentiles(h, too_big, 1, out) == PB_EINVAL);

    /* Above 2048 buckets double in width: 10001 lies in [10000, 10007] (width 8). */
    CHECK(pb_hist_lowest_equivalent(h, 10001) == 10000);
    CHECK(pb_hist_highest_equivalent(h, 10001) == 10007);
    CHECK(pb_hist_lowest_equivalent(h, 2049) == 2048);
    CHECK(pb_hist_highest_equivalent(h, 2049) == 2049);

    CHECK(pb_hist_record(h, -1) == PB_ERANGE);
    CHECK(pb_hist_record(h, h->max_trackable + 1) == PB_ERANGE);
    CHECK(pb_hist_record(h, h->max_trackable) == PB_OK);
    CHECK(pb_hist_record_n(h, 5, -1) == PB_EINVAL);
    CHECK(pb_hist_record_n(h, 5, 0) == PB_OK);
    CHECK(pb_hist_record_n(h, 5, INT64_MAX) == PB_EINVAL);
    CHECK(pb_hist_total_count(h) == 1001);
    CHECK(iter_sum(h) == 1001);

    pb_hist_reset(h);
    CHECK(pb_hist_total_count(h) == 0 && iter_sum(h) == 0 && pb_hist_max(h) == 0);
    /* Constant data: stddev 0, mean at the bucket median. */
    CHECK(pb_hist_record_n(h, 100, 7) == PB_OK);
    CHECK(pb_hist_stddev(h) == 0.0 && pb_hist_mean(h) == 100.0);
    /* Corrected: 10 with interval 3 records 10, 7, 4, 1 (as the hdrhistogram package). */
    pb_hist_reset(h);
    CHECK(pb_hist_record_corrected(h, 10, 3) == PB_OK);
    CHECK(pb_hist_total_count(h) == 4 && pb_hist_min(h) == 1 && pb_hist_max(h) == 10);
    CHECK(pb_hist_record_corrected(h, -5, 3) == PB_ERANGE);
    CHECK(pb_hist_total_count(h) == 4);
    pb_hist_close(h);
}

static void test_record_many_and_add(void) {
    pb_hist *a, *b, *c, *small;
    CHECK(pb_hist_init(1, INT64_C(3600000000000), 3, &a) == PB_OK);
    CHECK(pb_hist_init(1, INT64_C(3600000000000), 3, &b) == PB_OK);
    CHECK(pb_hist_init(1000, INT64_C(3600000000000), 2, &c) == PB_OK);
    CHECK(pb_hist_init(1, 1000, 3, &small) == PB_OK);
    enum { N = 20000 };
    static int64_t vals[N];
    for (int i = 0; i < N; i++) vals[i] = (int64_t)(rnd() % 100000000u);
    vals[7] = -3;
    vals[99] = INT64_MAX;
    CHECK(pb_hist_record_many(a, vals, N) == 2);
    CHECK(pb_hist_record_many(a, NULL, 0) == 0);
    for (int i = 0; i < N; i++) pb_hist_record(b, vals[i]);
    CHECK(pb_hist_total_count(a) == N - 2 && pb_hist_total_count(b) == N - 2);
    CHECK(memcmp(a->counts, b->counts, (size_t)a->counts_len * 8) == 0);
    CHECK(pb_hist_min(a) == pb_hist_min(b) && pb_hist_max(a) == pb_hist_max(b));
    for (double p = 0; p <= 100.0; p += 0.5) {
        CHECK(pb_hist_value_at_percentile(a, p) == pb_hist_value_at_percentile(b, p));
    }
    CHECK(pb_hist_add(a, b) == PB_OK);
    CHECK(pb_hist_total_count(a) == 2 * (N - 2));
    CHECK(pb_hist_value_at_percentile(a, 50) == pb_hist_value_at_percentile(b, 50));
    CHECK(pb_hist_add(c, b) == PB_OK); /* different layout: re-recorded by value */
    CHECK(pb_hist_total_count(c) == N - 2);
    CHECK(iter_sum(c) == N - 2);
    CHECK(pb_hist_add(small, b) == PB_ERANGE);
    CHECK(pb_hist_total_count(small) == 0);
    pb_hist *copy;
    CHECK(pb_hist_copy(a, &copy) == PB_OK);
    CHECK(pb_hist_total_count(copy) == pb_hist_total_count(a));
    CHECK(memcmp(copy->counts, a->counts, (size_t)a->counts_len * 8) == 0);
    pb_hist_close(copy);
    pb_hist_close(a);
    pb_hist_close(b);
    pb_hist_close(c);
    pb_hist_close(small);
}

static int same_counts(const pb_hist *x, const pb_hist *y) {
    if (x->counts_len != y->counts_len || x->total_count != y->total_count) return 0;
    return memcmp(x->counts, y->counts, (size_t)x->counts_len * 8) == 0;
}

static void test_codec(void) {
    pb_hist *h, *d = NULL;
    const char *why = NULL;
    CHECK(pb_hist_init(1, INT64_C(3600000000000), 3, &h) == PB_OK);
    size_t cap = pb_hist_encode_bound(h), n = 0;
    CHECK(cap == PB_HIST_V2_HEADER_BYTES);
    uint8_t empty[PB_HIST_V2_HEADER_BYTES];
    CHECK(pb_hist_encode(h, empty, sizeof empty, &n) == PB_OK && n == 40);
    CHECK(pb_hist_decode(empty, n, &d, &why) == PB_OK);
    CHECK(d && pb_hist_total_count(d) == 0);
    pb_hist_close(d);

    for (int i = 0; i < 5000; i++) pb_hist_record(h, (int64_t)(rnd() % 5000000u));
    pb_hist_record_n(h, 123456789, INT64_C(1) << 60); /* a 9-byte varint */
    pb_hist_record(h, 0);
    cap = pb_hist_encode_bound(h);
    uint8_t *buf = malloc(cap);
    CHECK(pb_hist_encode(h, buf, cap - 1, &n) == PB_EINVAL);
    CHECK(pb_hist_encode(h, buf, cap, &n) == PB_OK);
    CHECK(n <= cap && n > 40);
    /* Header fields, big-endian. */
    CHECK(buf[0] == 0x1c && buf[1] == 0x84 && buf[2] == 0x93 && buf[3] == 0x13);
    CHECK(buf[15] == 3);
    d = NULL;
    CHECK(pb_hist_decode(buf, n, &d, &why) == PB_OK);
    CHECK(d && same_counts(h, d));
    CHECK(d && pb_hist_min(d) == pb_hist_min(h) && pb_hist_max(d) == pb_hist_max(h));
    CHECK(d && pb_hist_value_at_percentile(d, 99.9) == pb_hist_value_at_percentile(h, 99.9));
    pb_hist_close(d);

    /* Every truncation fails cleanly (the header's payload length no longer matches). */
    for (size_t len = 0; len < n; len++) {
        uint8_t *t = malloc(len ? len : 1);
        memcpy(t, buf, len);
        d = NULL;
        CHECK(pb_hist_decode(t, len, &d, &why) == PB_EFRAME);
        CHECK(d == NULL);
        /* Same truncation with the length field fixed up reaches the varint parser:
         * it must either decode a consistent histogram or fail with PB_EFRAME. */
        if (len >= 40) {
            uint32_t pl = (uint32_t)(len - 40);
            t[4] = (uint8_t)(pl >> 24); t[5] = (uint8_t)(pl >> 16);
            t[6] = (uint8_t)(pl >> 8); t[7] = (uint8_t)pl;
            int rc = pb_hist_decode(t, len, &d, &why);
            CHECK(rc == PB_OK || rc == PB_EFRAME);
            if (rc == PB_OK) {
                CHECK(iter_sum(d) == pb_hist_total_count(d));
                pb_hist_close(d);
            }
        }
        free(t);
    }
    /* Random byte flips anywhere (length kept): never a crash, OK means consistent. */
    uint8_t *f = malloc(n);
    int oks = 0, errs = 0;
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(f, buf, n);
        int flips = 1 + (int)(rnd() % 4);
        for (int k = 0; k < flips; k++) f[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
        d = NULL;
        why = NULL;
        int rc = pb_hist_decode(f, n, &d, &why);
        CHECK(rc == PB_OK || rc == PB_EFRAME);
        if (rc == PB_OK) {
            oks++;
            CHECK(iter_sum(d) == pb_hist_total_count(d));
            CHECK(pb_hist_value_at_percentile(d, 100.0) == pb_hist_max(d));
            pb_hist_close(d);
        } else {
            errs++;
            CHECK(why != NULL && d == NULL);
        }
    }
    CHECK(oks > 0 && errs > 0);
    free(f);

    /* Hand-made malformed payloads. */
    uint8_t m[64];
    memcpy(m, buf, 40);
    m[4] = m[5] = m[6] = 0;
    /* (a) zero run of INT64_MIN: zigzag 0xff..ff as 9 bytes. */
    m[7] = 9;
    memset(m + 40, 0xff, 9);
    CHECK(pb_hist_decode(m, 49, &d, &why) == PB_EFRAME);
    /* (b) zero run past the end: -(2^40). */
    m[7] = 6;
    memcpy(m + 40, "\xff\xff\xff\xff\xff\x3f", 6);
    CHECK(pb_hist_decode(m, 46, &d, &why) == PB_EFRAME);
    /* (c) unterminated varint. */
    m[7] = 2;
    m[40] = 0x80;
    m[41] = 0x80;
    CHECK(pb_hist_decode(m, 42, &d, &why) == PB_EFRAME);
    /* (d) counts overflowing int64: two counts of 2^62 (zigzag 2^63 = 9 bytes) + one more. */
    {
        uint8_t big[40 + 27];
        memcpy(big, buf, 40);
        big[4] = big[5] = big[6] = 0;
        big[7] = 27;
        for (int k = 0; k < 3; k++) {
            memcpy(big + 40 + 9 * k, "\x80\x80\x80\x80\x80\x80\x80\x80\x80", 9);
        }
        CHECK(pb_hist_decode(big, sizeof big, &d, &why) == PB_EFRAME);
    }
    /* (e) bad cookie, bad layout, non-zero normalizing offset. */
    memcpy(m, buf, 40);
    m[4] = m[5] = m[6] = m[7] = 0;
    m[0] ^= 1;
    CHECK(pb_hist_decode(m, 40, &d, &why) == PB_EFRAME);
    m[0] ^= 1;
    m[15] = 7;
    CHECK(pb_hist_decode(m, 40, &d, &why) == PB_EFRAME);
    m[15] = 3;
    m[11] = 1;
    CHECK(pb_hist_decode(m, 40, &d, &why) == PB_EFRAME);
    m[11] = 0;
    CHECK(pb_hist_decode(m, 40, &d, &why) == PB_OK);
    pb_hist_close(d);
    free(buf);
    pb_hist_close(h);
}

int main(void) {
    test_init_args();
    test_record_and_percentiles();
    test_record_many_and_add();
    test_codec();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("test_hist: all checks passed");
    return 0;
}
