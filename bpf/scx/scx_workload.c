// SPDX-License-Identifier: GPL-2.0-only
/*
 * scx_workload: a small mixed workload for checking a scheduler (static, for the guest).
 *
 *   scx_workload [SECONDS=3] [SPINNERS=2] [PAIRS=1] [PERIOD_US=2000]
 *
 * Runs for SECONDS: SPINNERS CPU-bound threads, PAIRS pipe ping-pong thread
 * pairs, and one periodic thread that sleeps to an absolute deadline every
 * PERIOD_US and records how late it wakes.  Prints one JSON line:
 *   {"seconds":..,"spin":[iterations..],"pingpong":[round trips..],
 *    "periods":N,"wake_p50_us":..,"wake_p99_us":..,"wake_max_us":..,"progress":true}
 * and exits 0 when every thread made progress, 1 otherwise.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_SAMPLES 200000

static double deadline;
static volatile bool done;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *spinner(void *arg)
{
	uint64_t *count = arg;
	volatile uint64_t x = 0;

	while (!done) {
		for (int i = 0; i < 10000; i++)
			x += (uint64_t)i;
		(*count)++;
		if ((*count & 63) == 0 && now_s() >= deadline)
			break;
	}
	return NULL;
}

struct pair {
	int ping[2], pong[2];
	uint64_t rounds;
};

static void *pong(void *arg)
{
	struct pair *p = arg;
	char c;

	while (read(p->ping[0], &c, 1) == 1 && c)
		if (write(p->pong[1], &c, 1) != 1)
			break;
	return NULL;
}

static void *ping(void *arg)
{
	struct pair *p = arg;
	char c = 1;

	while (now_s() < deadline && !done) {
		if (write(p->ping[1], &c, 1) != 1 || read(p->pong[0], &c, 1) != 1)
			break;
		p->rounds++;
	}
	c = 0;
	if (write(p->ping[1], &c, 1) != 1)
		perror("write");
	return NULL;
}

static uint64_t *samples;
static uint64_t nsamples;
static long period_us = 2000;

static void *periodic(void *arg)
{
	struct timespec next, woke;

	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (now_s() < deadline && !done && nsamples < MAX_SAMPLES) {
		next.tv_nsec += period_us * 1000;
		while (next.tv_nsec >= 1000000000) {
			next.tv_nsec -= 1000000000;
			next.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		clock_gettime(CLOCK_MONOTONIC, &woke);
		int64_t late = (woke.tv_sec - next.tv_sec) * 1000000000LL + woke.tv_nsec - next.tv_nsec;
		samples[nsamples++] = late > 0 ? (uint64_t)late : 0;
	}
	return NULL;
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double pct(double p)
{
	if (!nsamples)
		return -1;
	return (double)samples[(uint64_t)((double)(nsamples - 1) * p)] / 1000.0;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3;
	int spinners = argc > 2 ? atoi(argv[2]) : 2;
	int pairs = argc > 3 ? atoi(argv[3]) : 1;
	pthread_t th[MAX_THREADS];
	uint64_t spin[MAX_THREADS] = { 0 };
	struct pair pr[MAX_THREADS];
	bool progress = true;
	int n = 0, i;
	double start = now_s();

	if (argc > 4)
		period_us = atol(argv[4]);
	if (seconds <= 0 || spinners < 0 || pairs < 0 || spinners + 2 * pairs + 1 > MAX_THREADS ||
	    period_us < 100) {
		fprintf(stderr, "usage: scx_workload [SECONDS] [SPINNERS] [PAIRS] [PERIOD_US]\n");
		return 2;
	}
	samples = calloc(MAX_SAMPLES, sizeof(*samples));
	deadline = start + seconds;
	for (i = 0; i < spinners; i++)
		pthread_create(&th[n++], NULL, spinner, &spin[i]);
	for (i = 0; i < pairs; i++) {
		memset(&pr[i], 0, sizeof(pr[i]));
		if (pipe(pr[i].ping) || pipe(pr[i].pong))
			return 2;
		pthread_create(&th[n++], NULL, pong, &pr[i]);
		pthread_create(&th[n++], NULL, ping, &pr[i]);
	}
	pthread_create(&th[n++], NULL, periodic, NULL);
	for (i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	qsort(samples, nsamples, sizeof(*samples), cmp);
	printf("{\"seconds\":%.3f,\"spin\":[", now_s() - start);
	for (i = 0; i < spinners; i++) {
		printf("%s%llu", i ? "," : "", (unsigned long long)spin[i]);
		progress = progress && spin[i] > 0;
	}
	printf("],\"pingpong\":[");
	for (i = 0; i < pairs; i++) {
		printf("%s%llu", i ? "," : "", (unsigned long long)pr[i].rounds);
		progress = progress && pr[i].rounds > 0;
	}
	progress = progress && nsamples > 0;
	printf("],\"periods\":%llu,\"wake_p50_us\":%.1f,\"wake_p99_us\":%.1f,"
	       "\"wake_max_us\":%.1f,\"progress\":%s}\n",
	       (unsigned long long)nsamples, pct(0.5), pct(0.99), pct(1.0),
	       progress ? "true" : "false");
	return progress ? 0 : 1;
}
