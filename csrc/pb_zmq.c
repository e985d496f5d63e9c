/* pb_zmq.c - resolve and call the libzmq that pyzmq loaded (see pb_zmq.h). */
#define _GNU_SOURCE
#include "pb_zmq.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

#include "pb_glibc.h"
PB_PIN(dlopen);
PB_PIN(dlsym);
PB_PIN(dlclose);
PB_PIN(dlerror);

/* The libzmq prototypes used, declared here rather than through zmq.h (not vendored, and the
 * library is found at run time). Stable ABI since libzmq 3.2; zmq_msg_t is 64 bytes. */
typedef pb_zmq_msg zmq_msg_t_;
typedef void (*fn_version)(int *, int *, int *);
typedef int (*fn_errno)(void);
typedef const char *(*fn_strerror)(int);
typedef int (*fn_send)(void *, const void *, size_t, int);
typedef int (*fn_msg_init)(zmq_msg_t_ *);
typedef int (*fn_msg_init_size)(zmq_msg_t_ *, size_t);
typedef int (*fn_msg_io)(zmq_msg_t_ *, void *, int);
typedef void *(*fn_msg_data)(zmq_msg_t_ *);
typedef size_t (*fn_msg_size)(const zmq_msg_t_ *);
typedef int (*fn_msg_more)(const zmq_msg_t_ *);
typedef int (*fn_msg_close)(zmq_msg_t_ *);

static struct {
    fn_version version;
    fn_errno errno_;
    fn_strerror strerror_;
    fn_send send;
    fn_msg_init msg_init;
    fn_msg_init_size msg_init_size;
    fn_msg_io msg_recv;
    fn_msg_io msg_send;
    fn_msg_data msg_data;
    fn_msg_size msg_size;
    fn_msg_more msg_more;
    fn_msg_close msg_close;
} z;

static int loaded;
static char lib_path[4096];
static char load_error[512];

/* -- finding the library ---------------------------------------------------------------- */
typedef struct {
    char path[4096];
    int matches;   /* distinct objects named libzmq* */
    int too_long;
} search_state;

static int starts_with_libzmq(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, "libzmq", 6) == 0;
}

static int on_object(struct dl_phdr_info *info, size_t size, void *data) {
    search_state *st = data;
    (void)size;
    if (info->dlpi_name == NULL || info->dlpi_name[0] == '\0') return 0;
    if (!starts_with_libzmq(info->dlpi_name)) return 0;
    if (st->matches > 0 && strcmp(st->path, info->dlpi_name) == 0) return 0;
    st->matches++;
    if (strlen(info->dlpi_name) >= sizeof st->path) {
        st->too_long = 1;
        return 0;
    }
    strcpy(st->path, info->dlpi_name);
    return 0;
}

/* dlsym into a function pointer without the object-to-function pointer cast ISO C forbids. */
static int resolve(void *handle, const char *name, void *fnptr, size_t fnsize) {
    void *p = dlsym(handle, name);
    if (p == NULL) {
        snprintf(load_error, sizeof load_error, "%s does not export %s", lib_path, name);
        return PB_ENOTFOUND;
    }
    memcpy(fnptr, &p, fnsize);
    return PB_OK;
}

#define RESOLVE(h, name, field) resolve((h), (name), &z.field, sizeof z.field)

