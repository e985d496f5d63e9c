/* pb_ring.c - the bounded batcher: record area, topic table, batching decision, drain. */
#define _POSIX_C_SOURCE 200809L
#include "pb_ring.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pb_frame.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <x86intrin.h>
#define PB_HAVE_TSC 1
#else
#define PB_HAVE_TSC 0
#endif

/* The ring's clock. Reading CLOCK_REALTIME costs 25-40 ns (measured on the 2-core test VM: a
 * sixth of a publisher's time per 64-B message); the invariant TSC costs ~10 ns. So appends
 * read the TSC and extrapolate from an anchor, a (TSC, CLOCK_REALTIME) pair re-read at least
 * every PB_CLK_ANCHOR_NS: timestamps stay CLOCK_REALTIME (comparable across processes and
 * hosts) within the extrapolation error (ns per tick measured over the previous anchor period of
 * >= 1 ms: about 1e-5 relative, tens of ns), and a clock step or a stopped process shows up at
 * the next anchor. Until the first calibration, and without an invariant TSC, every reading is
 * CLOCK_REALTIME. A reading may be a few ns earlier than the previous one at a re-anchor; the
 * frame encoder clamps negative deltas and elapsed_at_least treats them as no time elapsed. */
#define PB_CLK_ANCHOR_NS 1000000
#define PB_CLK_MIN_CALIB_NS 900000
/* An anchor pair is taken only when the CLOCK_REALTIME reading took at most this many TSC ticks
 * (~0.7 us at 3 GHz; a reading takes ~80): so a pair is exact within ~0.35 us even if the thread
 * was preempted around it, and ns per tick over >= 1 ms within ~7e-4 (typically ~1e-5). */
#define PB_CLK_MAX_READ_TICKS 2048u

#define PB_NIL UINT32_MAX

/* A record in the area (native byte order; offsets are multiples of 8, so aligned). */
typedef struct pb_rec {
    uint32_t next;        /* offset of the next pending record of the same topic, or PB_NIL */
    uint32_t topic;
    uint32_t payload_len;
    uint16_t header_len;
    uint8_t flags;
    uint8_t pad;
    int64_t timestamp_ns;
    uint64_t seq;
} pb_rec; /* header bytes then payload bytes follow */

_Static_assert(sizeof(pb_rec) == PB_RING_RECORD_OVERHEAD, "record header is 32 bytes");

typedef struct pb_topic {
    uint64_t next_seq;
    uint32_t head, tail;  /* offsets of the oldest / newest pending record */
    uint32_t count;       /* pending records */
    uint32_t next_active; /* next topic in the active list, or PB_NIL */
    /* position announcements (pb_ring_positions_due) */
    uint64_t announced_seq; /* next_seq when last announced (0: never) */
    int64_t announced_ns;   /* when, on the caller's clock */
    uint32_t repeats_left;  /* announcements of announced_seq still to make */
} pb_topic;

struct pb_ring {
    uint8_t *area;
    size_t capacity, used;
    size_t pending;
    pb_topic *topics;
    uint32_t ntopics, max_topics;
    uint32_t active_head, active_tail; /* topics with pending records, in order of activation */
    uint32_t max_batch_records;
    size_t max_batch_bytes;
    uint32_t max_message_bytes;
    int64_t idle_ns, max_delay_ns;
    int64_t last_drain_ns, oldest_ns, last_append_ns;
    int drained; /* a drain has emptied the ring at least once (before that: idle) */
    uint32_t position_cursor; /* where pb_ring_positions_due resumes after hitting its limit */
    uint64_t publisher_id;
    /* the frame planned by pb_ring_next_frame */
    int planned;
    uint32_t plan_topic, plan_count, plan_next;
    size_t plan_len;
    uint64_t appended, frames, full;
    /* clock (see above): anchor TSC and ns, ns per tick in 32.32 fixed point (0: not
       calibrated), TSC ticks between anchors, and whether the TSC is usable at all */
    uint64_t clk_tsc;
    int64_t clk_ns;
    uint64_t clk_mult;
    uint64_t clk_span;
    int clk_tsc_ok;
};

#if PB_HAVE_TSC
static int tsc_invariant(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000u, &a, &b, &c, &d) || a < 0x80000007u) return 0;
    if (!__get_cpuid(0x80000007u, &a, &b, &c, &d)) return 0;
    return (d >> 8) & 1u;
}
#endif

