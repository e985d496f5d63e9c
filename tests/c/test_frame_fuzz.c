/* test_frame_fuzz.c - a deterministic mutation fuzzer of the batch frame decoder (pb_frame).
 *
 * Seeds are valid frames written by the encoder (pb_frame_write_header / _record / _position:
 * 1-40 records, empty and 64-KiB-1 headers, empty and large payloads, timestamps at the int64
 * edges). Each iteration copies a corpus entry, stacks 1-4 mutations (bit flips, interesting
 * values written into the frame's length/count/flag fields, off-by-one length changes,
 * truncation, insertion, deletion, duplication, splicing with another entry), puts the result
 * in a heap block of exactly its size (so AddressSanitizer sees any read past the end) and
 * checks what the decoder promises (pb_frame.h):
 *   - pb_frame_validate and pb_frame_read_header agree (same status, same header fields, the
 *     same error for a bad header), with and without an error struct;
 *   - a rejection returns PB_EFRAME with a reason, a non-empty message, an offset within the
 *     frame and a record index in [-1, count);
 *   - an accepted frame walks with pb_frame_next_unchecked to exactly its end, every header and
 *     payload inside the buffer (all their bytes are read), and re-encodes byte for byte;
 *     each of its strict prefixes, and it with a byte appended, is rejected.
 * Mutants that are accepted, or rejected for a (reason, record) not seen before, join the
 * corpus, so mutations reach records deep inside frames.
 *
 * Budget: PYBUS_FUZZ_ITERATIONS (default 500000) iterations from a fixed seed, run by ctest
 * under ASan+UBSan. PYBUS_FUZZ_SECONDS=N instead runs for N seconds from a fresh seed, printed
 * first; PYBUS_FUZZ_SEED=S replays a seed. A sanitizer report is followed by the seed, the
 * iteration and the input in hex (a death callback).
 *
 * Built with -DPB_LIBFUZZER (clang -fsanitize=fuzzer,address,undefined) the same checks run
 * as a libFuzzer target (LLVMFuzzerTestOneInput) instead of this driver. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pb_frame.h"

#define MAX_FRAME (1u << 17) /* mutants never grow past this */
#define MAX_CORPUS 512
#define N_SEEDS 64

static uint64_t rng_state;
static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

/* -- what a failure prints ------------------------------------------------------------- */
static uint64_t run_seed;
static uint64_t iteration;
static const uint8_t *cur_buf;
static size_t cur_len;

static void dump_current(void) {
    fprintf(stderr, "test_frame_fuzz: seed %" PRIu64 " iteration %" PRIu64 ", input of %zu bytes:\n",
            run_seed, iteration, cur_len);
    if (cur_buf == NULL) return;
    size_t n = cur_len < 4096 ? cur_len : 4096;
    for (size_t i = 0; i < n; i++) fprintf(stderr, "%02x%s", cur_buf[i], (i % 32 == 31) ? "\n" : "");
    fprintf(stderr, "%s\n", n < cur_len ? " ..." : "");
}

#define FUZZ_CHECK(cond)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);     \
            dump_current();                                                              \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* A sanitizer report ends the process; this runs first and says how to get here again. */
#if defined(__GNUC__) || defined(__clang__)
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));
#else
static void (*__sanitizer_set_death_callback)(void (*)(void)) = NULL;
#endif

/* -- the checks ------------------------------------------------------------------------- */
static uint64_t rd_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t sink; /* keeps the byte reads of accepted records */

/* Validate buf (exactly len bytes on the heap) and check every promise; returns the status,
 * and through *reason / *record what a rejection said. */
