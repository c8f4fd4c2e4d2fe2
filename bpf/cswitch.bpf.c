// SPDX-License-Identifier: GPL-2.0-only
/*
 * schedcp catalogue probe "cswitch": context switches (voluntary and
 * involuntary, counted the way the kernel counts nvcsw/nivcsw for
 * /proc/<pid>/status) and CPU migrations (sched_migrate_task, the event
 * behind se.nr_migrations) per process.
 */
#include "vmlinux.h"
#include "schedcp_probes.h"
#include "schedcp_bpf.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile struct schedcp_cfg cfg = {};

/* Totals: EVENTS = switches, AUX1 = voluntary, AUX2 = involuntary, AUX3 = migrations. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCHEDCP_T_NR);
	__type(key, __u32);
	__type(value, __u64);
} schedcp_cstotal SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SCHEDCP_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct schedcp_cs_proc);
} schedcp_csprocs SEC(".maps");

static __always_inline bool wanted(struct task_struct *p)
{
	if (!p->pid)
		return false;
	return !cfg.filter_tgid || p->tgid == cfg.filter_tgid;
}

static __always_inline struct schedcp_cs_proc *proc_of(struct task_struct *t)
{
	struct schedcp_cs_proc *pp;
	__u32 tgid = t->tgid;

	pp = bpf_map_lookup_elem(&schedcp_csprocs, &tgid);
	if (pp)
		return pp;
	{
		struct schedcp_cs_proc fresh = {};

		schedcp_comm(t, fresh.comm);
		bpf_map_update_elem(&schedcp_csprocs, &tgid, &fresh, BPF_NOEXIST);
	}
	pp = bpf_map_lookup_elem(&schedcp_csprocs, &tgid);
	if (!pp)
		schedcp_add(&schedcp_cstotal, SCHEDCP_T_DROPPED, 1);
	return pp;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(schedcp_cs_sw, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct schedcp_cs_proc *pp;
	/* __schedule() charges nvcsw only for a non-preempted blocking switch. */
	bool voluntary = !preempt && prev_state != SCHEDCP_TASK_RUNNING;

	if (!wanted(prev))
		return 0;
	schedcp_add(&schedcp_cstotal, SCHEDCP_T_EVENTS, 1);
	schedcp_add(&schedcp_cstotal, voluntary ? SCHEDCP_T_AUX1 : SCHEDCP_T_AUX2, 1);
	if (!cfg.per_process)
		return 0;
	pp = proc_of(prev);
	if (!pp)
		return 0;
	if (voluntary)
		__sync_fetch_and_add(&pp->voluntary, 1);
	else
		__sync_fetch_and_add(&pp->involuntary, 1);
	return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(schedcp_cs_mig, struct task_struct *p, int dest_cpu)
{
	struct schedcp_cs_proc *pp;

	if (!wanted(p))
		return 0;
	schedcp_add(&schedcp_cstotal, SCHEDCP_T_AUX3, 1);
	if (!cfg.per_process)
		return 0;
	pp = proc_of(p);
	if (pp)
		__sync_fetch_and_add(&pp->migrations, 1);
	return 0;
}