/* The ring's clock reading (CLOCK_REALTIME ns, extrapolated from the TSC between anchors). */
static int64_t ring_now(pb_ring *r) {
#if PB_HAVE_TSC
    if (PB_LIKELY(r->clk_tsc_ok)) {
        uint64_t t = __rdtsc();
        uint64_t d = t - r->clk_tsc;
        if (PB_LIKELY(r->clk_mult != 0 && d < r->clk_span))
            return r->clk_ns + (int64_t)((d * r->clk_mult) >> 32);
        int64_t now = pb_now_ns();
        uint64_t t2 = __rdtsc();
        if (t2 - t > PB_CLK_MAX_READ_TICKS) return now; /* preempted mid-reading: no anchor */
        t += (t2 - t) / 2;
        d = t - r->clk_tsc;
        if (r->clk_ns != 0 && now - r->clk_ns >= PB_CLK_MIN_CALIB_NS && d > 0 &&
            now - r->clk_ns < (int64_t)1 << 31) {
            /* ns per tick over the last anchor period, then the ticks of one period; a
               ratio outside 0.01..100 GHz (a clock step, a migrated VM) waits for the next */
            uint64_t mult = ((uint64_t)(now - r->clk_ns) << 32) / d;
            if (mult >= ((uint64_t)1 << 32) / 100 && mult <= ((uint64_t)100 << 32)) {
                r->clk_mult = mult;
                r->clk_span = ((uint64_t)PB_CLK_ANCHOR_NS << 32) / mult;
            }
        }
        /* a new anchor once the period is over (not before: calibration needs >= 0.9 ms) */
        if (r->clk_ns == 0 || now - r->clk_ns >= PB_CLK_MIN_CALIB_NS || now < r->clk_ns) {
            r->clk_tsc = t;
            r->clk_ns = now;
        }
        return now;
    }
#else
    (void)r;
#endif
    return pb_now_ns();
}

int64_t pb_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int pb_ring_init(const pb_ring_config *cfg, pb_ring **out) {
    if (!cfg || !out) return PB_EINVAL;
    *out = NULL;
    if (cfg->capacity_bytes < PB_RING_MIN_CAPACITY || cfg->capacity_bytes > PB_RING_MAX_CAPACITY ||
        cfg->max_topics < 1 || cfg->max_topics > PB_RING_MAX_TOPICS ||
        cfg->max_batch_records < 1 || cfg->max_batch_bytes < 64 ||
        cfg->max_message_bytes < 1 || cfg->max_message_bytes > PB_RING_MAX_MESSAGE ||
        PB_RING_RECORD_SIZE(0, cfg->max_message_bytes) > (cfg->capacity_bytes & ~(size_t)7) ||
        cfg->idle_ns < 0 || cfg->max_delay_ns < 0)
        return PB_EINVAL;
    pb_ring *r = calloc(1, sizeof *r);
    if (!r) return PB_ENOMEM;
    r->capacity = cfg->capacity_bytes & ~(size_t)7;
    r->area = malloc(r->capacity);
    r->topics = calloc(cfg->max_topics, sizeof *r->topics);
    if (!r->area || !r->topics) {
        pb_ring_close(r);
        return PB_ENOMEM;
    }
    r->max_topics = cfg->max_topics;
    r->active_head = r->active_tail = PB_NIL;
    r->max_batch_records = cfg->max_batch_records;
    r->max_batch_bytes = cfg->max_batch_bytes;
    r->max_message_bytes = cfg->max_message_bytes;
    r->idle_ns = cfg->idle_ns;
    r->max_delay_ns = cfg->max_delay_ns;
    r->publisher_id = cfg->publisher_id;
#if PB_HAVE_TSC
    r->clk_tsc_ok = tsc_invariant();
#endif
    *out = r;
    return PB_OK;
}

void pb_ring_close(pb_ring *r) {
    if (!r) return;
    free(r->area);
    free(r->topics);
    free(r);
}

int pb_ring_topic_add(pb_ring *r, uint32_t *id_out) {
    if (r->ntopics >= r->max_topics) return PB_EFULL;
    uint32_t id = r->ntopics++;
    pb_topic *t = &r->topics[id];
    t->next_seq = 1;
    t->head = t->tail = t->next_active = PB_NIL;
    t->count = 0;
    t->announced_seq = 0;
    t->announced_ns = 0;
    t->repeats_left = 0;
    *id_out = id;
    return PB_OK;
}

uint32_t pb_ring_topic_count(const pb_ring *r) { return r->ntopics; }