static int check_frame(const uint8_t *buf, size_t len, const char **reason, int64_t *record) {
    pb_frame_info info, hinfo;
    pb_frame_error err, herr;
    memset(&info, 0xA5, sizeof info);
    memset(&err, 0xA5, sizeof err);
    memset(&hinfo, 0x5A, sizeof hinfo);
    memset(&herr, 0x5A, sizeof herr);
    int rc = pb_frame_validate(buf, len, &info, &err);
    int hrc = pb_frame_read_header(buf, len, &hinfo, &herr);
    FUZZ_CHECK(rc == PB_OK || rc == PB_EFRAME);
    FUZZ_CHECK(hrc == PB_OK || hrc == PB_EFRAME);
    pb_frame_info info2;
    FUZZ_CHECK(pb_frame_validate(buf, len, &info2, NULL) == rc);
    FUZZ_CHECK(pb_frame_read_header(buf, len, &info2, NULL) == hrc);
    if (hrc != PB_OK) {
        /* a bad header: validate says the same */
        FUZZ_CHECK(rc == PB_EFRAME);
        FUZZ_CHECK(err.offset == herr.offset && err.record == -1 && herr.record == -1);
        FUZZ_CHECK(err.reason == herr.reason && strcmp(err.message, herr.message) == 0);
    } else {
        FUZZ_CHECK(hinfo.version == PB_FRAME_VERSION);
        FUZZ_CHECK((hinfo.flags & ~PB_FRAME_FLAG_POSITION) == 0);
        FUZZ_CHECK((size_t)PB_FRAME_HEADER_SIZE +
                       (size_t)hinfo.count * PB_FRAME_RECORD_HEADER_SIZE <= len);
        FUZZ_CHECK(hinfo.publisher_id == info2.publisher_id);
    }
    if (rc != PB_OK) {
        FUZZ_CHECK(err.reason != NULL && err.reason[0] != '\0');
        FUZZ_CHECK(memchr(err.message, '\0', sizeof err.message) != NULL);
        FUZZ_CHECK(err.message[0] != '\0');
        FUZZ_CHECK(err.offset <= len);
        FUZZ_CHECK(err.record >= -1);
        if (hrc == PB_OK) FUZZ_CHECK(err.record < (int64_t)hinfo.count);
        *reason = err.reason;
        *record = err.record;
        return rc;
    }
    FUZZ_CHECK(hrc == PB_OK);
    FUZZ_CHECK(info.publisher_id == hinfo.publisher_id && info.first_seq == hinfo.first_seq &&
               info.base_timestamp_ns == hinfo.base_timestamp_ns && info.count == hinfo.count &&
               info.version == hinfo.version && info.flags == hinfo.flags);
    FUZZ_CHECK((info.flags & PB_FRAME_FLAG_POSITION) ? (info.count == 0 && len == 32)
                                                     : info.count >= 1);

    /* walk, read every byte, and re-encode */
    uint8_t *out = malloc(len);
    FUZZ_CHECK(out != NULL);
    uint8_t *w;
    if (info.flags & PB_FRAME_FLAG_POSITION)
        w = pb_frame_write_position(out, info.publisher_id, info.first_seq,
                                    info.base_timestamp_ns);
    else
        w = pb_frame_write_header(out, info.count, info.publisher_id, info.first_seq,
                                  info.base_timestamp_ns);
    size_t off = PB_FRAME_HEADER_SIZE;
    for (uint32_t i = 0; i < info.count; i++) {
        FUZZ_CHECK(off + PB_FRAME_RECORD_HEADER_SIZE <= len);
        pb_frame_record rec;
        size_t next = pb_frame_next_unchecked(buf, off, info.base_timestamp_ns, &rec);
        FUZZ_CHECK(next > off && next <= len);
        FUZZ_CHECK(next - off == pb_frame_record_size(rec.header_len, rec.payload_len));
        FUZZ_CHECK(rec.header == buf + off + PB_FRAME_RECORD_HEADER_SIZE);
        FUZZ_CHECK(rec.payload == buf + rec.payload_offset);
        FUZZ_CHECK(rec.payload_offset + rec.payload_len == next);
        FUZZ_CHECK((rec.flags & ~PB_FRAME_REC_KNOWN) == 0);
        FUZZ_CHECK(((rec.flags & PB_FRAME_REC_HAS_HEADER) != 0) == (rec.header_len != 0));
        for (uint16_t k = 0; k < rec.header_len; k++) sink += rec.header[k];
        for (uint32_t k = 0; k < rec.payload_len; k++) sink += rec.payload[k];
        uint64_t delta = rd_u32le(buf + off + 8);
        uint8_t *rs = w;
        w = pb_frame_write_record(w, rec.payload, rec.payload_len, rec.header, rec.header_len,
                                  rec.flags, rec.timestamp_ns, info.base_timestamp_ns);
        FUZZ_CHECK((size_t)(w - out) == next);
        /* the delta round-trips unless base + delta overflowed int64 (then it wrapped
         * below base and the encoder clamps it to 0) */
        if (info.base_timestamp_ns <= INT64_MAX - (int64_t)delta)
            FUZZ_CHECK(memcmp(rs + 8, buf + off + 8, 4) == 0);
        else
            memcpy(rs + 8, buf + off + 8, 4);
        off = next;
    }
    FUZZ_CHECK(off == len && (size_t)(w - out) == len);
    FUZZ_CHECK(memcmp(out, buf, len) == 0);

    /* a strict prefix and the frame with one more byte are rejected (exact heap blocks) */
    size_t plen = below(len);
    uint8_t *pre = malloc(plen ? plen : 1);
    FUZZ_CHECK(pre != NULL);
    memcpy(pre, buf, plen);
    FUZZ_CHECK(pb_frame_validate(pre, plen, &info2, NULL) == PB_EFRAME);
    free(pre);
    uint8_t *more = realloc(out, len + 1);
    FUZZ_CHECK(more != NULL);
    memcpy(more, buf, len);
    more[len] = (uint8_t)rnd();
    FUZZ_CHECK(pb_frame_validate(more, len + 1, &info2, &err) == PB_EFRAME);
    free(more);
    *reason = NULL;
    *record = -1;
    return PB_OK;
}

