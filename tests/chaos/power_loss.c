/* Power loss for one process: an LD_PRELOAD library that keeps whatever the
 * server writes to its incremental AOF files in memory until it calls
 * fsync/fdatasync on them, as the kernel's page cache does. SIGKILL then
 * loses exactly what a power cut would: written, acknowledged perhaps, not
 * yet on disk. (The real page cache survives a killed process, which is why
 * a plain SIGKILL cannot show the `appendfsync everysec` window.)
 *
 * Only files whose name contains ".incr.aof" are held; a close writes what
 * is held (Valkey closes an AOF only after switching to a new one). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 65536

struct held {
    int tracked;
    char *buf;
    size_t len, cap;
};

static struct held files[MAX_FDS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);
static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);

static void init(void) {
    if (real_write) return;
    real_write = dlsym(RTLD_NEXT, "write");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_close = dlsym(RTLD_NEXT, "close");
    real_open = dlsym(RTLD_NEXT, "open");
    real_openat = dlsym(RTLD_NEXT, "openat");
}

static int track(int fd, const char *path) {
    if (fd >= 0 && fd < MAX_FDS && path && strstr(path, ".incr.aof")) {
        pthread_mutex_lock(&lock);
        files[fd].tracked = 1;
        files[fd].len = 0;
        pthread_mutex_unlock(&lock);
    }
    return fd;
}

/* Writes what is held for fd to the file; called with the lock held. */
static int flush_held(int fd) {
    struct held *h = &files[fd];
    size_t done = 0;
    while (done < h->len) {
        ssize_t n = real_write(fd, h->buf + done, h->len - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (size_t)n;
    }
    h->len = 0;
    return 0;
}

int open(const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return track(real_open(path, flags, mode), path);
}

int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return track(real_openat(dirfd, path, flags, mode), path);
}

int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

ssize_t write(int fd, const void *buf, size_t count) {
    init();
    if (fd < 0 || fd >= MAX_FDS || !files[fd].tracked) return real_write(fd, buf, count);
    pthread_mutex_lock(&lock);
    struct held *h = &files[fd];
    if (h->len + count > h->cap) {
        size_t cap = h->cap ? h->cap : 1 << 16;
        while (cap < h->len + count) cap *= 2;
        char *grown = realloc(h->buf, cap);
        if (!grown) {
            pthread_mutex_unlock(&lock);
            errno = ENOMEM;
            return -1;
        }
        h->buf = grown;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, buf, count);
    h->len += count;
    pthread_mutex_unlock(&lock);
    return (ssize_t)count;
}

static int sync_with(int fd, int (*real)(int)) {
    if (fd >= 0 && fd < MAX_FDS && files[fd].tracked) {
        pthread_mutex_lock(&lock);
        int failed = flush_held(fd);
        pthread_mutex_unlock(&lock);
        if (failed) return -1;
    }
    return real(fd);
}

int fsync(int fd) {
    init();
    return sync_with(fd, real_fsync);
}

int fdatasync(int fd) {
    init();
    return sync_with(fd, real_fdatasync);
}

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAX_FDS && files[fd].tracked) {
        pthread_mutex_lock(&lock);
        flush_held(fd);
        files[fd].tracked = 0;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}
