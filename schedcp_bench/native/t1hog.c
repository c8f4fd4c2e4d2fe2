/* t1_hog: a CPU hog (the T1 scenario's batch neighbour).
 *
 *   t1_hog SECONDS NTHREADS [LOG [INTERVAL_MS]]
 *
 * NTHREADS threads spin on a xorshift loop; one iteration is 4096 steps.
 * Without LOG (bench/t1_latency.py): wait for a line on stdin, spin SECONDS
 * and print the total number of iterations.  With LOG (schedcp-bench): start
 * at once, spin SECONDS (0: until killed) and append one JSON line per
 * INTERVAL_MS (default 500) to LOG:
 *   {"start": S, "end": S, "iters": N, "cpu_s": CPU}
 * with CLOCK_MONOTONIC seconds and the process's CPU time in the interval.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#define NS 1000000000LL
static volatile int stop;
/* one counter per cache line: the threads never share a line */
static struct { uint64_t n; char pad[56]; } counts[64];

static long long now(clockid_t c) { struct timespec t; clock_gettime(c, &t);
  return t.tv_sec * NS + t.tv_nsec; }

static void *spin(void *arg) {
  long i = (long)arg; uint64_t x = 88172645463325252ULL + i, n = 0;
  while (!stop) {
    for (int k = 0; k < 4096; k++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; }
    n++;
    __atomic_store_n(&counts[i].n, n + (x == 42), __ATOMIC_RELAXED);
  }
  return NULL;
}

static uint64_t total(int nthreads) {
  uint64_t t = 0;
  for (int i = 0; i < nthreads; i++) t += __atomic_load_n(&counts[i].n, __ATOMIC_RELAXED);
  return t;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s SECONDS NTHREADS [LOG [INTERVAL_MS]]\n", argv[0]);
    return 2;
  }
  double seconds = atof(argv[1]); int nthreads = atoi(argv[2]);
  if (nthreads < 0 || nthreads > 64) { fprintf(stderr, "t1_hog: 0..64 threads\n"); return 2; }
  FILE *logf = NULL;
  if (argc > 3) {
    logf = fopen(argv[3], "a");
    if (!logf) { perror(argv[3]); return 1; }
  } else {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
  }
  pthread_t th[64];
  for (long i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, spin, (void *)i);
  if (logf) {
    long long interval = (argc > 4 ? atoll(argv[4]) : 500) * 1000000LL;
    long long t0 = now(CLOCK_MONOTONIC), end = seconds > 0 ? t0 + (long long)(seconds * NS) : 0;
    long long c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    uint64_t n0 = total(nthreads);
    while (!end || t0 < end) {
      long long next = t0 + interval;
      struct timespec ts = { next / NS, next % NS };
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) ;
      long long t1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_PROCESS_CPUTIME_ID);
      uint64_t n1 = total(nthreads);
      fprintf(logf, "{\"start\": %.6f, \"end\": %.6f, \"iters\": %llu, \"cpu_s\": %.6f}\n",
              t0 / 1e9, t1 / 1e9, (unsigned long long)(n1 - n0), (c1 - c0) / 1e9);
      fflush(logf);
      t0 = t1; c0 = c1; n0 = n1;
    }
    stop = 1;
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    return 0;
  }
  struct timespec ts = { (time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9) };
  nanosleep(&ts, NULL);
  stop = 1;
  for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
  printf("%llu\n", (unsigned long long)total(nthreads));
  return 0;
}
