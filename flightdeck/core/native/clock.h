/* The recorder's clock, shared by both C modules (core/_native.c and asgi/_casgi.c): the
 * clock time.perf_counter_ns() reads, so native and Python emitters never come out of order
 * (CLOCK_MONOTONIC on Linux; on macOS, CPython 3.11-3.13 read mach_absolute_time() scaled by
 * the timebase). Each module calls fd_clock_init() once, at import. */
#ifndef FD_CLOCK_H
#define FD_CLOCK_H

#include <stdint.h>
#include <time.h>
#ifdef __APPLE__
#include <mach/mach_time.h>
static mach_timebase_info_data_t fd_timebase;
#endif

static inline void
fd_clock_init(void)
{
#ifdef __APPLE__
    mach_timebase_info(&fd_timebase);
#endif
}

static inline int64_t
fd_clock(void)
{
#ifdef __APPLE__
    uint64_t ticks = mach_absolute_time();
    uint64_t q = ticks / fd_timebase.denom, r = ticks % fd_timebase.denom;
    return (int64_t)(q * fd_timebase.numer + r * fd_timebase.numer / fd_timebase.denom);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

#endif /* FD_CLOCK_H */