uint64_t pb_ring_next_seq(const pb_ring *r, uint32_t topic_id) {
    return topic_id < r->ntopics ? r->topics[topic_id].next_seq : 0;
}

/* Repeats of one announcement back off: 1, 2, 4 ... intervals after the previous one. */
static inline int64_t repeat_delay(int64_t interval_ns, uint32_t repeats, uint32_t left) {
    uint32_t k = repeats - 1 - left;
    return interval_ns << (k < 20 ? k : 20);
}

int64_t pb_ring_positions_due(pb_ring *r, int64_t now_ns, int64_t interval_ns, uint32_t repeats,
                              uint32_t limit, int force, pb_ring_position_fn emit, void *arg) {
    int64_t next_due = 0;
    uint32_t n = r->ntopics, emitted = 0;
    if (r->position_cursor >= n) r->position_cursor = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = r->position_cursor + i < n ? r->position_cursor + i : r->position_cursor + i - n;
        pb_topic *t = &r->topics[id];
        if (t->next_seq <= 1 || t->count) continue; /* nothing published, or not all sent */
        int64_t due;
        if (t->next_seq != t->announced_seq) {
            /* moved since its last announcement: due one interval after that one */
            due = (force || t->announced_seq == 0) ? now_ns : t->announced_ns + interval_ns;
        } else if (t->repeats_left) {
            due = t->announced_ns + repeat_delay(interval_ns, repeats, t->repeats_left);
        } else {
            continue;
        }
        if (now_ns >= due) {
            if (limit && emitted == limit) {
                /* the rest next time, from here (round robin), a tenth of an interval on */
                r->position_cursor = id;
                int64_t soon = now_ns + interval_ns / 10;
                return next_due && next_due < soon ? next_due : soon;
            }
            if (emit(id, t->next_seq, arg) != 0) return -1;
            emitted++;
            if (t->next_seq != t->announced_seq) {
                t->announced_seq = t->next_seq;
                t->repeats_left = repeats ? repeats - 1 : 0;
            } else {
                t->repeats_left--;
            }
            t->announced_ns = now_ns;
            if (!t->repeats_left) continue;
            due = now_ns + repeat_delay(interval_ns, repeats, t->repeats_left);
        }
        if (next_due == 0 || due < next_due) next_due = due;
    }
    return next_due;
}

/* now - then >= span, without signed overflow whatever the caller's clock readings. */
static inline int elapsed_at_least(int64_t then, int64_t now, int64_t span) {
    return now >= then && (uint64_t)now - (uint64_t)then >= (uint64_t)span;
}

int pb_ring_append_at(pb_ring *r, uint32_t topic_id, const void *payload, uint32_t payload_len,
                      const void *header, uint16_t header_len, uint8_t flags, int64_t now_ns) {
    if (PB_UNLIKELY(topic_id >= r->ntopics || (flags & ~PB_FRAME_REC_MSGPACK) ||
                    (uint64_t)payload_len + header_len > r->max_message_bytes))
        return PB_EINVAL;
    size_t size = PB_RING_RECORD_SIZE(header_len, payload_len);
    if (PB_UNLIKELY(size > r->capacity - r->used)) {
        r->full++;
        return PB_EFULL;
    }
    uint32_t off = (uint32_t)r->used;
    pb_rec *rec = (pb_rec *)(void *)(r->area + off);
    pb_topic *t = &r->topics[topic_id];
    rec->next = PB_NIL;
    rec->topic = topic_id;
    rec->payload_len = payload_len;
    rec->header_len = header_len;
    rec->flags = flags;
    rec->pad = 0;
    rec->timestamp_ns = now_ns;
    rec->seq = t->next_seq++;
    uint8_t *p = (uint8_t *)(rec + 1);
    if (header_len) memcpy(p, header, header_len);
    if (payload_len) memcpy(p + header_len, payload, payload_len);
    r->used += size;
    r->appended++;
    r->last_append_ns = now_ns;

    if (t->count == 0) {
        t->head = off;
        t->next_active = PB_NIL;
        if (r->active_tail == PB_NIL)
            r->active_head = topic_id;
        else
            r->topics[r->active_tail].next_active = topic_id;
        r->active_tail = topic_id;
    } else {
        ((pb_rec *)(void *)(r->area + t->tail))->next = off;
    }
    t->tail = off;
    t->count++;
    r->planned = 0; /* a plan may now be able to include this record */

    int first = r->pending++ == 0;
    if (first) r->oldest_ns = now_ns;
    /* Idle: a lone message goes out at once (raw transport latency); under load the batch
       grows until a bound or the delay is reached. */
    if ((first && (!r->drained || elapsed_at_least(r->last_drain_ns, now_ns, r->idle_ns))) ||
        t->count >= r->max_batch_records || r->used >= r->max_batch_bytes ||
        elapsed_at_least(r->oldest_ns, now_ns, r->max_delay_ns))
        return PB_RING_READY;
    if (first) return PB_RING_PENDING_FIRST;
    return PB_RING_PENDING;
}