/* -- corpus ----------------------------------------------------------------------------- */
typedef struct entry {
    uint8_t *data;
    size_t len;
} entry;

static entry corpus[MAX_CORPUS];
static size_t n_corpus;
static uint8_t scratch_payload[MAX_FRAME];

static void corpus_add(const uint8_t *data, size_t len) {
    size_t i = n_corpus < MAX_CORPUS ? n_corpus++ : N_SEEDS + below(MAX_CORPUS - N_SEEDS);
    free(corpus[i].data);
    corpus[i].data = malloc(len ? len : 1);
    FUZZ_CHECK(corpus[i].data != NULL);
    memcpy(corpus[i].data, data, len);
    corpus[i].len = len;
}

static int64_t pick_ts(void) {
    static const int64_t edges[] = {0, 1, -1, INT64_MAX, INT64_MIN, INT64_MAX - 5,
                                    INT64_MIN + 5, 1700000000000000000ll};
    return rnd() % 3 ? (int64_t)(1700000000000000000ll + (int64_t)below(1000000000))
                     : edges[below(sizeof edges / sizeof edges[0])];
}

/* A valid frame from the encoder into dst (capacity MAX_FRAME); returns its length. */
static size_t make_seed(uint8_t *dst, int kind) {
    /* (one draw per statement: the sequence must not depend on argument evaluation order) */
    uint64_t publisher_id = rnd();
    uint64_t seq = rnd();
    int64_t base = pick_ts();
    if (kind == 0 || below(16) == 0)
        return (size_t)(pb_frame_write_position(dst, publisher_id, seq, base) - dst);
    uint32_t count = kind == 1 ? 1 : (uint32_t)(1 + below(kind < 8 ? 4 : 40));
    uint8_t *p = pb_frame_write_header(dst, count, publisher_id, seq, base);
    for (uint32_t i = 0; i < count; i++) {
        size_t room = MAX_FRAME - (size_t)(p - dst) - PB_FRAME_RECORD_HEADER_SIZE;
        room /= (count - i);
        uint16_t hlen = 0;
        uint32_t plen = 0;
        switch (below(6)) {
            case 0: break; /* empty record */
            case 1: plen = (uint32_t)below(16); break;
            case 2: hlen = (uint16_t)(1 + below(32)); plen = (uint32_t)below(200); break;
            case 3: plen = (uint32_t)below(2000); break;
            case 4: hlen = (uint16_t)below(300); plen = (uint32_t)below(64); break;
            default:
                plen = (uint32_t)below(kind == 3 ? 40000 : 100);
        }
        if (kind == 2 && i == 0) hlen = 0xFFFF; /* the largest header */
        if ((size_t)hlen + plen > room) hlen = 0, plen = 0;
        for (uint32_t k = 0; k < (uint32_t)hlen + plen; k++) scratch_payload[k] = (uint8_t)rnd();
        /* mostly just after base; sometimes anywhere (before base: delta 0; far: clamped) */
        int64_t ts = below(4) ? (base > INT64_MAX - 5000 ? base : base + (int64_t)below(5000))
                              : pick_ts();
        p = pb_frame_write_record(p, scratch_payload + hlen, plen, scratch_payload, hlen,
                                  (uint8_t)(below(2) ? PB_FRAME_REC_MSGPACK : 0), ts, base);
    }
    return (size_t)(p - dst);
}

