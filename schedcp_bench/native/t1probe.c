/* t1_probe: a periodic latency probe (the T1 scenario's latency-sensitive task).
 *
 *   t1_probe SECONDS PERIOD_US WORK_US NTHREADS [STAGGER [LOG [INTERVAL_MS]]]
 *
 * NTHREADS threads each wake on an absolute PERIOD_US timer
 * (clock_nanosleep TIMER_ABSTIME, timer slack 1 ns), burn WORK_US of their
 * own CPU time and record the wake-up latency (wake time - timer expiry) and
 * the response time (work done - timer expiry).  STAGGER 1 offsets thread i
 * by i/NTHREADS of a period.
 *
 * Without LOG (bench/t1_latency.py): wait for a line on stdin, run SECONDS,
 * print "missed N" per thread and one "WAKE_NS RESP_NS" line per sample.
 * With LOG (schedcp-bench): start at once, run SECONDS (0: until killed) and
 * append one JSON line per INTERVAL_MS (default 500) to LOG:
 *   {"start": S, "end": S, "samples": N, "missed": M,
 *    "wake": [[NS, COUNT], ...], "resp": [[NS, COUNT], ...]}
 * start/end are CLOCK_MONOTONIC seconds (Python's time.monotonic()); the
 * histograms are log-linear (32 buckets per power of two, <= 3 % wide), each
 * bucket given by its midpoint in ns, so percentiles over any set of
 * intervals can be computed by merging them.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>

#define NS 1000000000LL
#define SUB 32
#define NBUCKETS (2 * SUB + 40 * SUB)

static long long period_ns, work_ns, end_ns;
static int nthreads, stagger;
static long long start_ns;
struct res { long long *wake, *resp; long n, cap, missed; };
static struct res *results;
static FILE *logf;
static uint64_t hist_wake[NBUCKETS], hist_resp[NBUCKETS], total_missed, total_samples;

static long long now(clockid_t c) { struct timespec t; clock_gettime(c, &t);
  return t.tv_sec * NS + t.tv_nsec; }

static int bucket(long long v) {
  if (v < 0) v = 0;
  if (v < 2 * SUB) return (int)v;
  int b = 63 - __builtin_clzll((unsigned long long)v);
  int shift = b - 5;
  int idx = 2 * SUB + (b - 6) * SUB + (int)((v >> shift) - SUB);
  return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static long long bucket_mid(int idx) {
  if (idx < 2 * SUB) return idx;
  int b = 6 + (idx - 2 * SUB) / SUB, shift = b - 5;
  long long low = (long long)((idx - 2 * SUB) % SUB + SUB) << shift;
  return low + ((1LL << shift) >> 1);
}

static void record(struct res *r, long long wake, long long resp) {
  if (logf) {
    __atomic_fetch_add(&hist_wake[bucket(wake)], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&hist_resp[bucket(resp)], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&total_samples, 1, __ATOMIC_RELAXED);
  } else if (r->n < r->cap) {
    r->wake[r->n] = wake; r->resp[r->n] = resp; r->n++;
  }
}

static void *worker(void *arg) {
  struct res *r = arg;
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  /* aligned: every thread's timer fires at the same instant; staggered:
     thread i fires i/nthreads of a period later (no self-interference). */
  long long next = start_ns + period_ns
                 + (stagger ? (r - results) * period_ns / nthreads : 0);
  while (end_ns == 0 || next < end_ns) {
    struct timespec ts = { next / NS, next % NS };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) ;
    long long woke = now(CLOCK_MONOTONIC);
    long long cpu0 = now(CLOCK_THREAD_CPUTIME_ID);
    while (now(CLOCK_THREAD_CPUTIME_ID) - cpu0 < work_ns) ;
    long long done = now(CLOCK_MONOTONIC);
    record(r, woke - next, done - next);
    next += period_ns;
    while (next < done) {
      next += period_ns; r->missed++;
      if (logf) __atomic_fetch_add(&total_missed, 1, __ATOMIC_RELAXED);
    }
  }
  return NULL;
}

