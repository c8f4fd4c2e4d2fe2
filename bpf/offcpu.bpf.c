// SPDX-License-Identifier: GPL-2.0-only
/*
 * schedcp catalogue probe "offcpu": time tasks spend off a CPU, from being
 * switched out until switched in again, split into "blocked" (asleep until
 * woken) and "runqueue" (runnable, waiting for a CPU: after the wakeup, or
 * after a preemption).  Log2 histogram of whole off-CPU intervals in us.
 */
#include "vmlinux.h"
#include "schedcp_probes.h"
#include "schedcp_bpf.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile struct schedcp_cfg cfg = {};

/* Per task while it is off CPU (out_ns == 0: on CPU or not yet seen). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct schedcp_oc_task);
} schedcp_octasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCHEDCP_HIST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} schedcp_ochist SEC(".maps");

/* Totals: EVENTS = intervals, SUM_NS = off-CPU ns, AUX1 = blocked ns, AUX2 = runqueue ns. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCHEDCP_T_NR);
	__type(key, __u32);
	__type(value, __u64);
} schedcp_octotal SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SCHEDCP_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct schedcp_oc_proc);
} schedcp_ocprocs SEC(".maps");

static __always_inline bool wanted(struct task_struct *p)
{
	if (!p->pid)
		return false;
	return !cfg.filter_tgid || p->tgid == cfg.filter_tgid;
}

static __always_inline void account_proc(struct task_struct *t, __u64 blocked,
					 __u64 runq)
{
	struct schedcp_oc_proc *pp;
	__u32 tgid = t->tgid;
	__u64 total = blocked + runq;

	pp = bpf_map_lookup_elem(&schedcp_ocprocs, &tgid);
	if (!pp) {
		struct schedcp_oc_proc fresh = {};

		schedcp_comm(t, fresh.comm);
		bpf_map_update_elem(&schedcp_ocprocs, &tgid, &fresh, BPF_NOEXIST);
		pp = bpf_map_lookup_elem(&schedcp_ocprocs, &tgid);
		if (!pp) {
			schedcp_add(&schedcp_octotal, SCHEDCP_T_DROPPED, 1);
			return;
		}
	}
	__sync_fetch_and_add(&pp->blocked_ns, blocked);
	__sync_fetch_and_add(&pp->runqueue_ns, runq);
	__sync_fetch_and_add(&pp->intervals, 1);
	if (total > pp->max_ns)
		pp->max_ns = total;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(schedcp_oc_wake, struct task_struct *p)
{
	struct schedcp_oc_task *tk;

	if (!wanted(p))
		return 0;
	tk = bpf_task_storage_get(&schedcp_octasks, p, 0, 0);
	if (tk && tk->out_ns && !tk->woken_ns)
		tk->woken_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(schedcp_oc_sw, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	struct schedcp_oc_task *tk;
	__u64 now = bpf_ktime_get_ns(), blocked, runq;

	if (wanted(prev)) {
		tk = bpf_task_storage_get(&schedcp_octasks, prev, 0,
					  BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (tk) {
			tk->out_ns = now;
			tk->woken_ns = 0;
			tk->preempted = schedcp_task_state(prev) == SCHEDCP_TASK_RUNNING;
		}
	}

	if (!wanted(next))
		return 0;
	tk = bpf_task_storage_get(&schedcp_octasks, next, 0, 0);
	if (!tk || !tk->out_ns)	/* switched out before the probe was attached */
		return 0;
	if (tk->preempted || !tk->woken_ns || tk->woken_ns < tk->out_ns) {
		/* No wakeup seen: preempted (all runqueue), else count it blocked. */
		blocked = tk->preempted ? 0 : now - tk->out_ns;
		runq = tk->preempted ? now - tk->out_ns : 0;
	} else {
		blocked = tk->woken_ns - tk->out_ns;
		runq = now - tk->woken_ns;
	}
	tk->out_ns = 0;

	schedcp_add(&schedcp_ochist, schedcp_slot((blocked + runq) / 1000), 1);
	schedcp_add(&schedcp_octotal, SCHEDCP_T_EVENTS, 1);
	schedcp_add(&schedcp_octotal, SCHEDCP_T_SUM_NS, blocked + runq);
	schedcp_add(&schedcp_octotal, SCHEDCP_T_AUX1, blocked);
	schedcp_add(&schedcp_octotal, SCHEDCP_T_AUX2, runq);
	if (cfg.per_process)
		account_proc(next, blocked, runq);
	return 0;
}