/* Offsets of the record headers of a (possibly broken) frame, as far as they parse. */
static size_t record_offsets(const uint8_t *b, size_t len, size_t *offs, size_t cap) {
    size_t n = 0, off = PB_FRAME_HEADER_SIZE;
    while (n < cap && off + PB_FRAME_RECORD_HEADER_SIZE <= len) {
        offs[n++] = off;
        size_t hlen = (size_t)b[off + 4] | (size_t)b[off + 5] << 8;
        size_t plen = (size_t)rd_u32le(b + off);
        off += PB_FRAME_RECORD_HEADER_SIZE + hlen + plen;
        if (off > len) break;
    }
    return n;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t interesting32(size_t len, size_t at) {
    size_t rest = len > at ? len - at : 0;
    switch (below(10)) {
        case 0: return 0;
        case 1: return 1;
        case 2: return 0xFFFFFFFFu;
        case 3: return 0x80000000u;
        case 4: return 0x7FFFFFFFu;
        case 5: return (uint32_t)rest;
        case 6: return (uint32_t)(rest + 1);
        case 7: return (uint32_t)(rest ? rest - 1 : 0);
        case 8: return 0xFFFFu;
        default: return (uint32_t)below(64);
    }
}

/* Apply one mutation to w[0..*len) (capacity MAX_FRAME). */
static void mutate(uint8_t *w, size_t *len) {
    size_t n = *len;
    size_t offs[64];
    switch (below(13)) {
        case 0: /* flip a bit */
            if (n) {
                size_t at = below(n);
                w[at] ^= (uint8_t)(1u << below(8));
            }
            break;
        case 1: /* a random byte */
            if (n) w[below(n)] = (uint8_t)rnd();
            break;
        case 2: { /* an interesting byte */
            static const uint8_t v[] = {0, 1, 2, 3, 0x7F, 0x80, 0xFE, 0xFF, 'P', 'B'};
            if (n) {
                size_t at = below(n);
                w[at] = v[below(sizeof v)];
            }
            break;
        }
        case 3:
        case 4: { /* an interesting value in a record field */
            size_t k = record_offsets(w, n, offs, 64);
            if (k == 0) break;
            size_t o = offs[below(k)];
            switch (below(5)) {
                case 0: put_u32(w + o, interesting32(n, o + PB_FRAME_RECORD_HEADER_SIZE)); break;
                case 1: {
                    uint32_t v = interesting32(n, o + PB_FRAME_RECORD_HEADER_SIZE);
                    w[o + 4] = (uint8_t)v;
                    w[o + 5] = (uint8_t)(v >> 8);
                    break;
                }
                case 2: w[o + 6] = (uint8_t)(below(2) ? below(4) : rnd()); break;
                case 3: w[o + 7] = (uint8_t)(below(2) ? 0 : 1u << below(8)); break;
                default: put_u32(w + o + 8, below(2) ? 0xFFFFFFFFu : (uint32_t)rnd()); break;
            }
            break;
        }
        case 5: /* a frame header field */
            if (n < PB_FRAME_HEADER_SIZE) break;
            switch (below(4)) {
                case 0: {
                    uint32_t v = interesting32(n, PB_FRAME_HEADER_SIZE);
                    put_u32(w + 4, below(2) ? v : v / 12);
                    break;
                }
                case 1: w[3] = (uint8_t)(below(2) ? below(2) : rnd()); break;
                case 2: w[2] = (uint8_t)below(3); break;
                default: put_u32(w + 4, (uint32_t)(rd_u32le(w + 4) + (below(2) ? 1 : -1))); break;
            }
            break;
        case 6: { /* a length off by a little */
            size_t k = record_offsets(w, n, offs, 64);
            if (k == 0) break;
            size_t o = offs[below(k)];
            int d = (int)below(5) - 2;
            if (below(2))
                put_u32(w + o, (uint32_t)(rd_u32le(w + o) + (uint32_t)d));
            else {
                unsigned h = (unsigned)(w[o + 4] | w[o + 5] << 8) + (unsigned)d;
                w[o + 4] = (uint8_t)h;
                w[o + 5] = (uint8_t)(h >> 8);
            }
            break;
        }
        case 7: /* truncate */
            if (n) *len = below(4) ? n - 1 - below(n < 16 ? n : 16) : below(n);
            break;
        case 8: { /* append */
            size_t k = 1 + below(16);
            if (n + k > MAX_FRAME) break;
            for (size_t i = 0; i < k; i++) w[n + i] = (uint8_t)rnd();
            *len = n + k;
            break;
        }
        case 9: { /* insert */
            size_t k = 1 + below(below(2) ? 4 : 64), at = below(n + 1);
            if (n + k > MAX_FRAME) break;
            memmove(w + at + k, w + at, n - at);
            for (size_t i = 0; i < k; i++) w[at + i] = (uint8_t)(below(2) ? 0 : rnd());
            *len = n + k;
            break;
        }
        case 10: { /* delete */
            if (n == 0) break;
            size_t at = below(n), k = 1 + below(n - at < 64 ? n - at : 64);
            memmove(w + at, w + at + k, n - at - k);
            *len = n - k;
            break;
        }
        case 11: { /* duplicate a range (e.g. a record) */
            if (n == 0) break;
            size_t k = record_offsets(w, n, offs, 64), from, cnt;
            if (k >= 2 && below(2)) {
                size_t r = below(k - 1);
                from = offs[r];
                cnt = offs[r + 1] - offs[r];
            } else {
                from = below(n);
                cnt = 1 + below(n - from < 128 ? n - from : 128);
            }
            size_t at = below(n + 1);
            size_t tail = n - at;
            if (n + cnt > MAX_FRAME || tail > MAX_FRAME) break;
            memmove(w + at + cnt, w + at, tail);
            memmove(w + at, (from >= at ? w + from + cnt : w + from), cnt);
            /* (a range straddling at was shifted; any bytes will do) */
            *len = n + cnt;
            break;
        }
        default: { /* splice: this one's prefix, another entry's suffix */
            const entry *o = &corpus[below(n_corpus)];
            size_t a = below(n + 1), b = below(o->len + 1);
            if (a + (o->len - b) > MAX_FRAME) break;
            memcpy(w + a, o->data + b, o->len - b);
            *len = a + (o->len - b);
            break;
        }
    }
}

/* -- reasons seen (the coverage signal) ------------------------------------------------ */
typedef struct seen_t {
    const char *reason;
    int64_t bucket;
} seen_t;
static seen_t seen[256];
static size_t n_seen;

static int new_reason(const char *reason, int64_t record) {
    int64_t bucket = record < 0 ? -1 : record < 4 ? record : record < 16 ? 4 : 5;
    for (size_t i = 0; i < n_seen; i++)
        if (seen[i].bucket == bucket && strcmp(seen[i].reason, reason) == 0) return 0;
    if (n_seen < sizeof seen / sizeof seen[0]) {
        seen[n_seen].reason = reason;
        seen[n_seen].bucket = bucket;
        n_seen++;
    }
    return 1;
}

/* Check one input from a heap block of exactly len bytes; 1 when it is worth keeping. */
static int run_one(const uint8_t *data, size_t len) {
    uint8_t *exact = malloc(len ? len : 1);
    FUZZ_CHECK(exact != NULL);
    if (len) memcpy(exact, data, len);
    cur_buf = exact;
    cur_len = len;
    const char *reason = NULL;
    int64_t record = -1;
    int rc = check_frame(exact, len, &reason, &record);
    cur_buf = NULL;
    free(exact);
    return rc == PB_OK || new_reason(reason, record);
}

#ifdef PB_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rng_state = size;
    run_one(data, size);
    return 0;
}
#else
int main(void) {
    const char *secs_env = getenv("PYBUS_FUZZ_SECONDS");
    const char *seed_env = getenv("PYBUS_FUZZ_SEED");
    const char *iters_env = getenv("PYBUS_FUZZ_ITERATIONS");
    double seconds = secs_env ? atof(secs_env) : 0.0;
    uint64_t iterations = iters_env ? strtoull(iters_env, NULL, 10) : 500000;
    if (seed_env)
        run_seed = strtoull(seed_env, NULL, 0);
    else if (seconds > 0)
        run_seed = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid() << 20;
    else
        run_seed = 0x70796275735F6678ull; /* fixed: CI runs are reproducible */
    rng_state = run_seed;
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(dump_current);
    if (seconds > 0)
        printf("test_frame_fuzz: seed %" PRIu64 " for %.0f s (replay iteration I of a failure: "
               "PYBUS_FUZZ_SEED=%" PRIu64 " PYBUS_FUZZ_ITERATIONS=I+1)\n", run_seed, seconds,
               run_seed);
    else
        printf("test_frame_fuzz: seed %" PRIu64 ", %" PRIu64 " iterations\n", run_seed,
               iterations);
    fflush(stdout);

    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint8_t *w = malloc(MAX_FRAME);
    FUZZ_CHECK(w != NULL);
    for (int i = 0; i < N_SEEDS; i++) {
        size_t len = make_seed(w, i);
        const char *reason = NULL;
        int64_t record = -1;
        cur_buf = w;
        cur_len = len;
        FUZZ_CHECK(check_frame(w, len, &reason, &record) == PB_OK); /* seeds are valid */
        corpus_add(w, len);
    }
    uint64_t accepted = 0, kept = 0;
    double elapsed = 0;
    for (iteration = 0;; iteration++) {
        if (seconds > 0) {
            if ((iteration & 1023) == 0) {
                clock_gettime(CLOCK_MONOTONIC, &t);
                elapsed = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9;
                if (elapsed >= seconds) break;
            }
        } else if (iteration >= iterations) {
            break;
        }
        const entry *e = &corpus[below(n_corpus)];
        size_t len = e->len;
        memcpy(w, e->data, len);
        int k = 1 + (int)below(4);
        for (int i = 0; i < k; i++) mutate(w, &len);
        pb_frame_info info;
        int valid = pb_frame_validate(w, len, &info, NULL) == PB_OK;
        if (run_one(w, len)) {
            kept++;
            /* keep small entries so iterations stay cheap */
            if (len <= 8192 || below(8) == 0) corpus_add(w, len);
        }
        accepted += (uint64_t)valid;
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    elapsed = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("test_frame_fuzz: %" PRIu64 " inputs in %.2f s: %" PRIu64
           " accepted, %zu rejection kinds (reason x record) seen, %" PRIu64 " kept, corpus %zu\n",
           iteration, elapsed, accepted, n_seen, kept, n_corpus);
    for (size_t i = 0; i < n_seen; i++)
        printf("  %-16s record %s%" PRId64 "\n", seen[i].reason,
               seen[i].bucket == 5 ? ">=" : seen[i].bucket == 4 ? "4-" : "",
               seen[i].bucket == 5 ? (int64_t)16 : seen[i].bucket == 4 ? (int64_t)15
                                                                       : seen[i].bucket);
    for (size_t i = 0; i < n_corpus; i++) free(corpus[i].data);
    free(w);
    printf("test_frame_fuzz: ok (checksum %" PRIu64 ")\n", sink);
    return 0;
}
#endif