static void emit_hist(const char *name, uint64_t *cur, uint64_t *prev) {
  fprintf(logf, ", \"%s\": [", name);
  int first = 1;
  for (int i = 0; i < NBUCKETS; i++) {
    uint64_t c = cur[i] - prev[i];
    if (!c) continue;
    fprintf(logf, "%s[%lld, %llu]", first ? "" : ", ", bucket_mid(i), (unsigned long long)c);
    first = 0;
  }
  fputc(']', logf);
}

/* The logging loop: one JSON record per interval, until end_ns (or forever). */
static void log_loop(long long interval_ns) {
  static uint64_t pw[NBUCKETS], pr[NBUCKETS], cw[NBUCKETS], cr[NBUCKETS];
  uint64_t pmissed = 0, psamples = 0;
  long long t0 = now(CLOCK_MONOTONIC);
  for (;;) {
    long long next = t0 + interval_ns;
    struct timespec ts = { next / NS, next % NS };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) ;
    long long t1 = now(CLOCK_MONOTONIC);
    for (int i = 0; i < NBUCKETS; i++) {
      cw[i] = __atomic_load_n(&hist_wake[i], __ATOMIC_RELAXED);
      cr[i] = __atomic_load_n(&hist_resp[i], __ATOMIC_RELAXED);
    }
    uint64_t missed = __atomic_load_n(&total_missed, __ATOMIC_RELAXED);
    uint64_t samples = __atomic_load_n(&total_samples, __ATOMIC_RELAXED);
    fprintf(logf, "{\"start\": %.6f, \"end\": %.6f, \"samples\": %llu, \"missed\": %llu",
            t0 / 1e9, t1 / 1e9, (unsigned long long)(samples - psamples),
            (unsigned long long)(missed - pmissed));
    emit_hist("wake", cw, pw);
    emit_hist("resp", cr, pr);
    fputs("}\n", logf);
    fflush(logf);
    memcpy(pw, cw, sizeof pw); memcpy(pr, cr, sizeof pr);
    pmissed = missed; psamples = samples; t0 = t1;
    if (end_ns && t1 >= end_ns) break;
  }
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s SECONDS PERIOD_US WORK_US NTHREADS [STAGGER [LOG [INTERVAL_MS]]]\n",
            argv[0]);
    return 2;
  }
  double seconds = atof(argv[1]);
  period_ns = atoll(argv[2]) * 1000; work_ns = atoll(argv[3]) * 1000;
  nthreads = atoi(argv[4]);
  stagger = argc > 5 && atoi(argv[5]);
  long long interval_ns = (argc > 7 ? atoll(argv[7]) : 500) * 1000000LL;
  if (nthreads < 1 || nthreads > 64 || period_ns <= 0 || interval_ns <= 0) {
    fprintf(stderr, "t1_probe: bad arguments\n");
    return 2;
  }
  if (argc > 6) {
    logf = fopen(argv[6], "a");
    if (!logf) { perror(argv[6]); return 1; }
  } else {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;   /* wait for "go" */
    if (seconds <= 0) { fprintf(stderr, "t1_probe: SECONDS > 0 needed without LOG\n"); return 2; }
  }
  start_ns = now(CLOCK_MONOTONIC);
  end_ns = seconds > 0 ? start_ns + (long long)(seconds * NS) : 0;
  results = calloc(nthreads, sizeof *results);
  pthread_t th[64];
  for (int i = 0; i < nthreads; i++) {
    if (!logf) {
      results[i].cap = (long)(seconds * NS / period_ns) + 16;
      results[i].wake = calloc(results[i].cap, sizeof(long long));
      results[i].resp = calloc(results[i].cap, sizeof(long long));
    }
    pthread_create(&th[i], NULL, worker, &results[i]);
  }
  if (logf) log_loop(interval_ns);
  for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
  if (logf) return 0;
  for (int i = 0; i < nthreads; i++) {
    printf("missed %ld\n", results[i].missed);
    for (long j = 0; j < results[i].n; j++)
      printf("%lld %lld\n", results[i].wake[j], results[i].resp[j]);
  }
  return 0;
}
