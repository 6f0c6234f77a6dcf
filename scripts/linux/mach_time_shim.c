/*
 * mlx-rs 0.33 seeds its default PRNG from `mach_approximate_time`, a macOS-only function.
 * On Linux this archive (linked into every binary through mlx-sys's link override, written
 * by scripts/setup.sh) provides it from the monotonic clock, in nanoseconds.
 */
#include <stdint.h>
#include <time.h>

uint64_t mach_approximate_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
