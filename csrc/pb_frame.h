/* pb_frame.h - the batch frame codec of docs/wire.md (version 1), little-endian throughout.
 *
 * Frame:  "PB" u8 version u8 frame_flags | u32 count | u64 publisher_id | u64 first_seq |
 *         i64 base_timestamp_ns                                          (32 bytes)
 * Record: u32 payload_len | u16 header_len | u8 record_flags | u8 reserved | u32 ts_delta_ns
 *         (12 bytes) then header_len header bytes, then payload_len payload bytes.
 * Record i has sequence first_seq + i and timestamp base_timestamp_ns + ts_delta_ns.
 * A position frame (frame_flags PB_FRAME_FLAG_POSITION) is the 32-byte header alone, count 0:
 * first_seq is the next sequence number of its stream, so every message before it was sent.
 *
 * Decoding never reads outside [buf, buf + len), whatever the bytes. Thread safety: all
 * functions are pure over their arguments (safe from any thread on distinct outputs).
 */
#ifndef PB_FRAME_H
#define PB_FRAME_H

#include <string.h>

#include "pb_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PB_FRAME_MAGIC0 0x50 /* 'P' */
#define PB_FRAME_MAGIC1 0x42 /* 'B' */
#define PB_FRAME_VERSION 1
#define PB_FRAME_HEADER_SIZE 32u
#define PB_FRAME_RECORD_HEADER_SIZE 12u
#define PB_FRAME_REC_MSGPACK 0x01u    /* payload is msgpack */
#define PB_FRAME_REC_HAS_HEADER 0x02u /* header_len > 0 (a msgpack map) */
#define PB_FRAME_REC_KNOWN (PB_FRAME_REC_MSGPACK | PB_FRAME_REC_HAS_HEADER)
#define PB_FRAME_MAX_DELTA 0xFFFFFFFFu
#define PB_FRAME_FLAG_POSITION 0x01u /* frame_flags: a position frame (no records) */

typedef struct pb_frame_info {
    uint64_t publisher_id;
    uint64_t first_seq;
    int64_t base_timestamp_ns;
    uint32_t count;
    uint8_t version;
    uint8_t flags;
} pb_frame_info;

/* Where and why a frame was rejected. reason is a short static phrase ("truncated",
 * "bad magic", ...); message is a full sentence saying what and where. */
typedef struct pb_frame_error {
    size_t offset;   /* byte offset of the offending field */
    int64_t record;  /* record index, -1 for the frame header */
    const char *reason;
    char message[224];
} pb_frame_error;

/* One decoded record; pointers point into the frame buffer. */
typedef struct pb_frame_record {
    const uint8_t *header;
    const uint8_t *payload;
    size_t payload_offset; /* of payload within the frame */
    uint32_t payload_len;
    uint16_t header_len;
    uint8_t flags;
    int64_t timestamp_ns;
} pb_frame_record;

/* Parse and check the 32-byte frame header only (magic, version, flags, length, and that
 * count records of 12 bytes could fit). Returns PB_OK or PB_EFRAME with *err filled (err may
 * be NULL). */
int pb_frame_read_header(const uint8_t *buf, size_t len, pb_frame_info *info,
                         pb_frame_error *err);

/* Validate a whole frame in one pass: the header, then every record's lengths and flags
 * against the frame end, and no trailing bytes. Returns PB_OK or PB_EFRAME with *err filled. */
int pb_frame_validate(const uint8_t *buf, size_t len, pb_frame_info *info, pb_frame_error *err);

/* Decode the record at offset off of a frame that pb_frame_validate accepted; returns the
 * offset of the next record. Does no checks: only for validated frames. */
static inline size_t pb_frame_next_unchecked(const uint8_t *buf, size_t off, int64_t base_ts,
                                             pb_frame_record *rec) {
    const uint8_t *p = buf + off;
    uint32_t plen = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                    (uint32_t)p[3] << 24;
    uint16_t hlen = (uint16_t)(p[4] | p[5] << 8);
    uint32_t delta = (uint32_t)p[8] | (uint32_t)p[9] << 8 | (uint32_t)p[10] << 16 |
                     (uint32_t)p[11] << 24;
    rec->flags = p[6];
    rec->payload_len = plen;
    rec->header_len = hlen;
    rec->timestamp_ns = (int64_t)((uint64_t)base_ts + delta);
    rec->header = p + PB_FRAME_RECORD_HEADER_SIZE;
    rec->payload_offset = off + PB_FRAME_RECORD_HEADER_SIZE + hlen;
    rec->payload = buf + rec->payload_offset;
    return rec->payload_offset + plen;
}

/* Bytes of one record in a frame. */
static inline size_t pb_frame_record_size(uint16_t header_len, uint32_t payload_len) {
    return (size_t)PB_FRAME_RECORD_HEADER_SIZE + header_len + payload_len;
}

/* Write a frame header at dst (32 bytes); returns dst + 32. */
uint8_t *pb_frame_write_header(uint8_t *dst, uint32_t count, uint64_t publisher_id,
                               uint64_t first_seq, int64_t base_timestamp_ns);

/* Write a position frame at dst (32 bytes): the stream's next sequence number, no records. */
uint8_t *pb_frame_write_position(uint8_t *dst, uint64_t publisher_id, uint64_t next_seq,
                                 int64_t timestamp_ns);

/* Write one record at dst; the timestamp delta is timestamp_ns - base_timestamp_ns clamped to
 * 0..PB_FRAME_MAX_DELTA; PB_FRAME_REC_HAS_HEADER is set iff header_len > 0. Returns the end. */
uint8_t *pb_frame_write_record(uint8_t *dst, const void *payload, uint32_t payload_len,
                               const void *header, uint16_t header_len, uint8_t flags,
                               int64_t timestamp_ns, int64_t base_timestamp_ns);

#ifdef __cplusplus
}
#endif
#endif
