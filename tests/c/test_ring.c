/* test_ring.c - C unit tests of pb_ring and pb_frame (run under ASan+UBSan in CI). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb_frame.h"
#include "pb_ring.h"

static int failures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static pb_ring_config default_cfg(void) {
    pb_ring_config c;
    memset(&c, 0, sizeof c);
    c.capacity_bytes = 4096;
    c.max_topics = 8;
    c.max_batch_records = 16;
    c.max_batch_bytes = 1024;
    c.max_message_bytes = 512;
    c.idle_ns = 5000;
    c.max_delay_ns = 100000;
    c.publisher_id = 0x1122334455667788ull;
    return c;
}

/* Drain the whole ring into one malloc'd buffer per frame, checking each frame decodes. */
typedef struct {
    uint32_t topic;
    uint8_t *buf;
    size_t len;
} frame_t;

static size_t drain_all(pb_ring *r, frame_t *frames, size_t max_frames) {
    size_t n = 0;
    uint32_t tid;
    size_t len;
    while (pb_ring_next_frame(r, &tid, &len)) {
        CHECK(n < max_frames);
        if (n >= max_frames) break;
        uint8_t *buf = malloc(len);
        CHECK(pb_ring_write_frame(r, buf, len - 1) == PB_EINVAL); /* too small: refused */
        int64_t w = pb_ring_write_frame(r, buf, len);
        CHECK(w == (int64_t)len);
        frames[n].topic = tid;
        frames[n].buf = buf;
        frames[n].len = len;
        n++;
    }
    return n;
}

static void test_config(void) {
    pb_ring *r = NULL;
    pb_ring_config c = default_cfg();
    c.capacity_bytes = 8;
    CHECK(pb_ring_init(&c, &r) == PB_EINVAL && r == NULL);
    c = default_cfg();
    c.max_message_bytes = 4096; /* record would not fit in capacity */
    CHECK(pb_ring_init(&c, &r) == PB_EINVAL);
    c = default_cfg();
    c.max_topics = 0;
    CHECK(pb_ring_init(&c, &r) == PB_EINVAL);
    c = default_cfg();
    CHECK(pb_ring_init(&c, &r) == PB_OK && r != NULL);
    uint32_t id;
    for (uint32_t i = 0; i < 8; i++) {
        CHECK(pb_ring_topic_add(r, &id) == PB_OK && id == i);
        CHECK(pb_ring_next_seq(r, id) == 1);
    }
    CHECK(pb_ring_topic_add(r, &id) == PB_EFULL);
    CHECK(pb_ring_append(r, 8, "x", 1, NULL, 0, 0) == PB_EINVAL); /* unknown topic */
    CHECK(pb_ring_append(r, 0, "x", 1, NULL, 0, 4) == PB_EINVAL); /* bad flags */
    static uint8_t big[600];
    CHECK(pb_ring_append(r, 0, big, 500, big, 13, 0) == PB_EINVAL); /* > max_message */
    CHECK(pb_ring_pending_records(r) == 0 && pb_ring_next_seq(r, 0) == 1);
    pb_ring_close(r);
    pb_ring_close(NULL);
}

static void test_capacity(void) {
    pb_ring *r;
    pb_ring_config c = default_cfg();
    c.max_batch_records = 1000000;
    c.max_batch_bytes = 1 << 20;
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    uint32_t tid;
    pb_ring_topic_add(r, &tid);
    uint8_t payload[200];
    size_t expect_used = 0;
    int fulls = 0;
    for (int i = 0; i < 2000; i++) {
        uint32_t plen = (uint32_t)(rnd() % 200);
        uint16_t hlen = (uint16_t)(rnd() % 3 ? 0 : 7);
        for (uint32_t k = 0; k < plen; k++) payload[k] = (uint8_t)(i + k);
        size_t need = PB_RING_RECORD_SIZE(hlen, plen);
        int rc = pb_ring_append_at(r, tid, payload, plen, "hdr1234", hlen, 0, 1000 + i);
        if (expect_used + need > pb_ring_capacity(r)) {
            CHECK(rc == PB_EFULL);
            fulls++;
            /* drain when full, then the ring is empty again */
            frame_t frames[400];
            size_t nf = drain_all(r, frames, 400);
            CHECK(nf >= 1);
            for (size_t f = 0; f < nf; f++) free(frames[f].buf);
            CHECK(pb_ring_pending_records(r) == 0 && pb_ring_pending_bytes(r) == 0);
            expect_used = 0;
        } else {
            CHECK(rc >= 0);
            expect_used += need;
        }
        CHECK(pb_ring_pending_bytes(r) == expect_used);
        CHECK(pb_ring_pending_bytes(r) <= pb_ring_capacity(r));
    }
    CHECK(fulls > 0);
    CHECK(pb_ring_full_count(r) == (uint64_t)fulls);
    pb_ring_close(r);
}

