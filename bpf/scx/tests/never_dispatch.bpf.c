/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TEST ONLY -- a broken scheduler: it queues every task on its own queue
 * but its dispatch is gated by a parameter that is off, so nothing queued
 * ever runs.  It passes the static rules (enqueue inserts, dispatch moves
 * from the same queue) and the BPF verifier; the kernel's watchdog ejects
 * it after timeout_ms.  Used to prove the verifier's dynamic stage.
 */
#include "scx_common.h"

#define QUEUE 0x5c0f01ULL

const volatile bool enable_dispatch = false;

void SCHEDCP_OP(nd_enqueue, struct task_struct *p, u64 enq_flags)
{
	scx_bpf_dsq_insert(p, QUEUE, 5000000, enq_flags);
}

void SCHEDCP_OP(nd_dispatch, s32 cpu, struct task_struct *prev)
{
	if (enable_dispatch)
		scx_bpf_dsq_move_to_local(QUEUE);
}

s32 SCHEDCP_OP_SLEEPABLE(nd_init)
{
	return scx_bpf_create_dsq(QUEUE, -1);
}

void SCHEDCP_OP(nd_exit, struct scx_exit_info *ei)
{
	SCHEDCP_EXIT_RECORD(ei);
}

SCHEDCP_OPS(never_dispatch_ops) = {
	.enqueue = (void *)nd_enqueue,
	.dispatch = (void *)nd_dispatch,
	.init = (void *)nd_init,
	.exit = (void *)nd_exit,
	.timeout_ms = 2000,
	.name = "schedcp_never",
};
