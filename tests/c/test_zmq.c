/* test_zmq.c - C unit tests of pb_zmq (finding and driving an already-loaded libzmq).
 *
 * Without PB_TEST_LIBZMQ only the "nothing loaded" behaviour is checked. With
 * PB_TEST_LIBZMQ=/path/to/libzmq.so.5 (e.g. pyzmq's bundled copy; CMake passes
 * -DPYBUS_TEST_LIBZMQ=...) the test loads that library itself, as pyzmq would, then checks that
 * pb_zmq_load finds it and runs frames through a DEALER/ROUTER pair over inproc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb_zmq.h"

static int failures = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* The libzmq calls the test needs to set sockets up (pb_zmq only does I/O). */
static void *(*ctx_new)(void);
static int (*ctx_term)(void *);
static void *(*socket_new)(void *, int);
static int (*sock_close)(void *);
static int (*sock_bind)(void *, const char *);
static int (*sock_connect)(void *, const char *);
static int (*sock_setopt)(void *, int, const void *, size_t);

#define ZMQ_DEALER_ 5
#define ZMQ_ROUTER_ 6
#define ZMQ_LINGER_ 17
#define ZMQ_RCVTIMEO_ 27
#define ZMQ_ROUTER_MANDATORY_ 33

static int sym(void *h, const char *name, void *fnptr, size_t size) {
    void *p = dlsym(h, name);
    if (p == NULL) return -1;
    memcpy(fnptr, &p, size);
    return 0;
}
#define SYM(h, name, var) sym((h), (name), &(var), sizeof(var))

static void test_nothing_loaded(void) {
    CHECK(pb_zmq_loaded() == 0);
    CHECK(pb_zmq_load(NULL) == PB_ENOTFOUND);
    CHECK(strstr(pb_zmq_load_error(), "no libzmq") != NULL);
    CHECK(pb_zmq_load("/nonexistent/libzmq.so.5") == PB_ENOTFOUND);
    CHECK(strstr(pb_zmq_load_error(), "is not loaded") != NULL);
    CHECK(pb_zmq_loaded() == 0);
    CHECK(strcmp(pb_zmq_library_path(), "") == 0);
    int a = 1, b = 1, c = 1;
    pb_zmq_version(&a, &b, &c);
    CHECK(a == 0 && b == 0 && c == 0);
    CHECK(strlen(pb_zmq_strerror(EAGAIN)) > 0);
    CHECK(strcmp(pb_strerror(PB_ENOTFOUND), "library or symbol not found") == 0);
}

static int recv_one(void *s, pb_zmq_msg *m, unsigned char *out, size_t cap, size_t *len,
                    int *more) {
    int err = pb_zmq_msg_recv(m, s, 0);
    if (err) return err;
    *len = pb_zmq_msg_size(m);
    *more = pb_zmq_msg_more(m);
    if (*len <= cap) memcpy(out, pb_zmq_msg_data(m), *len);
    return 0;
}