static void test_decisions(void) {
    pb_ring *r;
    pb_ring_config c = default_cfg();
    c.max_batch_records = 4;
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    uint32_t a;
    pb_ring_topic_add(r, &a);
    int64_t t0 = 1000000000;
    /* idle (last drain never happened) -> READY */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, t0) == PB_RING_READY);
    frame_t fr[8];
    /* a clock reading taken before the drain ends is certainly within idle_ns of it (a reading
       taken after could be late on a loaded machine): not idle -> PENDING_FIRST, PENDING */
    int64_t now = pb_now_ns();
    size_t nf = drain_all(r, fr, 8);
    CHECK(nf == 1);
    free(fr[0].buf);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now) == PB_RING_PENDING_FIRST);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 1) == PB_RING_PENDING);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 2) == PB_RING_PENDING);
    /* 4th record of the topic reaches max_batch_records */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 3) == PB_RING_READY);
    now = pb_now_ns();
    nf = drain_all(r, fr, 8);
    CHECK(nf == 1);
    free(fr[0].buf);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now) == PB_RING_PENDING_FIRST);
    /* oldest pending older than max_delay -> READY */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + c.max_delay_ns) == PB_RING_READY);
    CHECK(pb_ring_oldest_ns(r) == now);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    CHECK(pb_ring_oldest_ns(r) == 0);
    pb_ring_close(r);

    /* mark_flushed moves the idle reference: a drain, then a send finishing at t = now + 1 s */
    c = default_cfg();
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    pb_ring_topic_add(r, &a);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, 0) == PB_RING_READY);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    now = pb_now_ns() + 1000000000;
    pb_ring_mark_flushed(r, now);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + c.idle_ns - 1) ==
          PB_RING_PENDING_FIRST);
    pb_ring_mark_flushed(r, now + 10 * c.idle_ns); /* records pending: no effect */
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    pb_ring_close(r);

    /* mark_quiet: after a drain at t, idle counts from the last append (t - 3 idle) */
    c = default_cfg();
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    pb_ring_topic_add(r, &a);
    pb_ring_mark_quiet(r); /* nothing appended yet: no effect, still never drained */
    now = pb_now_ns() + 1000000000;
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now) == PB_RING_READY);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    pb_ring_mark_flushed(r, now);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 1) == PB_RING_PENDING_FIRST);
    pb_ring_mark_quiet(r); /* records pending: no effect */
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    pb_ring_mark_flushed(r, now + 3 * c.idle_ns); /* a drain "at" now + 3 idle */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 3 * c.idle_ns + 1) ==
          PB_RING_PENDING_FIRST);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    pb_ring_mark_flushed(r, now + 4 * c.idle_ns);
    pb_ring_mark_quiet(r); /* idle now counts from the last append, now + 3 idle + 1 */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 4 * c.idle_ns) ==
          PB_RING_PENDING_FIRST);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    pb_ring_mark_flushed(r, now + 4 * c.idle_ns + 1);
    pb_ring_mark_quiet(r); /* last append at now + 4 idle: READY from now + 5 idle */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, now + 5 * c.idle_ns) == PB_RING_READY);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    pb_ring_close(r);

    /* never drained: idle whatever the clock reading; a size bound applies to the first record */
    c = default_cfg();
    c.max_batch_records = 1;
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    pb_ring_topic_add(r, &a);
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, 0) == PB_RING_READY);
    nf = drain_all(r, fr, 8);
    free(fr[0].buf);
    /* a clock reading before the drain: not idle, but max_batch_records = 1 -> READY */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, INT64_MIN) == PB_RING_READY);
    /* extreme clock readings never overflow (UBSan would abort) */
    CHECK(pb_ring_append_at(r, a, "m", 1, NULL, 0, 0, INT64_MAX) == PB_RING_READY);
    nf = drain_all(r, fr, 8);
    CHECK(nf == 2);
    for (size_t f = 0; f < nf; f++) free(fr[f].buf);
    pb_ring_close(r);
}

