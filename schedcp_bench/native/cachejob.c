/* cachejob: one CPU-bound batch job whose speed depends on a warm cache.
 *
 *   cachejob KB LOG [INTERVAL_MS] [--job TAG]
 *
 * Follows a random cyclic chain of pointers through a KB-kilobyte working
 * set, one 64-byte line per step, until killed; every INTERVAL_MS (default
 * 500) it appends one JSON line to LOG:
 *   {"start": S, "end": S, "pid": P, "loads": N, "cpu_s": CPU}
 * with CLOCK_MONOTONIC seconds, the steps taken and the process's CPU time in
 * the interval.  Each step depends on the one before, so the rate is the
 * memory latency of the working set: fast while it stays in the caches (and
 * its pages in the TLB), slow after another job ran on the CPU and evicted it.
 * Several jobs per CPU are what a batch scheduler's time slice matters for.
 * TAG only labels the command line.  Lines are written with one write(2) to
 * a file opened O_APPEND, so jobs can share LOG.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define LINE 64
#define STEPS 4096

static long long now(clockid_t c) { struct timespec t; clock_gettime(c, &t);
  return t.tv_sec * NS + t.tv_nsec; }

/* xorshift64: a seeded permutation without libc's shared rand() state */
static uint64_t next_rand(uint64_t *x) {
  *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17; return *x;
}

/* One uint64_t per line holds the index of the next line: a single cycle
 * through all lines in a random order (Sattolo's shuffle). */
static uint64_t *make_chain(size_t lines, uint64_t seed) {
  uint64_t *chain = aligned_alloc(LINE, lines * LINE);
  size_t *order = malloc(lines * sizeof *order);
  if (!chain || !order) return NULL;
  for (size_t i = 0; i < lines; i++) order[i] = i;
  for (size_t i = lines - 1; i > 0; i--) {
    size_t j = next_rand(&seed) % i, t = order[i];
    order[i] = order[j]; order[j] = t;
  }
  for (size_t i = 0; i < lines; i++)
    chain[order[i] * (LINE / 8)] = order[(i + 1) % lines] * (LINE / 8);
  free(order);
  return chain;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s KB LOG [INTERVAL_MS] [--job TAG]\n", argv[0]);
    return 2;
  }
  long kb = atol(argv[1]);
  long interval_ms = argc > 3 && argv[3][0] != '-' ? atol(argv[3]) : 500;
  if (kb < 4 || kb > 1024 * 1024 || interval_ms < 10) {
    fprintf(stderr, "cachejob: KB must be 4..1048576, INTERVAL_MS >= 10\n");
    return 2;
  }
  int fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) { perror(argv[2]); return 1; }
  size_t lines = (size_t)kb * 1024 / LINE;
  uint64_t *chain = make_chain(lines, 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid());
  if (!chain) { fprintf(stderr, "cachejob: out of memory\n"); return 1; }

  long long interval = interval_ms * 1000000LL;
  long long t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
  uint64_t p = 0, loads = 0;
  for (;;) {
    for (int k = 0; k < STEPS; k++) p = chain[p];
    loads += STEPS;
    long long t1 = now(CLOCK_MONOTONIC);
    if (t1 - t0 < interval) continue;
    long long c1 = now(CLOCK_PROCESS_CPUTIME_ID);
    char buf[160];
    int n = snprintf(buf, sizeof buf,
                     "{\"start\": %.6f, \"end\": %.6f, \"pid\": %d, \"loads\": %llu, "
                     "\"cpu_s\": %.6f}\n", t0 / 1e9, t1 / 1e9, (int)getpid(),
                     (unsigned long long)loads + (p == UINT64_MAX), (c1 - c0) / 1e9);
    if (write(fd, buf, (size_t)n) != n) { perror("cachejob: write"); return 1; }
    t0 = t1; c0 = c1; loads = 0;
  }
}