static void test_round_trip(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);  /* what importing pyzmq does */
    CHECK(h != NULL);
    if (h == NULL) return;
    CHECK(SYM(h, "zmq_ctx_new", ctx_new) == 0 && SYM(h, "zmq_ctx_term", ctx_term) == 0 &&
          SYM(h, "zmq_socket", socket_new) == 0 && SYM(h, "zmq_close", sock_close) == 0 &&
          SYM(h, "zmq_bind", sock_bind) == 0 && SYM(h, "zmq_connect", sock_connect) == 0 &&
          SYM(h, "zmq_setsockopt", sock_setopt) == 0);

    CHECK(pb_zmq_load(NULL) == PB_OK);
    CHECK(pb_zmq_loaded() == 1);
    CHECK(pb_zmq_load(NULL) == PB_OK); /* idempotent */
    CHECK(strstr(pb_zmq_library_path(), "libzmq") != NULL);
    int major = 0, minor = 0, patch = 0;
    pb_zmq_version(&major, &minor, &patch);
    CHECK(major >= 4);

    void *ctx = ctx_new();
    void *router = socket_new(ctx, ZMQ_ROUTER_);
    void *dealer = socket_new(ctx, ZMQ_DEALER_);
    int zero = 0, one = 1, timeout_ms = 2000;
    sock_setopt(router, ZMQ_LINGER_, &zero, sizeof zero);
    sock_setopt(dealer, ZMQ_LINGER_, &zero, sizeof zero);
    sock_setopt(router, ZMQ_ROUTER_MANDATORY_, &one, sizeof one);
    sock_setopt(router, ZMQ_RCVTIMEO_, &timeout_ms, sizeof timeout_ms);
    sock_setopt(dealer, ZMQ_RCVTIMEO_, &timeout_ms, sizeof timeout_ms);
    CHECK(sock_bind(router, "inproc://pb-test-zmq") == 0);
    CHECK(sock_connect(dealer, "inproc://pb-test-zmq") == 0);

    /* a frame assembled from three buffers (one of them empty) arrives as their concatenation */
    pb_zmq_buf bufs[3] = {{"head", 4}, {"", 0}, {"-body", 5}};
    CHECK(pb_zmq_send_concat(dealer, bufs, 3, 0) == 0);
    pb_zmq_msg m;
    pb_zmq_msg_init(&m);
    unsigned char ident[256], buf[256];
    size_t ident_len = 0, len = 0;
    int more = 0;
    CHECK(recv_one(router, &m, ident, sizeof ident, &ident_len, &more) == 0);
    CHECK(more == 1 && ident_len > 0 && ident_len <= sizeof ident);
    CHECK(recv_one(router, &m, buf, sizeof buf, &len, &more) == 0);
    CHECK(more == 0 && len == 9 && memcmp(buf, "head-body", 9) == 0);

    /* reply: identity with SNDMORE, then a large frame (1 MiB) */
    size_t big_len = (size_t)1 << 20;
    unsigned char *big = malloc(big_len);
    CHECK(big != NULL);
    if (big != NULL) {
        for (size_t i = 0; i < big_len; i++) big[i] = (unsigned char)(i * 31u + 7u);
        CHECK(pb_zmq_send(router, ident, ident_len, PB_ZMQ_SNDMORE) == 0);
        pb_zmq_buf one_buf = {big, big_len};
        CHECK(pb_zmq_send_concat(router, &one_buf, 1, PB_ZMQ_DONTWAIT) == 0);
        CHECK(pb_zmq_msg_recv(&m, dealer, 0) == 0);
        CHECK(pb_zmq_msg_size(&m) == big_len);
        CHECK(memcmp(pb_zmq_msg_data(&m), big, big_len) == 0);
        free(big);
    }

    /* errors come back as ZeroMQ errno values */
    CHECK(pb_zmq_send(router, "\0nobody", 7, PB_ZMQ_SNDMORE | PB_ZMQ_DONTWAIT) == EHOSTUNREACH);
    int short_ms = 50;
    sock_setopt(dealer, ZMQ_RCVTIMEO_, &short_ms, sizeof short_ms);
    CHECK(pb_zmq_msg_recv(&m, dealer, 0) == EAGAIN);
    CHECK(pb_zmq_msg_recv(&m, dealer, PB_ZMQ_DONTWAIT) == EAGAIN);
    pb_zmq_msg_close(&m);

    sock_close(dealer);
    sock_close(router);
    CHECK(ctx_term(ctx) == 0);
    /* the handle stays open: pb_zmq keeps its own reference to the library */
}

int main(void) {
    test_nothing_loaded();
    const char *path = getenv("PB_TEST_LIBZMQ");
    if (path != NULL && path[0] != '\0') {
        test_round_trip(path);
    } else {
        printf("test_zmq: PB_TEST_LIBZMQ not set; round-trip tests skipped\n");
    }
    if (failures) {
        fprintf(stderr, "test_zmq: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_zmq: ok\n");
    return 0;
}
