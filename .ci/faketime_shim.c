/* Companion to libfaketime for running the test suite with the clock moved.
 *
 * With a faked monotonic clock, libfaketime does not wrap sem_clockwait(), which CPython
 * uses for every lock, Event.wait, queue.get and Thread.join with a timeout: CPython
 * computes the deadline from the faked CLOCK_MONOTONIC and the kernel compares it with the
 * real one, so a 1-second wait blocks for the whole offset (a year). This wrapper turns
 * the deadline back into the kernel's time base: the same distance from the real clock as
 * the caller meant from the faked one.
 *
 * Preload it BEFORE libfaketime: LD_PRELOAD="faketime_shim.so libfaketime.so.1".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <semaphore.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*sem_clockwait_fn)(sem_t *, clockid_t, const struct timespec *);

static long long to_ns(const struct timespec *t) {
    return (long long)t->tv_sec * 1000000000LL + t->tv_nsec;
}

int sem_clockwait(sem_t *sem, clockid_t clock, const struct timespec *abstime) {
    static sem_clockwait_fn real_wait;
    if (!real_wait) real_wait = (sem_clockwait_fn)dlsym(RTLD_NEXT, "sem_clockwait");
    struct timespec faked_now, real_now, deadline;
    clock_gettime(clock, &faked_now);                   /* libfaketime's clock */
    syscall(SYS_clock_gettime, clock, &real_now);       /* the kernel's clock */
    long long ns = to_ns(abstime) - to_ns(&faked_now) + to_ns(&real_now);
    if (ns < 0) ns = 0;
    deadline.tv_sec = ns / 1000000000LL;
    deadline.tv_nsec = ns % 1000000000LL;
    return real_wait(sem, clock, &deadline);
}