static void test_drain_order(void) {
    pb_ring *r;
    pb_ring_config c = default_cfg();
    c.capacity_bytes = 1 << 16;
    c.max_batch_records = 5;
    c.max_batch_bytes = 400;
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    uint32_t ids[3];
    for (int i = 0; i < 3; i++) pb_ring_topic_add(r, &ids[i]);
    /* interleave 3 topics; payload encodes (topic, index) */
    uint32_t counts[3] = {0, 0, 0};
    for (int i = 0; i < 60; i++) {
        uint32_t t = (uint32_t)(rnd() % 3);
        uint8_t p[40];
        memset(p, 0, sizeof p);
        p[0] = (uint8_t)t;
        p[1] = (uint8_t)counts[t];
        uint32_t plen = 2 + (uint32_t)(rnd() % 38);
        CHECK(pb_ring_append_at(r, t, p, plen, "h", (uint16_t)(i % 2), PB_FRAME_REC_MSGPACK,
                                1000 + i) >= 0);
        counts[t]++;
    }
    frame_t fr[100];
    size_t nf = drain_all(r, fr, 100);
    uint32_t seen[3] = {0, 0, 0};
    for (size_t f = 0; f < nf; f++) {
        pb_frame_info info;
        pb_frame_error err;
        CHECK(pb_frame_validate(fr[f].buf, fr[f].len, &info, &err) == PB_OK);
        CHECK(fr[f].len <= 400 || info.count == 1);
        CHECK(info.count <= 5);
        CHECK(info.publisher_id == c.publisher_id);
        uint32_t t = fr[f].topic;
        CHECK(info.first_seq == seen[t] + 1);
        size_t off = PB_FRAME_HEADER_SIZE;
        for (uint32_t i = 0; i < info.count; i++) {
            pb_frame_record rec;
            off = pb_frame_next_unchecked(fr[f].buf, off, info.base_timestamp_ns, &rec);
            CHECK(rec.payload[0] == t);
            CHECK(rec.payload[1] == (uint8_t)seen[t]);
            CHECK(rec.flags & PB_FRAME_REC_MSGPACK);
            CHECK(((rec.flags & PB_FRAME_REC_HAS_HEADER) != 0) == (rec.header_len == 1));
            CHECK(rec.timestamp_ns >= 1000 && rec.timestamp_ns < 1060);
            seen[t]++;
        }
        CHECK(off == fr[f].len);
        free(fr[f].buf);
    }
    for (int t = 0; t < 3; t++) {
        CHECK(seen[t] == counts[t]);
        CHECK(pb_ring_next_seq(r, (uint32_t)t) == counts[t] + 1);
    }
    CHECK(pb_ring_pending_records(r) == 0 && pb_ring_pending_bytes(r) == 0);
    uint32_t tid;
    size_t len;
    CHECK(pb_ring_next_frame(r, &tid, &len) == 0);
    CHECK(pb_ring_write_frame(r, fr[0].buf, 0) == PB_EINVAL);
    /* an append between plan and write cancels the plan */
    CHECK(pb_ring_append_at(r, 0, "ab", 2, NULL, 0, 0, 5) >= 0);
    CHECK(pb_ring_next_frame(r, &tid, &len) == 1 && tid == 0);
    CHECK(pb_ring_append_at(r, 0, "cd", 2, NULL, 0, 0, 6) >= 0);
    {
        uint8_t tmp[256];
        CHECK(pb_ring_write_frame(r, tmp, sizeof tmp) == PB_EINVAL);
        CHECK(pb_ring_next_frame(r, &tid, &len) == 1 && len == 32 + 2 * 14);
        CHECK(pb_ring_write_frame(r, tmp, sizeof tmp) == (int64_t)len);
        pb_frame_info info;
        CHECK(pb_frame_validate(tmp, len, &info, NULL) == PB_OK && info.count == 2);
    }
    pb_ring_close(r);
}

static uint8_t *make_frame(size_t *len_out) {
    /* 4 records with mixed headers and payload sizes */
    static const char *payloads[] = {"alpha", "", "gamma-gamma", "d"};
    static const char *headers[] = {"", "\x81\xa1k\x01", "", "\x80"};
    size_t len = PB_FRAME_HEADER_SIZE;
    for (int i = 0; i < 4; i++)
        len += pb_frame_record_size((uint16_t)strlen(headers[i]), (uint32_t)strlen(payloads[i]));
    uint8_t *buf = malloc(len);
    uint8_t *w = pb_frame_write_header(buf, 4, 7, 100, 5000);
    for (int i = 0; i < 4; i++)
        w = pb_frame_write_record(w, payloads[i], (uint32_t)strlen(payloads[i]), headers[i],
                                  (uint16_t)strlen(headers[i]), (uint8_t)(i & 1), 5000 + i, 5000);
    CHECK((size_t)(w - buf) == len);
    *len_out = len;
    return buf;
}

