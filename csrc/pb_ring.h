/* pb_ring.h - pybus's bounded batcher: a byte ring of pending records, a topic table with
 * per-topic sequence numbers, the "smart batching" decision, and a drain into batch frames.
 *
 * Memory: everything is allocated once in pb_ring_init (the record area of capacity_bytes and
 * a topic table of max_topics entries); appending and draining never allocate.
 *
 * Storage: records are appended back to back into the record area. A drain always continues
 * until the ring is empty (the caller loops pb_ring_next_frame / pb_ring_write_frame), and the
 * area is rewound to offset 0 when the last pending record leaves, so the area never wraps and
 * the space a record takes is exactly PB_RING_RECORD_SIZE(header_len, payload_len). If a drain
 * is interrupted, records already written out stay counted in pending_bytes (dead space) until
 * the ring next becomes empty; memory stays bounded by capacity_bytes either way.
 *
 * Thread safety: none. A pb_ring is used by one thread at a time (the caller's lock).
 */
#ifndef PB_RING_H
#define PB_RING_H

#include "pb_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Statuses of pb_ring_append (non-negative) besides the negative PB_* error codes. */
#define PB_RING_PENDING 0        /* stored; the batcher keeps accumulating */
#define PB_RING_READY 1          /* stored; the caller should drain now */
#define PB_RING_PENDING_FIRST 2  /* stored, pending, and this record made the ring non-empty */

/* Bytes a record occupies in the ring: a 32-byte record header, the header bytes and the
 * payload bytes, rounded up to a multiple of 8 (documented so callers can do byte accounting). */
#define PB_RING_RECORD_OVERHEAD 32u
#define PB_RING_RECORD_SIZE(header_len, payload_len) \
    ((((size_t)PB_RING_RECORD_OVERHEAD + (size_t)(header_len) + (size_t)(payload_len)) + 7u) & \
     ~(size_t)7u)

/* Limits of the configuration values (checked by pb_ring_init). */
#define PB_RING_MIN_CAPACITY 64u
#define PB_RING_MAX_CAPACITY ((size_t)1 << 31) /* record offsets are 32-bit */
#define PB_RING_MAX_TOPICS ((uint32_t)1 << 24)
#define PB_RING_MAX_MESSAGE ((uint32_t)1 << 30)

typedef struct pb_ring_config {
    size_t capacity_bytes;      /* record area size, PB_RING_MIN_CAPACITY..PB_RING_MAX_CAPACITY */
    uint32_t max_topics;        /* topic table size, 1..PB_RING_MAX_TOPICS */
    uint32_t max_batch_records; /* records per frame and READY bound, >= 1 */
    size_t max_batch_bytes;     /* frame size bound and READY bound on pending bytes, >= 64 */
    uint32_t max_message_bytes; /* payload + header bound per record, 1..PB_RING_MAX_MESSAGE,
                                   and PB_RING_RECORD_SIZE(0, max) <= capacity_bytes
                                   (capacity is rounded down to a multiple of 8) */
    int64_t idle_ns;            /* a record appended to an empty ring this long after the last
                                   drain is READY at once; >= 0 */
    int64_t max_delay_ns;       /* READY once the oldest pending record is this old; >= 0 */
    uint64_t publisher_id;      /* written into every frame header */
} pb_ring_config;

typedef struct pb_ring pb_ring;

/* Create a ring. Returns PB_OK and *out, PB_EINVAL if a config value is outside the limits
 * above, PB_ENOMEM if allocation fails. The caller owns *out and frees it with pb_ring_close. */
int pb_ring_init(const pb_ring_config *cfg, pb_ring **out);

/* Free a ring (NULL is allowed). */
void pb_ring_close(pb_ring *r);

/* Register a new topic; its id (0, 1, 2... in registration order) goes to *id_out and its
 * sequence counter starts at 1. Returns PB_OK, or PB_EFULL when max_topics are registered. */
int pb_ring_topic_add(pb_ring *r, uint32_t *id_out);

/* Number of registered topics. */
uint32_t pb_ring_topic_count(const pb_ring *r);

/* Sequence number the next record of topic_id will get (0 if topic_id is not registered). */
uint64_t pb_ring_next_seq(const pb_ring *r, uint32_t topic_id);

/* Position announcements (docs/wire.md, position frames): which topics should tell
 * subscribers their next sequence number now, so that a subscriber detects the loss of a
 * stream's last messages, which no later message would reveal. A topic qualifies once it has
 * published and none of its records is pending (everything before the position was sent). A
 * topic whose next_seq moved since its last announcement is due one interval_ns after that
 * announcement (at once when never announced, or with force); the announcement of a given
 * next_seq is made `repeats` times in all, 1, 2, 4 ... intervals apart, in case ZeroMQ drops
 * one at a high-water mark. emit(topic_id, next_seq, arg) is called for each topic due at
 * now_ns (a nonzero return stops the scan: -1 is returned, the topic's state unchanged), at
 * most `limit` of them per call (0: no limit; the scan resumes where it stopped, so every
 * topic gets its turn). Returns the earliest time another announcement falls due, or 0 if
 * none is scheduled.
 * Times are the caller's (any monotonic ns clock). O(registered topics). */
