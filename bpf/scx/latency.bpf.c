/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * schedcp_latency: favours tasks that wake often and run briefly.
 *
 * Per task it keeps an exponentially weighted average of how long the task
 * runs per wake-up (avg_run) and of the time between its wake-ups
 * (avg_wake).  A task whose average run is under short_run_us and that
 * wakes at least every wake_interval_us is "interactive": it goes to a fast
 * queue served first, with a short slice (fast_slice_us).  Everything else
 * shares a weighted-vtime queue with slice_us.  So that batch work is never
 * starved, after fast_burst dispatches in a row from the fast queue the
 * next one comes from the batch queue if it has waiting tasks.  When an
 * interactive task wakes and no CPU is idle, a CPU where a CPU hog (a task
 * that runs more than 4 x short_run_us per wake-up) has run for at least
 * fast_slice_us is kicked to preempt it (preempt=1, default), so the waker
 * runs soon instead of after the hog's whole slice.
 *
 * With ljf=1 it runs long jobs first instead (long-tail batch: the job with
 * the most CPU time so far is finished first, which lowers the average
 * completion time when a few long jobs dominate): the batch queue is
 * ordered by remaining "shortness" (less accumulated runtime = later) and
 * the fast queue is not used.
 *
 * Parameters (key=value):
 *   slice_us (5000) fast_slice_us (1000) short_run_us (500)
 *   wake_interval_us (50000) fast_burst (8) ljf (0) preempt (1)
 */
#include "scx_common.h"

#define FAST_Q 0x5c0011ULL
#define BATCH_Q 0x5c0012ULL
#define MAX_CPUS 256
#define LJF_HORIZON_NS (10ULL * 1000 * 1000 * 1000)	/* runtime beyond this counts the same */

const volatile u64 slice_us = 5000;
const volatile u64 fast_slice_us = 1000;
const volatile u64 short_run_us = 500;
const volatile u64 wake_interval_us = 50000;
const volatile u32 fast_burst = 8;
const volatile bool ljf = false;
const volatile bool preempt = true;

struct task_ctx {
	u64 avg_run;	/* ns per wake-up */
	u64 avg_wake;	/* ns between wake-ups */
	u64 run_start;
	u64 last_wake;
	u64 run_this_wake;
	u64 total_run;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

/* Per CPU: when the CPU hog running there started (0: no hog runs there). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, u32);
	__type(value, u64);
} cpu_hog_since SEC(".maps");

static u64 vtime_now;
static u32 fast_streak;

/* Statistics the loader may read (.bss). */
u64 nr_fast, nr_batch, nr_direct, nr_kicks;

static __always_inline void set_cpu_hog(u64 since)
{
	u32 cpu = bpf_get_smp_processor_id();
	u64 *slot = bpf_map_lookup_elem(&cpu_hog_since, &cpu);

	if (slot)
		*slot = since;
}

/* Kick ``cpu`` if a hog has run there for at least a fast slice. */
static __always_inline bool kick_if_hog(u32 cpu, u64 now)
{
	u64 *since = bpf_map_lookup_elem(&cpu_hog_since, &cpu);

	if (!since || !*since || now - *since < fast_slice_us * 1000)
		return false;
	*since = 0;
	scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
	__sync_fetch_and_add(&nr_kicks, 1);
	return true;
}

/*
 * Preempt a CPU where a hog has had at least a fast slice: the task's last
 * CPU first, then any.  The hog keeps that much CPU between preemptions.
 */
static __always_inline void kick_hog_cpu(struct task_struct *p)
{
	u64 now = bpf_ktime_get_ns();
	u32 cpu, nr = scx_bpf_nr_cpu_ids();

	if (kick_if_hog(scx_bpf_task_cpu(p), now))
		return;
	for (cpu = 0; cpu < MAX_CPUS && cpu < nr; cpu++)
		if (kick_if_hog(cpu, now))
			return;
}

static __always_inline struct task_ctx *ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, 0);
}

static __always_inline u64 ewma(u64 avg, u64 sample)
{
	return avg - (avg >> 2) + (sample >> 2);	/* 3/4 old + 1/4 new */
}

static __always_inline bool interactive(struct task_ctx *c)
{
	return !ljf && c->avg_run < short_run_us * 1000 && c->avg_wake &&
	       c->avg_wake < wake_interval_us * 1000;
}

/*
 * A CPU hog: runs long per wake-up (or has not slept since it woke).  Only
 * these are preempted for an interactive task, and only after a fast slice:
 * kicking every CPU that ran something non-interactive cost more than it
 * saved (hackbench in the TCG guest took 3.4x EEVDF's time that way, 0.6x
 * with this rule; measured 2026-11-22).
 */
