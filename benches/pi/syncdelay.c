/*
 * The Pi-class profile's SD-card stand-in (`just bench --pi`, benches/bench/pi.rs): preloaded
 * into the box under test and into the raw-append limit, it adds HALLRELAY_SYNC_DELAY_US
 * microseconds to every fsync, fdatasync, syncfs and sync_file_range(SYNC_FILE_RANGE_WAIT_AFTER)
 * after the real call returns.
 *
 * Why a preload and not device-mapper's delay target: the development VM's kernel has no
 * device-mapper (no dm-delay, no modules), and the store must not grow a test-only delay.
 * The delay is a sleep, not CPU: the card's time is I/O wait, as on a Pi. Only the sync is
 * slowed, not the write bandwidth (an SD card writes 10-40 MB/s; docs/performance.md).
 *
 * Built by the bench with: cc -O2 -shared -fPIC -o syncdelay.so syncdelay.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_us = 0;

__attribute__((constructor)) static void init(void) {
    const char *v = getenv("HALLRELAY_SYNC_DELAY_US");
    if (v != NULL) {
        delay_us = strtol(v, NULL, 10);
    }
}

static void delay(void) {
    if (delay_us <= 0) {
        return;
    }
    int saved = errno;
    struct timespec t = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
    errno = saved;
}

#define NEXT(name) static __typeof__(name) *real; if (!real) real = (__typeof__(name) *) dlsym(RTLD_NEXT, #name)

int fsync(int fd) {
    NEXT(fsync);
    int r = real(fd);
    delay();
    return r;
}

int fdatasync(int fd) {
    NEXT(fdatasync);
    int r = real(fd);
    delay();
    return r;
}

int syncfs(int fd) {
    NEXT(syncfs);
    int r = real(fd);
    delay();
    return r;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    NEXT(sync_file_range);
    int r = real(fd, offset, nbytes, flags);
    if (flags & SYNC_FILE_RANGE_WAIT_AFTER) {
        delay();
    }
    return r;
}
