/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TEST ONLY -- a scheduler the BPF verifier rejects: its enqueue reads a
 * per-CPU-style array with an index it never bounds-checks.  It compiles,
 * passes the static rules, and fails at load with a verifier log.
 */
#include "scx_common.h"

u64 counts[16];

void SCHEDCP_OP(rej_enqueue, struct task_struct *p, u64 enq_flags)
{
	u32 idx = p->pid;	/* unbounded: the verifier refuses counts[idx] */

	counts[idx]++;
	scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, 5000000, enq_flags);
}

void SCHEDCP_OP(rej_exit, struct scx_exit_info *ei)
{
	SCHEDCP_EXIT_RECORD(ei);
}

SCHEDCP_OPS(rejected_ops) = {
	.enqueue = (void *)rej_enqueue,
	.exit = (void *)rej_exit,
	.name = "schedcp_rejected",
};
