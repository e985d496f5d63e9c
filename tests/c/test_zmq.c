/* test_zmq.c - C unit tests of pb_zmq (finding and driving an already-loaded libzmq).
 *
 * Without PB_TEST_LIBZMQ only the "nothing loaded" behaviour is checked and the test reports
 * itself skipped (exit 77, ctest's SKIP_RETURN_CODE). With PB_TEST_LIBZMQ=/path/to/libzmq.so.5
 * (Debian's libzmq5 or pyzmq's bundled copy; CMake finds one or takes -DPYBUS_TEST_LIBZMQ=...)
 * the test loads that library itself, as importing pyzmq would, then runs every function of
 * pb_zmq.h over inproc sockets, with its error paths:
 *   - pb_zmq_load: nothing loaded, a path that is not loaded, an object that does not export
 *     libzmq, two different libzmq objects loaded (ambiguous; in a forked child), success by
 *     search and idempotence;
 *   - the message shapes of the fast path: [topic][batch frame] pub/sub (XPUB/SUB, the frame
 *     written in place by pb_zmq_send_filled, as Batcher.drain_to does), [identity][frame]
 *     ROUTER/DEALER request/reply (pb_zmq_send_concat), REQ/REP, multi-part PAIR messages
 *     with empty and 1-MiB parts;
 *   - errors as ZeroMQ errno values: EAGAIN (non-blocking send and receive, RCVTIMEO),
 *     EHOSTUNREACH (ROUTER_MANDATORY), EFSM (REQ out of turn), ENOTSUP (wrong direction),
 *     ENOTSOCK (NULL socket), ETERM (context shut down, also waking a blocked receive),
 *     EINTR (a signal without SA_RESTART during a blocking receive and send), ENOMEM (a
 *     frame that cannot be allocated), EINVAL (a fill callback that fails).
 * Under AddressSanitizer LeakSanitizer also checks that every failed send released its
 * message (libzmq's allocations go through the intercepted malloc). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pb_frame.h"
#include "pb_zmq.h"

#if defined(__SANITIZE_ADDRESS__)
#define PB_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PB_TEST_ASAN 1
#endif
#endif

static int failures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)
/* An errno-returning call that must give `want`; prints both names when it does not. */
#define CHECK_ERR(call, want)                                                          \
    do {                                                                               \
        int got_ = (call);                                                             \
        if (got_ != (want)) {                                                          \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s)\n", __FILE__, \
                    __LINE__, #call, got_, pb_zmq_strerror(got_), (want),              \
                    pb_zmq_strerror(want));                                            \
            failures++;                                                                \
        }                                                                              \
    } while (0)

/* The libzmq calls the test needs to set sockets up (pb_zmq only does I/O). */
static void *(*ctx_new)(void);
static int (*ctx_term)(void *);
static int (*ctx_shutdown)(void *);
static void *(*socket_new)(void *, int);
static int (*sock_close)(void *);
static int (*sock_bind)(void *, const char *);
static int (*sock_connect)(void *, const char *);
static int (*sock_setopt)(void *, int, const void *, size_t);

#define ZMQ_PAIR_ 0
#define ZMQ_PUB_ 1
#define ZMQ_SUB_ 2
#define ZMQ_REQ_ 3
#define ZMQ_REP_ 4
#define ZMQ_DEALER_ 5
#define ZMQ_ROUTER_ 6
#define ZMQ_XPUB_ 9
#define ZMQ_SUBSCRIBE_ 6
#define ZMQ_LINGER_ 17
#define ZMQ_RCVTIMEO_ 27
#define ZMQ_SNDTIMEO_ 28
#define ZMQ_ROUTER_MANDATORY_ 33

static int sym(void *h, const char *name, void *fnptr, size_t size) {
    void *p = dlsym(h, name);
    if (p == NULL) return -1;
    memcpy(fnptr, &p, size);
    return 0;
}
#define SYM(h, name, var) sym((h), (name), &(var), sizeof(var))

static void setopt_int(void *s, int opt, int value) {
    CHECK(sock_setopt(s, opt, &value, sizeof value) == 0);
}

/* A socket with LINGER 0 and the given receive/send timeouts (-1: block forever). */
static void *new_socket(void *ctx, int type, int rcvtimeo_ms, int sndtimeo_ms) {
    void *s = socket_new(ctx, type);
    CHECK(s != NULL);
    if (s == NULL) abort();
    setopt_int(s, ZMQ_LINGER_, 0);
    setopt_int(s, ZMQ_RCVTIMEO_, rcvtimeo_ms);
    setopt_int(s, ZMQ_SNDTIMEO_, sndtimeo_ms);
    return s;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Receive one part (blocking up to RCVTIMEO); 0 or the ZeroMQ errno. */
static int recv_part(void *s, pb_zmq_msg *m, unsigned char *out, size_t cap, size_t *len,
                     int *more) {
    int err = pb_zmq_msg_recv(m, s, 0);
    if (err) return err;
    *len = pb_zmq_msg_size(m);
    *more = pb_zmq_msg_more(m);
    if (*len <= cap && *len > 0) memcpy(out, pb_zmq_msg_data(m), *len);
    return 0;
}

/* Receive one part and compare it with want/want_len and the more flag. */
static void expect_part(void *s, pb_zmq_msg *m, const void *want, size_t want_len,
                        int want_more) {
    CHECK_ERR(pb_zmq_msg_recv(m, s, 0), 0);
    CHECK(pb_zmq_msg_size(m) == want_len);
    CHECK(pb_zmq_msg_more(m) == want_more);
    if (pb_zmq_msg_size(m) == want_len && want_len > 0)
        CHECK(memcmp(pb_zmq_msg_data(m), want, want_len) == 0);
}

/* -- fill callbacks (pb_zmq_send_filled) ----------------------------------------------- */
typedef struct fill_arg {
    int calls;
    size_t last_len;
    unsigned char seed;
    int fail;              /* nonzero: write part of the buffer, then refuse */
    const uint8_t *frame;  /* when set: copy this frame (its length is len) */
} fill_arg;

static int fill_pattern(void *dst, size_t len, void *arg) {
    fill_arg *f = arg;
    f->calls++;
    f->last_len = len;
    unsigned char *d = dst;
    if (f->frame != NULL) {
        if (len) memcpy(d, f->frame, len);
        return 0;
    }
    size_t n = f->fail ? len / 2 : len;
    for (size_t i = 0; i < n; i++) d[i] = (unsigned char)(f->seed + i * 13u);
    return f->fail ? -1 : 0;
}

static int check_pattern(const void *data, size_t len, unsigned char seed) {
    const unsigned char *d = data;
    for (size_t i = 0; i < len; i++)
        if (d[i] != (unsigned char)(seed + i * 13u)) return 0;
    return 1;
}

/* -- before any libzmq is loaded ------------------------------------------------------- */
static void test_nothing_loaded(void) {
    CHECK(pb_zmq_loaded() == 0);
    CHECK(pb_zmq_load(NULL) == PB_ENOTFOUND);
    CHECK(strstr(pb_zmq_load_error(), "no libzmq") != NULL);
    CHECK(pb_zmq_load("/nonexistent/libzmq.so.5") == PB_ENOTFOUND);
    CHECK(strstr(pb_zmq_load_error(), "is not loaded") != NULL);
    /* a path longer than any the loader keeps */
    char *longpath = malloc(5000);
    CHECK(longpath != NULL);
    if (longpath != NULL) {
        memset(longpath, 'a', 4999);
        longpath[0] = '/';
        longpath[4999] = '\0';
        CHECK(pb_zmq_load(longpath) == PB_ENOTFOUND);
        CHECK(strstr(pb_zmq_load_error(), "too long") != NULL);
        free(longpath);
    }
    /* an object that is loaded but is not libzmq: the first missing symbol is named */
    CHECK(pb_zmq_load("libc.so.6") == PB_ENOTFOUND);
    CHECK(strstr(pb_zmq_load_error(), "does not export zmq_version") != NULL);
    CHECK(pb_zmq_loaded() == 0);
    CHECK(strcmp(pb_zmq_library_path(), "") == 0);
    int a = 1, b = 1, c = 1;
    pb_zmq_version(&a, &b, &c);
    CHECK(a == 0 && b == 0 && c == 0);
    CHECK(strlen(pb_zmq_strerror(EAGAIN)) > 0); /* the C library's text before a load */
    CHECK(strcmp(pb_strerror(PB_ENOTFOUND), "library or symbol not found") == 0);
}

/* Two different libzmq objects loaded: the search refuses to choose. Runs in a forked child
 * (the second copy cannot be unloaded, and the parent must stay unambiguous). The copy is
 * the same file under another name, which the dynamic loader maps as a distinct object. */
static void test_ambiguous(const char *path) {
    char dir[] = "/tmp/pb-test-zmq-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        printf("test_zmq: ambiguous-load check skipped: mkdtemp failed (%s)\n", strerror(errno));
        return;
    }
    char copy[sizeof dir + 32];
    snprintf(copy, sizeof copy, "%s/libzmq-copy.so.5", dir);
    int in = open(path, O_RDONLY), out = open(copy, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int copied = in >= 0 && out >= 0;
    char buf[65536];
    ssize_t n;
    while (copied && (n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n) copied = 0;
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    if (copied) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            int ok = dlopen(copy, RTLD_NOW | RTLD_LOCAL) != NULL &&
                     pb_zmq_load(NULL) == PB_ENOTFOUND &&
                     strstr(pb_zmq_load_error(), "ambiguous") != NULL && pb_zmq_loaded() == 0;
            if (!ok) fprintf(stderr, "child: load error \"%s\"\n", pb_zmq_load_error());
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    } else {
        printf("test_zmq: ambiguous-load check skipped: could not copy %s\n", path);
    }
    unlink(copy);
    rmdir(dir);
}

static void test_load(const char *path, void *h) {
    CHECK(SYM(h, "zmq_ctx_new", ctx_new) == 0 && SYM(h, "zmq_ctx_term", ctx_term) == 0 &&
          SYM(h, "zmq_ctx_shutdown", ctx_shutdown) == 0 &&
          SYM(h, "zmq_socket", socket_new) == 0 && SYM(h, "zmq_close", sock_close) == 0 &&
          SYM(h, "zmq_bind", sock_bind) == 0 && SYM(h, "zmq_connect", sock_connect) == 0 &&
          SYM(h, "zmq_setsockopt", sock_setopt) == 0);
    test_ambiguous(path);
    CHECK(pb_zmq_load(NULL) == PB_OK);
    CHECK(strcmp(pb_zmq_load_error(), "") == 0);
    CHECK(pb_zmq_loaded() == 1);
    CHECK(pb_zmq_load(NULL) == PB_OK);          /* idempotent */
    CHECK(pb_zmq_load("/nonexistent") == PB_OK); /* once loaded, the argument is moot */
    CHECK(strstr(pb_zmq_library_path(), "libzmq") != NULL);
    int major = 0, minor = 0, patch = 0;
    pb_zmq_version(&major, &minor, &patch);
    CHECK(major >= 4);
    printf("test_zmq: libzmq %d.%d.%d from %s\n", major, minor, patch, pb_zmq_library_path());
    /* libzmq's own texts now, including its private error numbers */
    CHECK(strstr(pb_zmq_strerror(PB_ZMQ_ETERM), "terminated") != NULL);
    CHECK(strlen(pb_zmq_strerror(PB_ZMQ_EFSM)) > 0);
    CHECK(strlen(pb_zmq_strerror(EAGAIN)) > 0);
}

/* -- message shapes --------------------------------------------------------------------- */

/* [topic][batch frame] over XPUB/SUB, sent as Batcher.drain_to does: the topic with
 * SNDMORE|DONTWAIT, then the frame written in place by the fill callback. */
static void test_pubsub(void *ctx) {
    void *pub = new_socket(ctx, ZMQ_XPUB_, 2000, 2000);
    void *sub = new_socket(ctx, ZMQ_SUB_, 2000, 2000);
    CHECK(sock_bind(pub, "inproc://pb-test-pubsub") == 0);
    CHECK(sock_connect(sub, "inproc://pb-test-pubsub") == 0);
    CHECK(sock_setopt(sub, ZMQ_SUBSCRIBE_, "topic.a", 7) == 0);
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    /* the subscription reaches the XPUB as a message: from then on nothing is dropped */
    expect_part(pub, &m, "\x01topic.a", 8, 0);

    /* a two-record batch frame built by the encoder */
    uint8_t frame[256];
    uint8_t *p = pb_frame_write_header(frame, 2, 0x1122334455667788ull, 41, 1000);
    p = pb_frame_write_record(p, "hello", 5, NULL, 0, 0, 1000, 1000);
    p = pb_frame_write_record(p, "\x81\xa1k\x01", 4, "\x80", 1, PB_FRAME_REC_MSGPACK, 1500,
                              1000);
    size_t flen = (size_t)(p - frame);
    fill_arg fa = {0};
    fa.frame = frame;
    for (int i = 0; i < 3; i++) {
        /* topic.b is not subscribed: the PUB side drops it, whole */
        const char *topic = i == 1 ? "topic.b" : "topic.a";
        CHECK_ERR(pb_zmq_send(pub, topic, 7, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT), 0);
        CHECK_ERR(pb_zmq_send_filled(pub, flen, fill_pattern, &fa, PB_ZMQ_DONTWAIT), 0);
    }
    CHECK(fa.calls == 3 && fa.last_len == flen);
    for (int i = 0; i < 2; i++) {
        expect_part(sub, &m, "topic.a", 7, 1);
        expect_part(sub, &m, frame, flen, 0);
        pb_frame_info info;
        pb_frame_error ferr;
        CHECK(pb_frame_validate(pb_zmq_msg_data(&m), pb_zmq_msg_size(&m), &info, &ferr) ==
              PB_OK);
        CHECK(info.count == 2 && info.first_seq == 41);
    }
    CHECK_ERR(pb_zmq_msg_recv(&m, sub, PB_ZMQ_DONTWAIT), EAGAIN); /* topic.b never came */

    /* a position frame (header only) and an empty frame (len 0: fill still called) */
    uint8_t pos[PB_FRAME_HEADER_SIZE];
    pb_frame_write_position(pos, 7, 99, 5);
    fa.frame = pos;
    CHECK_ERR(pb_zmq_send(pub, "topic.a", 7, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT), 0);
    CHECK_ERR(pb_zmq_send_filled(pub, sizeof pos, fill_pattern, &fa, PB_ZMQ_DONTWAIT), 0);
    fa.frame = NULL;
    fa.calls = 0;
    CHECK_ERR(pb_zmq_send(pub, "topic.a", 7, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT), 0);
    CHECK_ERR(pb_zmq_send_filled(pub, 0, fill_pattern, &fa, PB_ZMQ_DONTWAIT), 0);
    CHECK(fa.calls == 1 && fa.last_len == 0);
    expect_part(sub, &m, "topic.a", 7, 1);
    expect_part(sub, &m, pos, sizeof pos, 0);
    expect_part(sub, &m, "topic.a", 7, 1);
    expect_part(sub, &m, NULL, 0, 0);

    /* wrong direction: a SUB cannot send, a PUB-side receive of a non-XPUB cannot receive */
    CHECK_ERR(pb_zmq_send(sub, "x", 1, PB_ZMQ_DONTWAIT), ENOTSUP);
    void *plain_pub = new_socket(ctx, ZMQ_PUB_, 100, 100);
    CHECK_ERR(pb_zmq_msg_recv(&m, plain_pub, PB_ZMQ_DONTWAIT), ENOTSUP);
    sock_close(plain_pub);
    pb_zmq_msg_close(&m);
    sock_close(sub);
    sock_close(pub);
}

/* [identity][frame] over ROUTER/DEALER (the RPC path), with ROUTER_MANDATORY. */
static void test_router_dealer(void *ctx) {
    void *router = new_socket(ctx, ZMQ_ROUTER_, 2000, 2000);
    void *dealer = new_socket(ctx, ZMQ_DEALER_, 2000, 2000);
    setopt_int(router, ZMQ_ROUTER_MANDATORY_, 1);
    CHECK(sock_bind(router, "inproc://pb-test-zmq") == 0);
    CHECK(sock_connect(dealer, "inproc://pb-test-zmq") == 0);

    /* a frame assembled from three buffers (one of them empty) arrives as their concatenation */
    pb_zmq_buf bufs[3] = {{"head", 4}, {"", 0}, {"-body", 5}};
    CHECK_ERR(pb_zmq_send_concat(dealer, bufs, 3, PB_ZMQ_DONTWAIT), 0);
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    unsigned char ident[256], buf[256];
    size_t ident_len = 0, len = 0;
    int more = 0;
    CHECK_ERR(recv_part(router, &m, ident, sizeof ident, &ident_len, &more), 0);
    CHECK(more == 1 && ident_len > 0 && ident_len <= sizeof ident);
    CHECK_ERR(recv_part(router, &m, buf, sizeof buf, &len, &more), 0);
    CHECK(more == 0 && len == 9 && memcmp(buf, "head-body", 9) == 0);
    /* zero buffers: an empty frame */
    CHECK_ERR(pb_zmq_send_concat(dealer, NULL, 0, 0), 0);
    expect_part(router, &m, ident, ident_len, 1);
    expect_part(router, &m, NULL, 0, 0);

    /* reply: identity with SNDMORE, then a large frame (1 MiB), by concat and by fill */
    size_t big_len = (size_t)1 << 20;
    unsigned char *big = malloc(big_len);
    CHECK(big != NULL);
    if (big != NULL) {
        for (size_t i = 0; i < big_len; i++) big[i] = (unsigned char)(i * 31u + 7u);
        CHECK_ERR(pb_zmq_send(router, ident, ident_len, PB_ZMQ_SNDMORE), 0);
        pb_zmq_buf one_buf = {big, big_len};
        CHECK_ERR(pb_zmq_send_concat(router, &one_buf, 1, PB_ZMQ_DONTWAIT), 0);
        CHECK_ERR(pb_zmq_msg_recv(&m, dealer, 0), 0);
        CHECK(pb_zmq_msg_size(&m) == big_len && pb_zmq_msg_more(&m) == 0);
        CHECK(memcmp(pb_zmq_msg_data(&m), big, big_len) == 0);
        free(big);
    }
    fill_arg fa = {0};
    fa.seed = 3;
    pb_zmq_buf id_buf = {ident, ident_len};
    CHECK_ERR(pb_zmq_send_concat(router, &id_buf, 1, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT), 0);
    CHECK_ERR(pb_zmq_send_filled(router, big_len, fill_pattern, &fa, PB_ZMQ_DONTWAIT), 0);
    CHECK_ERR(pb_zmq_msg_recv(&m, dealer, 0), 0);
    CHECK(pb_zmq_msg_size(&m) == big_len && check_pattern(pb_zmq_msg_data(&m), big_len, 3));

    /* EHOSTUNREACH: an unknown identity, from each send function (the failed message is
     * released: LeakSanitizer would report it otherwise) */
    CHECK_ERR(pb_zmq_send(router, "\0nobody", 7, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT),
              EHOSTUNREACH);
    pb_zmq_buf nobody = {"\0nobody", 7};
    CHECK_ERR(pb_zmq_send_concat(router, &nobody, 1, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT),
              EHOSTUNREACH);
    fa.frame = (const uint8_t *)"\0nobody";
    CHECK_ERR(pb_zmq_send_filled(router, 7, fill_pattern, &fa, PB_ZMQ_SNDMORE), EHOSTUNREACH);
    fa.frame = NULL;

    /* EAGAIN: RCVTIMEO expiring, and DONTWAIT with nothing queued */
    setopt_int(dealer, ZMQ_RCVTIMEO_, 50);
    double t0 = now_s();
    CHECK_ERR(pb_zmq_msg_recv(&m, dealer, 0), EAGAIN);
    CHECK(now_s() - t0 >= 0.03);
    CHECK_ERR(pb_zmq_msg_recv(&m, dealer, PB_ZMQ_DONTWAIT), EAGAIN);
    CHECK_ERR(pb_zmq_msg_recv(&m, router, PB_ZMQ_DONTWAIT), EAGAIN);
    pb_zmq_msg_close(&m);

    sock_close(dealer);
    sock_close(router);
}

/* REQ/REP (the socket adds and strips its envelope) and EFSM out of turn. */
static void test_req_rep(void *ctx) {
    void *rep = new_socket(ctx, ZMQ_REP_, 2000, 2000);
    void *req = new_socket(ctx, ZMQ_REQ_, 2000, 2000);
    CHECK(sock_bind(rep, "inproc://pb-test-reqrep") == 0);
    CHECK(sock_connect(req, "inproc://pb-test-reqrep") == 0);
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    CHECK_ERR(pb_zmq_msg_recv(&m, req, PB_ZMQ_DONTWAIT), PB_ZMQ_EFSM); /* receive first */
    CHECK_ERR(pb_zmq_send(rep, "x", 1, PB_ZMQ_DONTWAIT), PB_ZMQ_EFSM); /* reply first */
    pb_zmq_buf parts[2] = {{"ping", 4}, {"-1", 2}};
    CHECK_ERR(pb_zmq_send_concat(req, parts, 2, 0), 0);
    CHECK_ERR(pb_zmq_send(req, "again", 5, PB_ZMQ_DONTWAIT), PB_ZMQ_EFSM);
    fill_arg fa = {0};
    CHECK_ERR(pb_zmq_send_filled(req, 8, fill_pattern, &fa, PB_ZMQ_DONTWAIT), PB_ZMQ_EFSM);
    CHECK(fa.calls == 1); /* filled, refused by the socket, released */
    expect_part(rep, &m, "ping-1", 6, 0);
    fa.seed = 9;
    CHECK_ERR(pb_zmq_send_filled(rep, 100, fill_pattern, &fa, 0), 0);
    CHECK_ERR(pb_zmq_msg_recv(&m, req, 0), 0);
    CHECK(pb_zmq_msg_size(&m) == 100 && check_pattern(pb_zmq_msg_data(&m), 100, 9));
    pb_zmq_msg_close(&m);
    sock_close(req);
    sock_close(rep);
}

/* Multi-part messages over PAIR: parts keep their order and boundaries, empty parts
 * included; a failing fill sends nothing. */
static void test_pair_multipart(void *ctx) {
    void *a = new_socket(ctx, ZMQ_PAIR_, 2000, 2000);
    void *b = new_socket(ctx, ZMQ_PAIR_, 2000, 2000);
    CHECK(sock_bind(a, "inproc://pb-test-pair") == 0);
    CHECK(sock_connect(b, "inproc://pb-test-pair") == 0);
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);

    fill_arg fa = {0};
    fa.seed = 1;
    CHECK_ERR(pb_zmq_send(a, "one", 3, PB_ZMQ_SNDMORE), 0);
    CHECK_ERR(pb_zmq_send(a, NULL, 0, PB_ZMQ_SNDMORE), 0);
    pb_zmq_buf two[2] = {{"tw", 2}, {"o", 1}};
    CHECK_ERR(pb_zmq_send_concat(a, two, 2, PB_ZMQ_SNDMORE), 0);
    CHECK_ERR(pb_zmq_send_filled(a, 50, fill_pattern, &fa, 0), 0);
    expect_part(b, &m, "one", 3, 1);
    expect_part(b, &m, NULL, 0, 1);
    expect_part(b, &m, "two", 3, 1);
    CHECK_ERR(pb_zmq_msg_recv(&m, b, 0), 0);
    CHECK(pb_zmq_msg_size(&m) == 50 && pb_zmq_msg_more(&m) == 0 &&
          check_pattern(pb_zmq_msg_data(&m), 50, 1));

    /* a fill that fails: EINVAL, nothing sent, the message released */
    fa.fail = 1;
    fa.calls = 0;
    CHECK_ERR(pb_zmq_send_filled(a, 64, fill_pattern, &fa, PB_ZMQ_DONTWAIT), EINVAL);
    CHECK(fa.calls == 1);
    fa.fail = 0;
    CHECK_ERR(pb_zmq_msg_recv(&m, b, PB_ZMQ_DONTWAIT), EAGAIN);
    CHECK_ERR(pb_zmq_send(a, "after", 5, 0), 0);
    expect_part(b, &m, "after", 5, 0);
    /* ... also after an earlier part went with SNDMORE: the socket stays in the middle of
     * that message, so the next frame sent becomes its next part (a caller that gives up on
     * a message after a failed fill must know this) */
    CHECK_ERR(pb_zmq_send(a, "topic", 5, PB_ZMQ_SNDMORE), 0);
    fa.fail = 1;
    CHECK_ERR(pb_zmq_send_filled(a, 16, fill_pattern, &fa, 0), EINVAL);
    fa.fail = 0;
    CHECK_ERR(pb_zmq_send(a, "tail", 4, 0), 0);
    expect_part(b, &m, "topic", 5, 1);
    expect_part(b, &m, "tail", 4, 0);

    /* one msg reused for many receives, then closed and initialised again */
    for (int i = 0; i < 100; i++) {
        unsigned char v = (unsigned char)i;
        CHECK_ERR(pb_zmq_send(b, &v, 1, PB_ZMQ_DONTWAIT), 0);
    }
    for (int i = 0; i < 100; i++) {
        unsigned char v = (unsigned char)i;
        expect_part(a, &m, &v, 1, 0);
    }
    pb_zmq_msg_close(&m);
    pb_zmq_msg_init(&m);
    CHECK(pb_zmq_msg_size(&m) == 0 && pb_zmq_msg_more(&m) == 0);
    pb_zmq_msg_close(&m);
    sock_close(b);
    sock_close(a);
}

/* EAGAIN from each send function when the message cannot be queued (a DEALER with no peer),
 * and ENOTSOCK for a NULL socket (libzmq checks it; no other invalid pointer is defined). */
static void test_send_errors(void *ctx) {
    void *lonely = new_socket(ctx, ZMQ_DEALER_, 100, 100);
    fill_arg fa = {0};
    pb_zmq_buf buf = {"x", 1};
    CHECK_ERR(pb_zmq_send(lonely, "x", 1, PB_ZMQ_DONTWAIT), EAGAIN);
    CHECK_ERR(pb_zmq_send_concat(lonely, &buf, 1, PB_ZMQ_DONTWAIT), EAGAIN);
    CHECK_ERR(pb_zmq_send_filled(lonely, 10, fill_pattern, &fa, PB_ZMQ_DONTWAIT), EAGAIN);
    CHECK(fa.calls == 1);
    double t0 = now_s();
    CHECK_ERR(pb_zmq_send(lonely, "x", 1, 0), EAGAIN); /* SNDTIMEO expiring */
    CHECK(now_s() - t0 >= 0.05);

    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    CHECK_ERR(pb_zmq_send(NULL, "x", 1, 0), ENOTSOCK);
    CHECK_ERR(pb_zmq_send_concat(NULL, &buf, 1, 0), ENOTSOCK);
    CHECK_ERR(pb_zmq_send_filled(NULL, 10, fill_pattern, &fa, 0), ENOTSOCK);
    CHECK_ERR(pb_zmq_msg_recv(&m, NULL, 0), ENOTSOCK);
    CHECK_ERR(pb_zmq_msg_recv(&m, NULL, PB_ZMQ_DONTWAIT), ENOTSOCK);
    pb_zmq_msg_close(&m);

    /* ENOMEM: a frame that cannot be allocated; fill is not called. Under ASan this needs
     * allocator_may_return_null=1 (CMake adds it to the test's ASAN_OPTIONS), else ASan
     * reports the huge request as an error instead of returning NULL. */
    int may_null = 1;
#ifdef PB_TEST_ASAN
    const char *opts = getenv("ASAN_OPTIONS");
    may_null = opts != NULL && strstr(opts, "allocator_may_return_null=1") != NULL;
#endif
    if (may_null) {
        size_t huge = (size_t)1 << 62;
        fa.calls = 0;
        CHECK_ERR(pb_zmq_send_filled(lonely, huge, fill_pattern, &fa, PB_ZMQ_DONTWAIT), ENOMEM);
        CHECK(fa.calls == 0);
        /* (pb_zmq_send_concat fails the same way before it reads a buffer) */
        pb_zmq_buf huge_buf = {"x", huge};
        CHECK_ERR(pb_zmq_send_concat(lonely, &huge_buf, 1, PB_ZMQ_DONTWAIT), ENOMEM);
    } else {
        printf("test_zmq: ENOMEM checks skipped: ASAN_OPTIONS lacks allocator_may_return_null=1\n");
    }
    sock_close(lonely);
}

/* ETERM: a context shut down fails every call on its sockets, and wakes a blocked receive. */
typedef struct blocked_recv {
    void *s;
    int err;
} blocked_recv;

static void *blocked_recv_main(void *arg) {
    blocked_recv *b = arg;
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    b->err = pb_zmq_msg_recv(&m, b->s, 0);
    pb_zmq_msg_close(&m);
    return NULL;
}

static void test_eterm(void) {
    void *ctx = ctx_new();
    void *s = new_socket(ctx, ZMQ_PAIR_, -1, -1);
    void *peer = new_socket(ctx, ZMQ_PAIR_, -1, -1);
    CHECK(sock_bind(s, "inproc://pb-test-eterm") == 0);
    CHECK(sock_connect(peer, "inproc://pb-test-eterm") == 0);
    blocked_recv b = {s, -1};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_recv_main, &b) == 0);
    sleep_ms(50); /* most likely blocked by now; ETERM either way */
    CHECK(ctx_shutdown(ctx) == 0);
    pthread_join(t, NULL);
    CHECK_ERR(b.err, PB_ZMQ_ETERM);
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    fill_arg fa = {0};
    pb_zmq_buf buf = {"x", 1};
    CHECK_ERR(pb_zmq_send(peer, "x", 1, 0), PB_ZMQ_ETERM);
    CHECK_ERR(pb_zmq_send_concat(peer, &buf, 1, PB_ZMQ_DONTWAIT), PB_ZMQ_ETERM);
    CHECK_ERR(pb_zmq_send_filled(peer, 4, fill_pattern, &fa, PB_ZMQ_DONTWAIT), PB_ZMQ_ETERM);
    CHECK_ERR(pb_zmq_msg_recv(&m, peer, PB_ZMQ_DONTWAIT), PB_ZMQ_ETERM);
    CHECK_ERR(pb_zmq_msg_recv(&m, s, 0), PB_ZMQ_ETERM);
    pb_zmq_msg_close(&m);
    sock_close(peer);
    sock_close(s);
    CHECK(ctx_term(ctx) == 0);
}

