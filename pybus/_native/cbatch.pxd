# cbatch.pxd - declarations of csrc/pb_ring.h and csrc/pb_frame.h (declarations only).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "pb_ring.h" nogil:
    int PB_RING_PENDING
    int PB_RING_READY
    int PB_RING_PENDING_FIRST
    unsigned int PB_RING_RECORD_OVERHEAD
    size_t PB_RING_RECORD_SIZE(size_t header_len, size_t payload_len)
    size_t PB_RING_MIN_CAPACITY
    size_t PB_RING_MAX_CAPACITY
    uint32_t PB_RING_MAX_TOPICS
    uint32_t PB_RING_MAX_MESSAGE

    ctypedef struct pb_ring_config:
        size_t capacity_bytes
        uint32_t max_topics
        uint32_t max_batch_records
        size_t max_batch_bytes
        uint32_t max_message_bytes
        int64_t idle_ns
        int64_t max_delay_ns
        uint64_t publisher_id

    ctypedef struct pb_ring:
        pass

    int pb_ring_init(const pb_ring_config *cfg, pb_ring **out)
    void pb_ring_close(pb_ring *r)
    int pb_ring_topic_add(pb_ring *r, uint32_t *id_out)
    uint32_t pb_ring_topic_count(const pb_ring *r)
    uint64_t pb_ring_next_seq(const pb_ring *r, uint32_t topic_id)
    ctypedef int (*pb_ring_position_fn)(uint32_t topic_id, uint64_t next_seq, void *arg)
    int64_t pb_ring_positions_due(pb_ring *r, int64_t now_ns, int64_t interval_ns,
                                  uint32_t repeats, uint32_t limit, int force,
                                  pb_ring_position_fn emit, void *arg)
    int pb_ring_append(pb_ring *r, uint32_t topic_id, const void *payload, uint32_t payload_len,
                       const void *header, uint16_t header_len, uint8_t flags)
    int pb_ring_append_at(pb_ring *r, uint32_t topic_id, const void *payload,
                          uint32_t payload_len, const void *header, uint16_t header_len,
                          uint8_t flags, int64_t now_ns)
    int pb_ring_next_frame(pb_ring *r, uint32_t *topic_id, size_t *frame_len)
    int64_t pb_ring_write_frame(pb_ring *r, uint8_t *dst, size_t dst_len)
    void pb_ring_mark_flushed(pb_ring *r, int64_t now_ns)
    void pb_ring_mark_quiet(pb_ring *r)
    size_t pb_ring_pending_records(const pb_ring *r)
    size_t pb_ring_pending_bytes(const pb_ring *r)
    size_t pb_ring_capacity(const pb_ring *r)
    uint64_t pb_ring_publisher_id(const pb_ring *r)
    uint64_t pb_ring_records_appended(const pb_ring *r)
    uint64_t pb_ring_frames_drained(const pb_ring *r)
    uint64_t pb_ring_full_count(const pb_ring *r)
    int64_t pb_ring_oldest_ns(const pb_ring *r)
    int64_t pb_ring_last_append_ns(const pb_ring *r)
    int64_t pb_now_ns()


cdef extern from "pb_frame.h" nogil:
    int PB_FRAME_VERSION
    unsigned int PB_FRAME_HEADER_SIZE
    unsigned int PB_FRAME_RECORD_HEADER_SIZE
    unsigned int PB_FRAME_REC_MSGPACK
    unsigned int PB_FRAME_REC_HAS_HEADER

    ctypedef struct pb_frame_info:
        uint64_t publisher_id
        uint64_t first_seq
        int64_t base_timestamp_ns
        uint32_t count
        uint8_t version
        uint8_t flags

    ctypedef struct pb_frame_error:
        size_t offset
        int64_t record
        const char *reason
        char message[224]

    ctypedef struct pb_frame_record:
        const uint8_t *header
        const uint8_t *payload
        size_t payload_offset
        uint32_t payload_len
        uint16_t header_len
        uint8_t flags
        int64_t timestamp_ns

    int pb_frame_read_header(const uint8_t *buf, size_t len, pb_frame_info *info,
                             pb_frame_error *err)
    int pb_frame_validate(const uint8_t *buf, size_t len, pb_frame_info *info,
                          pb_frame_error *err)
    size_t pb_frame_next_unchecked(const uint8_t *buf, size_t off, int64_t base_ts,
                                   pb_frame_record *rec)
    size_t pb_frame_record_size(uint16_t header_len, uint32_t payload_len)
    uint8_t *pb_frame_write_header(uint8_t *dst, uint32_t count, uint64_t publisher_id,
                                   uint64_t first_seq, int64_t base_timestamp_ns)
    uint8_t *pb_frame_write_position(uint8_t *dst, uint64_t publisher_id, uint64_t next_seq,
                                     int64_t timestamp_ns)
    uint8_t *pb_frame_write_record(uint8_t *dst, const void *payload, uint32_t payload_len,
                                   const void *header, uint16_t header_len, uint8_t flags,
                                   int64_t timestamp_ns, int64_t base_timestamp_ns)