static void test_decoder_robust(void) {
    size_t len;
    uint8_t *good = make_frame(&len);
    pb_frame_info info;
    pb_frame_error err;
    CHECK(pb_frame_validate(good, len, &info, &err) == PB_OK);
    CHECK(info.count == 4 && info.first_seq == 100 && info.publisher_id == 7);
    /* every truncation is rejected; copy into an exact-size heap buffer so ASan sees overreads */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *b = malloc(cut ? cut : 1);
        memcpy(b, good, cut);
        err.reason = NULL;
        CHECK(pb_frame_validate(b, cut, &info, &err) == PB_EFRAME);
        CHECK(err.reason != NULL && err.offset <= cut && err.message[0] != '\0');
        free(b);
    }
    /* unknown version */
    uint8_t *b = malloc(len);
    memcpy(b, good, len);
    b[2] = 2;
    CHECK(pb_frame_validate(b, len, &info, &err) == PB_EFRAME);
    CHECK(strcmp(err.reason, "unknown version") == 0 && err.offset == 2);
    free(b);
    /* random corruptions: validate must return OK or EFRAME, and an OK frame must walk to
       exactly its end with every record in bounds */
    int ok = 0, bad = 0;
    for (int iter = 0; iter < 20000; iter++) {
        b = malloc(len);
        memcpy(b, good, len);
        int flips = 1 + (int)(rnd() % 4);
        for (int k = 0; k < flips; k++) {
            size_t pos = rnd() % len;
            if (rnd() & 1)
                b[pos] = (uint8_t)rnd();
            else
                b[pos] ^= (uint8_t)(1u << (rnd() % 8));
        }
        size_t blen = (rnd() % 5 == 0) ? (size_t)(rnd() % (len + 1)) : len;
        int rc = pb_frame_validate(b, blen, &info, &err);
        if (rc == PB_OK) {
            ok++;
            size_t off = PB_FRAME_HEADER_SIZE;
            for (uint32_t i = 0; i < info.count; i++) {
                pb_frame_record rec;
                off = pb_frame_next_unchecked(b, off, info.base_timestamp_ns, &rec);
                CHECK(off <= blen);
                CHECK(rec.payload + rec.payload_len <= b + blen);
            }
            CHECK(off == blen);
        } else {
            CHECK(rc == PB_EFRAME);
            CHECK(err.offset <= blen);
            bad++;
        }
        free(b);
    }
    CHECK(ok > 0 && bad > 0);
    /* count larger than fits is rejected from the header alone */
    b = malloc(len);
    memcpy(b, good, len);
    b[4] = 0xff;
    b[5] = 0xff;
    CHECK(pb_frame_read_header(b, len, &info, &err) == PB_EFRAME);
    CHECK(strcmp(err.reason, "bad count") == 0);
    free(b);
    free(good);
}

static void test_timestamp_saturation(void) {
    uint8_t buf[64];
    uint8_t *w = pb_frame_write_header(buf, 2, 1, 1, 1000);
    w = pb_frame_write_record(w, "a", 1, NULL, 0, 0, 500, 1000);               /* before base */
    w = pb_frame_write_record(w, "b", 1, NULL, 0, 0, 1000 + 10000000000, 1000); /* +10 s */
    pb_frame_info info;
    CHECK(pb_frame_validate(buf, (size_t)(w - buf), &info, NULL) == PB_OK);
    pb_frame_record rec;
    size_t off = pb_frame_next_unchecked(buf, PB_FRAME_HEADER_SIZE, 1000, &rec);
    CHECK(rec.timestamp_ns == 1000);
    pb_frame_next_unchecked(buf, off, 1000, &rec);
    CHECK(rec.timestamp_ns == 1000 + (int64_t)PB_FRAME_MAX_DELTA);
}

/* pb_ring_append's clock (the TSC extrapolated between CLOCK_REALTIME anchors, see pb_ring.c)
 * stays within 20 us of CLOCK_REALTIME over many anchor periods and calibrations; a wrong
 * ns-per-tick ratio would be off by up to a whole anchor period (1 ms). */
static void test_clock(void) {
    pb_ring *r = NULL;
    pb_ring_config c = default_cfg();
    uint32_t a;
    frame_t fr[2];
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    pb_ring_topic_add(r, &a);
    int64_t start = pb_now_ns();
    long n = 0, off = 0;
    while (pb_now_ns() - start < 20000000) { /* 20 ms, bounded */
        int64_t before = pb_now_ns();
        pb_ring_append(r, a, "m", 1, NULL, 0, 0);
        int64_t after = pb_now_ns();
        int64_t ts = pb_ring_oldest_ns(r);
        if (ts < before - 20000 || ts > after + 20000) off++;
        n++;
        if (drain_all(r, fr, 2) == 1) free(fr[0].buf);
    }
    CHECK(n > 100);
    /* a preempted reading may fall outside its bracket: allow a few in a thousand */
    CHECK(off * 1000 <= n * 3);
    if (off * 1000 > n * 3) fprintf(stderr, "clock: %ld of %ld readings off\n", off, n);
    pb_ring_close(r);
}