/* EINTR: a signal whose handler was installed without SA_RESTART interrupts a blocking
 * receive (and send) that has a timeout. A helper thread signals the waiting thread every
 * 10 ms until the call returns, so one signal lands while it waits however the threads are
 * scheduled; the timeout bounds the wait if libzmq never reports EINTR. */
static volatile sig_atomic_t signals_caught;
static void on_sigusr1(int sig) {
    (void)sig;
    signals_caught++;
}

typedef struct signaller {
    pthread_t target;
    volatile int done;
    int sent;
} signaller;

static void *signaller_main(void *arg) {
    signaller *s = arg;
    while (!__atomic_load_n(&s->done, __ATOMIC_ACQUIRE) && s->sent < 500) {
        sleep_ms(10);
        if (__atomic_load_n(&s->done, __ATOMIC_ACQUIRE)) break;
        pthread_kill(s->target, SIGUSR1);
        s->sent++;
    }
    return NULL;
}

static int with_signals(int (*call)(void *), void *arg) {
    signaller sg = {pthread_self(), 0, 0};
    pthread_t t;
    if (pthread_create(&t, NULL, signaller_main, &sg) != 0) return -1;
    int err = call(arg);
    __atomic_store_n(&sg.done, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    return err;
}

typedef struct eintr_call {
    void *s;
    pb_zmq_msg *m;
} eintr_call;

static int eintr_recv(void *arg) {
    eintr_call *c = arg;
    return pb_zmq_msg_recv(c->m, c->s, 0);
}
static int eintr_send(void *arg) {
    eintr_call *c = arg;
    return pb_zmq_send(c->s, "x", 1, 0);
}
static int eintr_send_filled(void *arg) {
    eintr_call *c = arg;
    fill_arg fa = {0};
    return pb_zmq_send_filled(c->s, 32, fill_pattern, &fa, 0);
}

static void test_eintr(void *ctx) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART */
    if (sigaction(SIGUSR1, &sa, &old) != 0) {
        printf("test_zmq: EINTR checks skipped: sigaction failed (%s)\n", strerror(errno));
        return;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    void *lonely = new_socket(ctx, ZMQ_DEALER_, 3000, 3000); /* no peer: nothing arrives */
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    eintr_call c = {lonely, &m};
    double t0 = now_s();
    signals_caught = 0;
    CHECK_ERR(with_signals(eintr_recv, &c), EINTR);
    CHECK(signals_caught >= 1);
    CHECK_ERR(with_signals(eintr_send, &c), EINTR);
    CHECK_ERR(with_signals(eintr_send_filled, &c), EINTR); /* released: LSan checks */
    CHECK(now_s() - t0 < 2.0);
    /* the socket works on afterwards */
    CHECK_ERR(pb_zmq_msg_recv(&m, lonely, PB_ZMQ_DONTWAIT), EAGAIN);
    pb_zmq_msg_close(&m);
    sock_close(lonely);
    sigaction(SIGUSR1, &old, NULL);
}

static void test_round_trip(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL); /* what importing pyzmq does */
    if (h == NULL) fprintf(stderr, "test_zmq: dlopen(%s): %s\n", path, dlerror());
    CHECK(h != NULL);
    if (h == NULL) return;
    test_load(path, h);
    if (!pb_zmq_loaded() || sock_setopt == NULL) return;
    void *ctx = ctx_new();
    CHECK(ctx != NULL);
    test_pubsub(ctx);
    test_router_dealer(ctx);
    test_req_rep(ctx);
    test_pair_multipart(ctx);
    test_send_errors(ctx);
    test_eintr(ctx);
    CHECK(ctx_term(ctx) == 0);
    test_eterm();
    /* the handle stays open: pb_zmq keeps its own reference to the library */
}

int main(void) {
    test_nothing_loaded();
    const char *path = getenv("PB_TEST_LIBZMQ");
    int skipped = 0;
    if (path != NULL && path[0] != '\0') {
        test_round_trip(path);
    } else {
        printf("test_zmq: PB_TEST_LIBZMQ not set; round-trip tests skipped\n");
        skipped = 1;
    }
    if (failures) {
        fprintf(stderr, "test_zmq: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_zmq: ok\n");
    return skipped ? 77 : 0;
}