int pb_zmq_load(const char *path) {
    if (loaded) return PB_OK;
    load_error[0] = '\0';
    search_state st; /* function scope: path may point into it below */
    if (path == NULL) {
        memset(&st, 0, sizeof st);
        dl_iterate_phdr(on_object, &st);
        if (st.matches == 0) {
            snprintf(load_error, sizeof load_error,
                     "no libzmq is loaded in this process (import zmq first)");
            return PB_ENOTFOUND;
        }
        if (st.matches > 1) {
            snprintf(load_error, sizeof load_error,
                     "%d different libzmq objects are loaded; which one pyzmq uses is ambiguous",
                     st.matches);
            return PB_ENOTFOUND;
        }
        if (st.too_long) {
            snprintf(load_error, sizeof load_error, "the libzmq path is too long");
            return PB_ENOTFOUND;
        }
        path = st.path;
    }
    if (strlen(path) >= sizeof lib_path) {
        snprintf(load_error, sizeof load_error, "the library path is too long");
        return PB_ENOTFOUND;
    }
    strcpy(lib_path, path);
    /* RTLD_NOLOAD: only a library that is already mapped (pyzmq's copy) is ever used. The
     * handle is kept for the life of the process, so the library cannot be unmapped. */
    void *h = dlopen(lib_path, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error, "%s is not loaded (%s)", lib_path,
                 why ? why : "dlopen failed");
        lib_path[0] = '\0';
        return PB_ENOTFOUND;
    }
    if (RESOLVE(h, "zmq_version", version) || RESOLVE(h, "zmq_errno", errno_) ||
        RESOLVE(h, "zmq_strerror", strerror_) || RESOLVE(h, "zmq_send", send) ||
        RESOLVE(h, "zmq_msg_init", msg_init) || RESOLVE(h, "zmq_msg_init_size", msg_init_size) ||
        RESOLVE(h, "zmq_msg_recv", msg_recv) || RESOLVE(h, "zmq_msg_send", msg_send) ||
        RESOLVE(h, "zmq_msg_data", msg_data) || RESOLVE(h, "zmq_msg_size", msg_size) ||
        RESOLVE(h, "zmq_msg_more", msg_more) || RESOLVE(h, "zmq_msg_close", msg_close)) {
        dlclose(h);
        memset(&z, 0, sizeof z);
        lib_path[0] = '\0';
        return PB_ENOTFOUND;
    }
    loaded = 1;
    return PB_OK;
}

int pb_zmq_loaded(void) { return loaded; }

const char *pb_zmq_load_error(void) { return load_error; }

const char *pb_zmq_library_path(void) { return lib_path; }

void pb_zmq_version(int *major, int *minor, int *patch) {
    *major = *minor = *patch = 0;
    if (loaded) z.version(major, minor, patch);
}

const char *pb_zmq_strerror(int errnum) {
    return loaded ? z.strerror_(errnum) : strerror(errnum);
}

/* -- I/O ------------------------------------------------------------------------------- */
int pb_zmq_send(void *socket, const void *data, size_t len, int flags) {
    return PB_LIKELY(z.send(socket, data, len, flags) >= 0) ? 0 : z.errno_();
}

int pb_zmq_send_concat(void *socket, const pb_zmq_buf *bufs, size_t n, int flags) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += bufs[i].len;
    pb_zmq_msg msg;
    if (PB_UNLIKELY(z.msg_init_size(&msg, total) != 0)) return z.errno_();
    unsigned char *dst = z.msg_data(&msg);
    for (size_t i = 0; i < n; i++) {
        if (bufs[i].len) memcpy(dst, bufs[i].data, bufs[i].len);
        dst += bufs[i].len;
    }
    if (PB_LIKELY(z.msg_send(&msg, socket, flags) >= 0)) return 0;  /* libzmq owns it now */
    int err = z.errno_();
    z.msg_close(&msg);
    return err;
}

int pb_zmq_send_filled(void *socket, size_t len, int (*fill)(void *dst, size_t len, void *arg),
                       void *arg, int flags) {
    pb_zmq_msg msg;
    if (PB_UNLIKELY(z.msg_init_size(&msg, len) != 0)) return z.errno_();
    if (PB_UNLIKELY(fill(z.msg_data(&msg), len, arg) != 0)) {
        z.msg_close(&msg);
        return EINVAL;
    }
    if (PB_LIKELY(z.msg_send(&msg, socket, flags) >= 0)) return 0; /* libzmq owns it now */
    int err = z.errno_();
    z.msg_close(&msg);
    return err;
}

void pb_zmq_msg_init(pb_zmq_msg *msg) { z.msg_init(msg); }

int pb_zmq_msg_recv(pb_zmq_msg *msg, void *socket, int flags) {
    return PB_LIKELY(z.msg_recv(msg, socket, flags) >= 0) ? 0 : z.errno_();
}

const void *pb_zmq_msg_data(pb_zmq_msg *msg) { return z.msg_data(msg); }

size_t pb_zmq_msg_size(const pb_zmq_msg *msg) { return z.msg_size(msg); }

int pb_zmq_msg_more(const pb_zmq_msg *msg) { return z.msg_more(msg); }

void pb_zmq_msg_close(pb_zmq_msg *msg) { z.msg_close(msg); }