static __always_inline bool cpu_hog(struct task_ctx *c)
{
	u64 hog = 4 * short_run_us * 1000;

	return c->avg_run > hog || c->run_this_wake > hog;
}

s32 SCHEDCP_OP(lat_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &idle);
	struct task_ctx *c;

	if (idle) {
		c = ctx_of(p);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL,
				   (c && interactive(c) ? fast_slice_us : slice_us) * 1000, 0);
		__sync_fetch_and_add(&nr_direct, 1);
	}
	return cpu;
}

void SCHEDCP_OP(lat_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *c = ctx_of(p);
	u64 floor = vtime_now - slice_us * 1000;
	u64 vtime = p->scx.dsq_vtime;

	if (c && interactive(c)) {
		scx_bpf_dsq_insert(p, FAST_Q, fast_slice_us * 1000, enq_flags);
		__sync_fetch_and_add(&nr_fast, 1);
		if (preempt)
			kick_hog_cpu(p);
		return;
	}
	if (schedcp_before(vtime, floor))
		vtime = floor;
	if (ljf && c) {
		u64 done = c->total_run < LJF_HORIZON_NS ? c->total_run : LJF_HORIZON_NS;

		vtime = vtime_now + (LJF_HORIZON_NS - done) / 1000;
	}
	scx_bpf_dsq_insert_vtime(p, BATCH_Q, slice_us * 1000, vtime, enq_flags);
	__sync_fetch_and_add(&nr_batch, 1);
}

void SCHEDCP_OP(lat_dispatch, s32 cpu, struct task_struct *prev)
{
	if (fast_streak >= fast_burst && scx_bpf_dsq_nr_queued(BATCH_Q) > 0) {
		fast_streak = 0;
		if (scx_bpf_dsq_move_to_local(BATCH_Q))
			return;
	}
	if (scx_bpf_dsq_move_to_local(FAST_Q)) {
		fast_streak++;
		return;
	}
	fast_streak = 0;
	scx_bpf_dsq_move_to_local(BATCH_Q);
}

void SCHEDCP_OP(lat_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *c = ctx_of(p);
	u64 now = bpf_ktime_get_ns();

	if (!c)
		return;
	if (c->last_wake)
		c->avg_wake = ewma(c->avg_wake ? c->avg_wake : now - c->last_wake,
				   now - c->last_wake);
	c->last_wake = now;
	c->run_this_wake = 0;
}

void SCHEDCP_OP(lat_running, struct task_struct *p)
{
	struct task_ctx *c = ctx_of(p);

	if (schedcp_before(vtime_now, p->scx.dsq_vtime) && !ljf)
		vtime_now = p->scx.dsq_vtime;
	if (c)
		c->run_start = bpf_ktime_get_ns();
	set_cpu_hog(c && cpu_hog(c) ? c->run_start : 0);
}

void SCHEDCP_OP(lat_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *c = ctx_of(p);
	u64 ran;

	set_cpu_hog(0);
	if (!c || !c->run_start)
		return;
	ran = bpf_ktime_get_ns() - c->run_start;
	c->run_this_wake += ran;
	c->total_run += ran;
	p->scx.dsq_vtime += ran * 100 / (p->scx.weight ? p->scx.weight : 1);
	if (ljf)
		vtime_now += ran;
}

void SCHEDCP_OP(lat_quiescent, struct task_struct *p, u64 deq_flags)
{
	struct task_ctx *c = ctx_of(p);

	if (c)
		c->avg_run = ewma(c->avg_run ? c->avg_run : c->run_this_wake, c->run_this_wake);
}

void SCHEDCP_OP(lat_enable, struct task_struct *p)
{
	p->scx.dsq_vtime = vtime_now;
}

s32 SCHEDCP_OP_SLEEPABLE(lat_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	if (!bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		return -12;	/* -ENOMEM */
	return 0;
}

s32 SCHEDCP_OP_SLEEPABLE(lat_init)
{
	s32 err = scx_bpf_create_dsq(FAST_Q, -1);

	return err ? err : scx_bpf_create_dsq(BATCH_Q, -1);
}

void SCHEDCP_OP(lat_exit, struct scx_exit_info *ei)
{
	SCHEDCP_EXIT_RECORD(ei);
}

SCHEDCP_OPS(latency_ops) = {
	.select_cpu = (void *)lat_select_cpu,
	.enqueue = (void *)lat_enqueue,
	.dispatch = (void *)lat_dispatch,
	.runnable = (void *)lat_runnable,
	.running = (void *)lat_running,
	.stopping = (void *)lat_stopping,
	.quiescent = (void *)lat_quiescent,
	.enable = (void *)lat_enable,
	.init_task = (void *)lat_init_task,
	.init = (void *)lat_init,
	.exit = (void *)lat_exit,
	.name = "schedcp_latency",
};