/* pb_ring_positions_due: who is due when, the frames it leads to, and a failing emit. */
typedef struct {
    uint32_t topics[8];
    uint64_t seqs[8];
    int n, fail;
} emitted_t;

static int record_position(uint32_t topic_id, uint64_t next_seq, void *arg) {
    emitted_t *e = arg;
    if (e->fail) return -1;
    if (e->n < 8) {
        e->topics[e->n] = topic_id;
        e->seqs[e->n] = next_seq;
    }
    e->n++;
    return 0;
}

static void test_positions(void) {
    pb_ring_config c = default_cfg();
    pb_ring *r = NULL;
    CHECK(pb_ring_init(&c, &r) == PB_OK);
    uint32_t a, b;
    CHECK(pb_ring_topic_add(r, &a) == PB_OK && pb_ring_topic_add(r, &b) == PB_OK);
    emitted_t e = {0};
    CHECK(pb_ring_positions_due(r, 0, 100, 3, 0, 0, record_position, &e) == 0 && e.n == 0);
    CHECK(pb_ring_append_at(r, a, "x", 1, NULL, 0, 0, 1) >= 0);
    CHECK(pb_ring_pending_records(r) == 1);
    /* pending: not announced (its record is not sent yet) */
    CHECK(pb_ring_positions_due(r, 0, 100, 3, 0, 0, record_position, &e) == 0 && e.n == 0);
    frame_t frames[4];
    size_t nf = drain_all(r, frames, 4);
    for (size_t i = 0; i < nf; i++) free(frames[i].buf);
    CHECK(pb_ring_positions_due(r, 1000, 100, 3, 0, 0, record_position, &e) == 1100);
    CHECK(e.n == 1 && e.topics[0] == a && e.seqs[0] == 2); /* b never published */
    e.fail = 1; /* a failing emit stops the scan and leaves the topic due */
    CHECK(pb_ring_positions_due(r, 1100, 100, 3, 0, 0, record_position, &e) == -1);
    e.fail = 0;
    CHECK(pb_ring_positions_due(r, 1100, 100, 3, 0, 0, record_position, &e) == 1300 && e.n == 2);
    CHECK(pb_ring_positions_due(r, 1300, 100, 3, 0, 0, record_position, &e) == 0 && e.n == 3);
    CHECK(pb_ring_positions_due(r, 9000, 100, 3, 0, 0, record_position, &e) == 0 && e.n == 3);
    /* a limit: at most 2 per call, the rest a tenth of an interval later, round robin */
    uint32_t c3;
    CHECK(pb_ring_topic_add(r, &c3) == PB_OK);
    for (uint32_t id = 0; id < 3; id++) CHECK(pb_ring_append_at(r, id, "y", 1, NULL, 0, 0, 2) >= 0);
    nf = drain_all(r, frames, 4);
    for (size_t i = 0; i < nf; i++) free(frames[i].buf);
    emitted_t f = {0};
    CHECK(pb_ring_positions_due(r, 10000, 100, 1, 2, 0, record_position, &f) == 10010);
    CHECK(f.n == 2 && f.topics[0] == a && f.topics[1] == b);
    CHECK(pb_ring_positions_due(r, 10010, 100, 1, 2, 0, record_position, &f) == 0);
    CHECK(f.n == 3 && f.topics[2] == c3 && f.seqs[2] == 2);
    uint8_t pos[PB_FRAME_HEADER_SIZE];
    pb_frame_write_position(pos, 7, 42, 5);
    pb_frame_info info;
    pb_frame_error err;
    CHECK(pb_frame_validate(pos, sizeof pos, &info, &err) == PB_OK);
    CHECK(info.count == 0 && info.flags == PB_FRAME_FLAG_POSITION && info.first_seq == 42);
    pos[4] = 1; /* a count: refused */
    CHECK(pb_frame_validate(pos, sizeof pos, &info, &err) == PB_EFRAME);
    pb_ring_close(r);
}

int main(void) {
    test_config();
    test_capacity();
    test_decisions();
    test_drain_order();
    test_decoder_robust();
    test_timestamp_saturation();
    test_clock();
    test_positions();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_ring: all checks passed\n");
    return 0;
}
