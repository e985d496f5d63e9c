/* pb_ring.c - the bounded batcher: record area, topic table, batching decision, drain. */
#define _POSIX_C_SOURCE 200809L
#include "pb_ring.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pb_frame.h"

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
    int64_t last_drain_ns, oldest_ns;
    int drained; /* a drain has emptied the ring at least once (before that: idle) */
    uint64_t publisher_id;
    /* the frame planned by pb_ring_next_frame */
    int planned;
    uint32_t plan_topic, plan_count, plan_next;
    size_t plan_len;
    uint64_t appended, frames, full;
};

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
    *id_out = id;
    return PB_OK;
}

uint32_t pb_ring_topic_count(const pb_ring *r) { return r->ntopics; }

uint64_t pb_ring_next_seq(const pb_ring *r, uint32_t topic_id) {
    return topic_id < r->ntopics ? r->topics[topic_id].next_seq : 0;
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
                             pb_now_ns());
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

size_t pb_ring_pending_records(const pb_ring *r) { return r->pending; }
size_t pb_ring_pending_bytes(const pb_ring *r) { return r->used; }
size_t pb_ring_capacity(const pb_ring *r) { return r->capacity; }
uint64_t pb_ring_publisher_id(const pb_ring *r) { return r->publisher_id; }
uint64_t pb_ring_records_appended(const pb_ring *r) { return r->appended; }
uint64_t pb_ring_frames_drained(const pb_ring *r) { return r->frames; }
uint64_t pb_ring_full_count(const pb_ring *r) { return r->full; }
int64_t pb_ring_oldest_ns(const pb_ring *r) { return r->oldest_ns; }
