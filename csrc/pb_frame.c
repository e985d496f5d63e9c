/* pb_frame.c - batch frame encoder and bounds-checked decoder (docs/wire.md, version 1). */
#include "pb_frame.h"

#include <stdarg.h>
#include <stdio.h>

static inline uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rd_u64(const uint8_t *p) {
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static inline void wr_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void wr_u64(uint8_t *p, uint64_t v) {
    wr_u32(p, (uint32_t)v);
    wr_u32(p + 4, (uint32_t)(v >> 32));
}

#if defined(__GNUC__) || defined(__clang__)
#define PB_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PB_PRINTF(a, b)
#endif

static int PB_PRINTF(5, 6) fail(pb_frame_error *err, size_t offset, int64_t record,
                                const char *reason, const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->offset = offset;
        err->record = record;
        err->reason = reason;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return PB_EFRAME;
}

int pb_frame_read_header(const uint8_t *buf, size_t len, pb_frame_info *info,
                         pb_frame_error *err) {
    if (PB_UNLIKELY(buf == NULL || len < PB_FRAME_HEADER_SIZE))
        return fail(err, 0, -1, "truncated",
                    "frame truncated: %zu bytes is shorter than the %u-byte frame header", len,
                    PB_FRAME_HEADER_SIZE);
    if (PB_UNLIKELY(buf[0] != PB_FRAME_MAGIC0 || buf[1] != PB_FRAME_MAGIC1))
        return fail(err, 0, -1, "bad magic",
                    "not a pybus batch frame: starts with 0x%02x 0x%02x, expected 'PB'", buf[0],
                    buf[1]);
    if (PB_UNLIKELY(buf[2] != PB_FRAME_VERSION))
        return fail(err, 2, -1, "unknown version",
                    "unknown batch frame version %u at offset 2; this receiver speaks version %d",
                    buf[2], PB_FRAME_VERSION);
    if (PB_UNLIKELY(buf[3] & ~PB_FRAME_FLAG_POSITION))
        return fail(err, 3, -1, "reserved flags",
                    "frame flags 0x%02x at offset 3 use reserved bits; version 1 allows 0 or "
                    "0x01 (position)",
                    buf[3]);
    uint32_t count = rd_u32(buf + 4);
    size_t room = (len - PB_FRAME_HEADER_SIZE) / PB_FRAME_RECORD_HEADER_SIZE;
    if (buf[3] & PB_FRAME_FLAG_POSITION) {
        if (PB_UNLIKELY(count != 0 || len != PB_FRAME_HEADER_SIZE))
            return fail(err, 4, -1, "bad position",
                        "position frame declares %u records in %zu bytes; a position frame is "
                        "the 32-byte header alone with count 0",
                        count, len);
    } else if (PB_UNLIKELY(count == 0)) {
        return fail(err, 4, -1, "empty", "frame declares 0 records; a frame holds at least 1");
    }
    if (PB_UNLIKELY((size_t)count > room))
        return fail(err, 4, -1, "bad count",
                    "frame declares %u records but its %zu bytes fit at most %zu", count, len,
                    room);
    info->version = buf[2];
    info->flags = buf[3];
    info->count = count;
    info->publisher_id = rd_u64(buf + 8);
    info->first_seq = rd_u64(buf + 16);
    info->base_timestamp_ns = (int64_t)rd_u64(buf + 24);
    return PB_OK;
}

int pb_frame_validate(const uint8_t *buf, size_t len, pb_frame_info *info, pb_frame_error *err) {
    int rc = pb_frame_read_header(buf, len, info, err);
    if (PB_UNLIKELY(rc != PB_OK)) return rc;
    size_t off = PB_FRAME_HEADER_SIZE;
    uint32_t n = info->count;
    for (uint32_t i = 0; i < n; i++) {
        size_t remain = len - off;
        if (PB_UNLIKELY(remain < PB_FRAME_RECORD_HEADER_SIZE))
            return fail(err, off, i, "truncated",
                        "frame truncated: record %u at offset %zu needs a %u-byte record header "
                        "but only %zu bytes remain",
                        i, off, PB_FRAME_RECORD_HEADER_SIZE, remain);
        const uint8_t *p = buf + off;
        uint32_t plen = rd_u32(p);
        uint32_t hlen = (uint32_t)p[4] | (uint32_t)p[5] << 8;
        uint8_t fl = p[6];
        if (PB_UNLIKELY(fl & ~PB_FRAME_REC_KNOWN))
            return fail(err, off + 6, i, "reserved flags",
                        "record %u at offset %zu has flags 0x%02x with reserved bits; allowed "
                        "bits are 0x01 (msgpack) and 0x02 (has header)",
                        i, off, fl);
        if (PB_UNLIKELY(p[7] != 0))
            return fail(err, off + 7, i, "reserved byte",
                        "record %u at offset %zu has reserved byte 0x%02x; it must be 0", i, off,
                        p[7]);
        if (PB_UNLIKELY(((fl & PB_FRAME_REC_HAS_HEADER) != 0) != (hlen != 0)))
            return fail(err, off + 4, i, "header flag",
                        "record %u at offset %zu: header_len %u disagrees with the has-header "
                        "flag (set iff header_len > 0)",
                        i, off, hlen);
        remain -= PB_FRAME_RECORD_HEADER_SIZE;
        if (PB_UNLIKELY((size_t)hlen > remain))
            return fail(err, off + 4, i, "truncated",
                        "frame truncated: record %u at offset %zu declares a %u-byte header but "
                        "only %zu bytes remain",
                        i, off, hlen, remain);
        remain -= hlen;
        if (PB_UNLIKELY((size_t)plen > remain))
            return fail(err, off, i, "truncated",
                        "frame truncated: record %u at offset %zu declares a %u-byte payload but "
                        "only %zu bytes remain",
                        i, off, plen, remain);
        off += PB_FRAME_RECORD_HEADER_SIZE + (size_t)hlen + plen;
    }
    if (PB_UNLIKELY(off != len))
        return fail(err, off, -1, "trailing bytes",
                    "frame has %zu trailing bytes at offset %zu after its %u records", len - off,
                    off, n);
    return PB_OK;
}

uint8_t *pb_frame_write_header(uint8_t *dst, uint32_t count, uint64_t publisher_id,
                               uint64_t first_seq, int64_t base_timestamp_ns) {
    dst[0] = PB_FRAME_MAGIC0;
    dst[1] = PB_FRAME_MAGIC1;
    dst[2] = PB_FRAME_VERSION;
    dst[3] = 0;
    wr_u32(dst + 4, count);
    wr_u64(dst + 8, publisher_id);
    wr_u64(dst + 16, first_seq);
    wr_u64(dst + 24, (uint64_t)base_timestamp_ns);
    return dst + PB_FRAME_HEADER_SIZE;
}

uint8_t *pb_frame_write_position(uint8_t *dst, uint64_t publisher_id, uint64_t next_seq,
                                 int64_t timestamp_ns) {
    uint8_t *end = pb_frame_write_header(dst, 0, publisher_id, next_seq, timestamp_ns);
    dst[3] = PB_FRAME_FLAG_POSITION;
    return end;
}

uint8_t *pb_frame_write_record(uint8_t *dst, const void *payload, uint32_t payload_len,
                               const void *header, uint16_t header_len, uint8_t flags,
                               int64_t timestamp_ns, int64_t base_timestamp_ns) {
    uint32_t delta;
    /* Saturate: clock steps backwards give 0, gaps over ~4.29 s give the maximum. */
    if (timestamp_ns <= base_timestamp_ns)
        delta = 0;
    else if ((uint64_t)timestamp_ns - (uint64_t)base_timestamp_ns > PB_FRAME_MAX_DELTA)
        delta = PB_FRAME_MAX_DELTA;
    else
        delta = (uint32_t)((uint64_t)timestamp_ns - (uint64_t)base_timestamp_ns);
    flags = (uint8_t)(flags & PB_FRAME_REC_MSGPACK);
    if (header_len) flags |= PB_FRAME_REC_HAS_HEADER;
    wr_u32(dst, payload_len);
    dst[4] = (uint8_t)header_len;
    dst[5] = (uint8_t)(header_len >> 8);
    dst[6] = flags;
    dst[7] = 0;
    wr_u32(dst + 8, delta);
    dst += PB_FRAME_RECORD_HEADER_SIZE;
    if (header_len) {
        memcpy(dst, header, header_len);
        dst += header_len;
    }
    if (payload_len) {
        memcpy(dst, payload, payload_len);
        dst += payload_len;
    }
    return dst;
}
