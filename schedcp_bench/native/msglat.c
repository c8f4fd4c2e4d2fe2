/* msglat, a schbench-like message/worker wake-up latency benchmark, not schbench.
 *
 *   msglat [-m MESSAGE_THREADS] [-t WORKERS_PER_MESSAGE_THREAD] [-r RUNTIME_S]
 *          [-s SPIN_US] [-S SLEEP_US] [-w WARMUP_S] [--seed N]
 *
 * Each message thread owns WORKERS worker threads.  In a round it stamps a
 * request for every worker and wakes it through a futex; the worker records
 * its wake-up latency (running again - stamped), spins SPIN_US of its own CPU
 * time (+-25 % jitter from the seed), stamps its reply and wakes the message
 * thread when it is the last of the round.  The message thread records the
 * round's latency (all replies in - first stamp), optionally sleeps SLEEP_US,
 * and starts the next round.  After RUNTIME_S it prints one JSON object:
 *   {"benchmark": "msglat", "wake_p50_us", "wake_p99_us", "wake_p999_us",
 *    "wake_max_us", "round_p99_us", "requests", "seconds", "rps", ...}
 * Samples from the first WARMUP_S seconds are not counted.
 * Plain C + pthreads + futex(2), no other dependencies:
 *   cc -static -O2 -pthread msglat.c -o msglat
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define SUB 32
#define NBUCKETS (2 * SUB + 40 * SUB)

struct hist { uint64_t b[NBUCKETS]; uint64_t n, max; };

struct worker {
  uint32_t state;           /* 0 idle, 1 request posted, 2 stop (futex word) */
  long long posted_ns;
  long long spin_ns;
  uint64_t rng;
  struct message *msg;
  struct hist wake;
  uint64_t requests;
  pthread_t th;
} __attribute__((aligned(64)));

struct message {
  uint32_t pending;         /* replies still due this round (futex word) */
  int nworkers;
  struct worker *workers;
  struct hist round;
  pthread_t th;
} __attribute__((aligned(64)));

static volatile int stop;
static long long spin_ns, sleep_ns, count_from_ns;

static long long now(clockid_t c) { struct timespec t; clock_gettime(c, &t);
  return t.tv_sec * NS + t.tv_nsec; }

static long futex(uint32_t *word, int op, uint32_t val) {
  return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

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

static void hist_add(struct hist *h, long long v) {
  h->b[bucket(v)]++; h->n++;
  if (v > 0 && (uint64_t)v > h->max) h->max = (uint64_t)v;
}

static void hist_merge(struct hist *into, const struct hist *h) {
  for (int i = 0; i < NBUCKETS; i++) into->b[i] += h->b[i];
  into->n += h->n;
  if (h->max > into->max) into->max = h->max;
}

/* Nearest-rank percentile in microseconds (bucket midpoints). */
static double hist_pct(const struct hist *h, double q) {
  if (!h->n) return 0.0;
  uint64_t rank = (uint64_t)(q / 100.0 * (double)h->n + 0.999999);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < NBUCKETS; i++) {
    seen += h->b[i];
    if (seen >= rank) return bucket_mid(i) / 1000.0;
  }
  return h->max / 1000.0;
}

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s; x ^= x << 13; x ^= x >> 7; x ^= x << 17; return *s = x;
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (;;) {
    uint32_t s;
    while ((s = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE)) == 0)
      futex(&w->state, FUTEX_WAIT_PRIVATE, 0);
    if (s == 2) break;
    long long woke = now(CLOCK_MONOTONIC);
    if (w->posted_ns >= count_from_ns) { hist_add(&w->wake, woke - w->posted_ns); w->requests++; }
    /* the request's work: spin on our own CPU time, +-25 % */
    long long work = spin_ns * 3 / 4 + (spin_ns ? (long long)(xorshift(&w->rng) % (uint64_t)(spin_ns / 2 + 1)) : 0);
    long long cpu0 = now(CLOCK_THREAD_CPUTIME_ID);
    while (now(CLOCK_THREAD_CPUTIME_ID) - cpu0 < work) ;
    __atomic_store_n(&w->state, 0, __ATOMIC_RELEASE);
    if (__atomic_sub_fetch(&w->msg->pending, 1, __ATOMIC_ACQ_REL) == 0)
      futex(&w->msg->pending, FUTEX_WAKE_PRIVATE, 1);
  }
  return NULL;
}

static void *message_main(void *arg) {
  struct message *m = arg;
  while (!stop) {
    __atomic_store_n(&m->pending, (uint32_t)m->nworkers, __ATOMIC_RELEASE);
    long long first = now(CLOCK_MONOTONIC);
    for (int i = 0; i < m->nworkers; i++) {
      struct worker *w = &m->workers[i];
      w->posted_ns = now(CLOCK_MONOTONIC);
      __atomic_store_n(&w->state, 1, __ATOMIC_RELEASE);
      futex(&w->state, FUTEX_WAKE_PRIVATE, 1);
    }
    uint32_t p;
    while ((p = __atomic_load_n(&m->pending, __ATOMIC_ACQUIRE)) != 0)
      futex(&m->pending, FUTEX_WAIT_PRIVATE, p);
    long long done = now(CLOCK_MONOTONIC);
    if (first >= count_from_ns) hist_add(&m->round, done - first);
    if (sleep_ns) {
      struct timespec ts = { sleep_ns / NS, sleep_ns % NS };
      nanosleep(&ts, NULL);
    }
  }
  for (int i = 0; i < m->nworkers; i++) {
    __atomic_store_n(&m->workers[i].state, 2, __ATOMIC_RELEASE);
    futex(&m->workers[i].state, FUTEX_WAKE_PRIVATE, 1);
  }
  return NULL;
}

