/* spinjob: one CPU-bound batch job of a fixed amount of CPU time.
 *
 *   spinjob --job-class CLASS --cpu-ms MS [--tag TEXT]
 *
 * Spins on a xorshift loop until the process has used MS milliseconds of CPU
 * time, then exits 0.  The wall time it takes is what the scheduler decides.
 * CLASS (e.g. long, short) and TEXT only label the command line, so policies
 * (long-job-first matches "--job-class long") and the benchmark's --match
 * regex can find the job.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long cpu_ns(void) {
  struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
  double ms = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--cpu-ms")) ms = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--job-class") && strcmp(argv[i], "--tag")) {
      fprintf(stderr, "spinjob: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (ms < 0) {
    fprintf(stderr, "usage: spinjob --job-class CLASS --cpu-ms MS [--tag TEXT]\n");
    return 2;
  }
  long long until = cpu_ns() + (long long)(ms * 1e6);
  uint64_t x = 88172645463325252ULL;
  while (cpu_ns() < until)
    for (int k = 0; k < 2048; k++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; }
  return x == 42;
}