typedef int (*pb_ring_position_fn)(uint32_t topic_id, uint64_t next_seq, void *arg);
int64_t pb_ring_positions_due(pb_ring *r, int64_t now_ns, int64_t interval_ns, uint32_t repeats,
                              uint32_t limit, int force, pb_ring_position_fn emit, void *arg);

/* Append a record: copies header and payload into the ring, assigns the topic's next sequence
 * number and stamps it with CLOCK_REALTIME in ns (the ring's clock: on x86 with an invariant TSC,
 * the TSC extrapolated from a CLOCK_REALTIME reading re-taken every millisecond, within well
 * under a microsecond of CLOCK_REALTIME; elsewhere clock_gettime itself). flags are the record
 * flags of the wire format (only PB_FRAME_REC_MSGPACK may be set by callers;
 * PB_FRAME_REC_HAS_HEADER is set by the encoder when header_len > 0).
 * Returns PB_RING_READY when the caller should drain now: the ring was empty and no drain has
 * emptied it yet or the last one did so at least idle_ns ago; or the topic has >=
 * max_batch_records pending; or pending_bytes >= max_batch_bytes; or the oldest pending record
 * is >= max_delay_ns old (all counting this record; a clock reading earlier than the reference
 * time counts as no time elapsed). Otherwise returns PB_RING_PENDING_FIRST if the ring was
 * empty before, else PB_RING_PENDING.
 * Errors (nothing is stored, no sequence number is used): PB_EFULL when the record does not fit
 * in the free space; PB_EINVAL for an unregistered topic, payload_len + header_len >
 * max_message_bytes, or flags with bits other than PB_FRAME_REC_MSGPACK. */
int pb_ring_append(pb_ring *r, uint32_t topic_id, const void *payload, uint32_t payload_len,
                   const void *header, uint16_t header_len, uint8_t flags);

/* pb_ring_append with the caller's clock reading now_ns (deterministic tests, replays). */
int pb_ring_append_at(pb_ring *r, uint32_t topic_id, const void *payload, uint32_t payload_len,
                      const void *header, uint16_t header_len, uint8_t flags, int64_t now_ns);

/* Plan the next frame of a drain: the first topic (in order of first pending record since the
 * last drain) with pending records, and its oldest records up to max_batch_records and
 * max_batch_bytes of frame (a single record larger than max_batch_bytes goes alone). Returns 1
 * with *topic_id and *frame_len (bytes the frame needs) set, or 0 when the ring is empty.
 * Calling it again without pb_ring_write_frame re-plans the same frame; an append in between
 * cancels the plan (pb_ring_write_frame then returns PB_EINVAL until the next plan). */
int pb_ring_next_frame(pb_ring *r, uint32_t *topic_id, size_t *frame_len);

/* Write the frame planned by pb_ring_next_frame into dst (dst_len >= its frame_len) and remove
 * its records from the ring. Returns the bytes written, PB_EINVAL if nothing was planned or
 * dst_len is too small (the ring is unchanged then). When the ring becomes empty it is rewound
 * and the drain time (for idle_ns) is recorded. */
int64_t pb_ring_write_frame(pb_ring *r, uint8_t *dst, size_t dst_len);

/* Tell the ring that the caller finished sending what it drained, at now_ns: when the ring is
 * empty, the idle interval (idle_ns) counts from now_ns instead of from the end of the drain,
 * so the time spent sending a frame does not make the next record look idle. No effect when
 * records are pending. */
void pb_ring_mark_flushed(pb_ring *r, int64_t now_ns);

/* Tell the ring that the caller drained it because appends had stopped (a flusher that found
 * no append during its wait): when the ring is empty, the idle interval counts from the last
 * append instead of from the drain, so a record appended idle_ns or more after the previous
 * one is READY at once (the publisher was idle) although the drain itself was recent. No effect
 * when records are pending or nothing was ever appended. */
void pb_ring_mark_quiet(pb_ring *r);

/* Counters and sizes (queries, no side effects). */
size_t pb_ring_pending_records(const pb_ring *r);
size_t pb_ring_pending_bytes(const pb_ring *r);  /* ring bytes in use, see above */
size_t pb_ring_capacity(const pb_ring *r);
uint64_t pb_ring_publisher_id(const pb_ring *r);
uint64_t pb_ring_records_appended(const pb_ring *r);
uint64_t pb_ring_frames_drained(const pb_ring *r);
uint64_t pb_ring_full_count(const pb_ring *r);
/* Timestamp of the oldest pending record (0 when empty): a caller's timer can drain at
 * oldest + max_delay_ns when no further append comes. */
int64_t pb_ring_oldest_ns(const pb_ring *r);
/* Timestamp of the newest record ever appended (0 before the first): a flusher compares it
 * with the clock to tell a publisher that paused from one still appending. */
int64_t pb_ring_last_append_ns(const pb_ring *r);

/* CLOCK_REALTIME in ns (clock_gettime), the clock records are stamped with (see pb_ring_append
 * for how appends read it cheaply). */
int64_t pb_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif
