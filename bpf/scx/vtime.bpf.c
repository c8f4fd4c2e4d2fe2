/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * schedcp_vtime: weighted virtual-time scheduling on one shared queue.
 *
 * Every task carries a virtual time that advances by the CPU time it used,
 * scaled by 100 / weight (nice 0 = weight 100), so a task of twice the
 * weight gets twice the CPU.  Runnable tasks wait in one vtime-ordered
 * queue; an idle CPU found at wake-up runs the task directly.  A task that
 * slept keeps at most max_lag_slices slices of credit, so a sleeper cannot
 * monopolise the CPUs when it wakes.
 *
 * Parameters (set by the loader before load, key=value):
 *   slice_us        time slice in microseconds (default 5000)
 *   max_lag_slices  credit a sleeper keeps, in slices (default 1)
 */
#include "scx_common.h"

#define QUEUE 0x5c0001ULL	/* our shared dispatch queue */

const volatile u64 slice_us = 5000;
const volatile u64 max_lag_slices = 1;

static u64 vtime_now;	/* the largest vtime that has started running */

static __always_inline u64 slice_ns(void)
{
	return slice_us * 1000;
}

s32 SCHEDCP_OP(vtime_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool idle = false;
	s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &idle);

	if (idle)
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns(), 0);
	return cpu;
}

void SCHEDCP_OP(vtime_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 floor = vtime_now - max_lag_slices * slice_ns();
	u64 vtime = p->scx.dsq_vtime;

	if (schedcp_before(vtime, floor))
		vtime = floor;
	scx_bpf_dsq_insert_vtime(p, QUEUE, slice_ns(), vtime, enq_flags);
}

void SCHEDCP_OP(vtime_dispatch, s32 cpu, struct task_struct *prev)
{
	scx_bpf_dsq_move_to_local(QUEUE);
}

void SCHEDCP_OP(vtime_running, struct task_struct *p)
{
	if (schedcp_before(vtime_now, p->scx.dsq_vtime))
		vtime_now = p->scx.dsq_vtime;
}

void SCHEDCP_OP(vtime_stopping, struct task_struct *p, bool runnable)
{
	u64 used = slice_ns() - p->scx.slice;	/* slice counts down while running */

	if (used > slice_ns())
		used = slice_ns();
	p->scx.dsq_vtime += used * 100 / (p->scx.weight ? p->scx.weight : 1);
}

void SCHEDCP_OP(vtime_enable, struct task_struct *p)
{
	p->scx.dsq_vtime = vtime_now;
}

s32 SCHEDCP_OP_SLEEPABLE(vtime_init)
{
	return scx_bpf_create_dsq(QUEUE, -1);
}

void SCHEDCP_OP(vtime_exit, struct scx_exit_info *ei)
{
	SCHEDCP_EXIT_RECORD(ei);
}

SCHEDCP_OPS(vtime_ops) = {
	.select_cpu = (void *)vtime_select_cpu,
	.enqueue = (void *)vtime_enqueue,
	.dispatch = (void *)vtime_dispatch,
	.running = (void *)vtime_running,
	.stopping = (void *)vtime_stopping,
	.enable = (void *)vtime_enable,
	.init = (void *)vtime_init,
	.exit = (void *)vtime_exit,
	.name = "schedcp_vtime",
};