static void usage(const char *prog) {
  fprintf(stderr, "usage: %s [-m MESSAGE_THREADS] [-t WORKERS] [-r RUNTIME_S] [-s SPIN_US] "
                  "[-S SLEEP_US] [-w WARMUP_S] [--seed N]\n"
                  "msglat, a schbench-like message/worker wake-up latency benchmark, "
                  "not schbench\n", prog);
  exit(2);
}

int main(int argc, char **argv) {
  int nmsg = 2, nwork = 2;
  double runtime = 5.0, warmup = 0.2;
  unsigned long long seed = 1;
  spin_ns = 20000;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc) usage(argv[0]);
    const char *v = argv[++i];
    char *end;
    double x = strtod(v, &end);
    if (*end || x < 0) { fprintf(stderr, "msglat: bad value %s for %s\n", v, a); return 2; }
    if (!strcmp(a, "-m")) nmsg = (int)x;
    else if (!strcmp(a, "-t")) nwork = (int)x;
    else if (!strcmp(a, "-r")) runtime = x;
    else if (!strcmp(a, "-s")) spin_ns = (long long)(x * 1000);
    else if (!strcmp(a, "-S")) sleep_ns = (long long)(x * 1000);
    else if (!strcmp(a, "-w")) warmup = x;
    else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
    else usage(argv[0]);
  }
  if (nmsg < 1 || nmsg > 64 || nwork < 1 || nwork > 256 || runtime <= 0) {
    fprintf(stderr, "msglat: need 1..64 message threads, 1..256 workers, runtime > 0\n");
    return 2;
  }
  struct message *msgs = aligned_alloc(64, sizeof *msgs * (size_t)nmsg);
  if (!msgs) return 1;
  memset(msgs, 0, sizeof *msgs * (size_t)nmsg);
  long long t0 = now(CLOCK_MONOTONIC);
  count_from_ns = t0 + (long long)(warmup * NS);
  for (int m = 0; m < nmsg; m++) {
    msgs[m].nworkers = nwork;
    msgs[m].workers = aligned_alloc(64, sizeof(struct worker) * (size_t)nwork);
    if (!msgs[m].workers) return 1;
    memset(msgs[m].workers, 0, sizeof(struct worker) * (size_t)nwork);
    for (int i = 0; i < nwork; i++) {
      struct worker *w = &msgs[m].workers[i];
      w->msg = &msgs[m];
      w->rng = (seed + 1) * 0x9E3779B97F4A7C15ULL + (uint64_t)(m * 1000 + i + 1);
      if (pthread_create(&w->th, NULL, worker_main, w)) { perror("pthread_create"); return 1; }
    }
  }
  for (int m = 0; m < nmsg; m++)
    if (pthread_create(&msgs[m].th, NULL, message_main, &msgs[m])) { perror("pthread_create"); return 1; }
  long long end = t0 + (long long)((warmup + runtime) * NS);
  struct timespec ts = { end / NS, end % NS };
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) ;
  stop = 1;
  long long t1 = now(CLOCK_MONOTONIC);
  static struct hist wake, round;
  uint64_t requests = 0;
  for (int m = 0; m < nmsg; m++) {
    pthread_join(msgs[m].th, NULL);
    hist_merge(&round, &msgs[m].round);
    for (int i = 0; i < nwork; i++) {
      pthread_join(msgs[m].workers[i].th, NULL);
      hist_merge(&wake, &msgs[m].workers[i].wake);
      requests += msgs[m].workers[i].requests;
    }
  }
  double seconds = (t1 - count_from_ns) / 1e9;
  printf("{\"benchmark\": \"msglat\", \"message_threads\": %d, \"workers\": %d, "
         "\"spin_us\": %.1f, \"sleep_us\": %.1f, \"seconds\": %.3f, \"requests\": %llu, "
         "\"rps\": %.1f, \"wake_p50_us\": %.1f, \"wake_p90_us\": %.1f, \"wake_p99_us\": %.1f, "
         "\"wake_p999_us\": %.1f, \"wake_max_us\": %.1f, \"round_p50_us\": %.1f, "
         "\"round_p99_us\": %.1f}\n",
         nmsg, nwork, spin_ns / 1e3, sleep_ns / 1e3, seconds, (unsigned long long)requests,
         requests / seconds, hist_pct(&wake, 50), hist_pct(&wake, 90), hist_pct(&wake, 99),
         hist_pct(&wake, 99.9), wake.max / 1e3, hist_pct(&round, 50), hist_pct(&round, 99));
  return 0;
}