int pb_ring_append(pb_ring *r, uint32_t topic_id, const void *payload, uint32_t payload_len,
                   const void *header, uint16_t header_len, uint8_t flags) {
    return pb_ring_append_at(r, topic_id, payload, payload_len, header, header_len, flags,
                             ring_now(r));
}

int pb_ring_next_frame(pb_ring *r, uint32_t *topic_id, size_t *frame_len) {
    if (r->active_head == PB_NIL) return 0;
    uint32_t tid = r->active_head;
    pb_topic *t = &r->topics[tid];
    size_t len = PB_FRAME_HEADER_SIZE;
    uint32_t n = 0, off = t->head;
    while (off != PB_NIL && n < r->max_batch_records) {
        const pb_rec *rec = (const pb_rec *)(const void *)(r->area + off);
        size_t rs = pb_frame_record_size(rec->header_len, rec->payload_len);
        if (n > 0 && len + rs > r->max_batch_bytes) break;
        len += rs;
        n++;
        off = rec->next;
    }
    r->planned = 1;
    r->plan_topic = tid;
    r->plan_count = n;
    r->plan_next = off;
    r->plan_len = len;
    *topic_id = tid;
    *frame_len = len;
    return 1;
}

int64_t pb_ring_write_frame(pb_ring *r, uint8_t *dst, size_t dst_len) {
    if (!r->planned || dst_len < r->plan_len) return PB_EINVAL;
    pb_topic *t = &r->topics[r->plan_topic];
    const pb_rec *first = (const pb_rec *)(const void *)(r->area + t->head);
    int64_t base = first->timestamp_ns;
    uint8_t *w = pb_frame_write_header(dst, r->plan_count, r->publisher_id, first->seq, base);
    uint32_t off = t->head;
    for (uint32_t i = 0; i < r->plan_count; i++) {
        const pb_rec *rec = (const pb_rec *)(const void *)(r->area + off);
        const uint8_t *p = (const uint8_t *)(rec + 1);
        w = pb_frame_write_record(w, p + rec->header_len, rec->payload_len, p, rec->header_len,
                                  rec->flags, rec->timestamp_ns, base);
        off = rec->next;
    }
    t->count -= r->plan_count;
    t->head = r->plan_next;
    if (t->count == 0) {
        t->head = t->tail = PB_NIL;
        r->active_head = t->next_active;
        if (r->active_head == PB_NIL) r->active_tail = PB_NIL;
        t->next_active = PB_NIL;
    }
    r->pending -= r->plan_count;
    r->frames++;
    r->planned = 0;
    if (r->pending == 0) {
        r->used = 0;
        r->oldest_ns = 0;
        r->last_drain_ns = pb_now_ns();
        r->drained = 1;
    }
    return (int64_t)(w - dst);
}

void pb_ring_mark_flushed(pb_ring *r, int64_t now_ns) {
    if (r->pending == 0 && r->drained) r->last_drain_ns = now_ns;
}

void pb_ring_mark_quiet(pb_ring *r) {
    if (r->pending == 0 && r->drained && r->appended) r->last_drain_ns = r->last_append_ns;
}

size_t pb_ring_pending_records(const pb_ring *r) { return r->pending; }
size_t pb_ring_pending_bytes(const pb_ring *r) { return r->used; }
size_t pb_ring_capacity(const pb_ring *r) { return r->capacity; }
uint64_t pb_ring_publisher_id(const pb_ring *r) { return r->publisher_id; }
uint64_t pb_ring_records_appended(const pb_ring *r) { return r->appended; }
uint64_t pb_ring_frames_drained(const pb_ring *r) { return r->frames; }
uint64_t pb_ring_full_count(const pb_ring *r) { return r->full; }
int64_t pb_ring_oldest_ns(const pb_ring *r) { return r->oldest_ns; }
int64_t pb_ring_last_append_ns(const pb_ring *r) { return r->last_append_ns; }
