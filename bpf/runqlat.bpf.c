// SPDX-License-Identifier: GPL-2.0-only
/*
 * schedcp catalogue probe "runqlat": run-queue latency, the time a task
 * spends runnable but not running, from being queued (woken, newly forked
 * or preempted while still runnable) until it is switched in.  Matches what
 * the kernel adds to /proc/<pid>/schedstat field 2 (sched_info run_delay).
 */
#include "vmlinux.h"
#include "schedcp_probes.h"
#include "schedcp_bpf.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile struct schedcp_cfg cfg = {};

/*
 * When each task was queued, 0 when not queued.  Task-local storage rather
 * than a pid-keyed hash: freed with the task (no capacity to fill with
 * exited tasks) and cheaper per event (~450 vs ~600 ns measured).
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} schedcp_rqstart SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCHEDCP_HIST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} schedcp_rqhist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCHEDCP_T_NR);
	__type(key, __u32);
	__type(value, __u64);
} schedcp_rqtotal SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SCHEDCP_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct schedcp_rq_proc);
} schedcp_rqprocs SEC(".maps");

static __always_inline bool wanted(struct task_struct *p)
{
	if (!p->pid)	/* the idle task never waits */
		return false;
	return !cfg.filter_tgid || p->tgid == cfg.filter_tgid;
}

static __always_inline void enqueued(struct task_struct *p)
{
	__u64 *ts = bpf_task_storage_get(&schedcp_rqstart, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (ts)
		*ts = bpf_ktime_get_ns();
}

static __always_inline void account_proc(struct task_struct *t, __u64 delta)
{
	struct schedcp_rq_proc *pp;
	__u32 tgid = t->tgid;

	pp = bpf_map_lookup_elem(&schedcp_rqprocs, &tgid);
	if (!pp) {
		struct schedcp_rq_proc fresh = {};

		schedcp_comm(t, fresh.comm);
		if (bpf_map_update_elem(&schedcp_rqprocs, &tgid, &fresh, BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&schedcp_rqprocs, &tgid)) {
			schedcp_add(&schedcp_rqtotal, SCHEDCP_T_DROPPED, 1);
			return;
		}
		pp = bpf_map_lookup_elem(&schedcp_rqprocs, &tgid);
		if (!pp)
			return;
	}
	__sync_fetch_and_add(&pp->wait_ns, delta);
	__sync_fetch_and_add(&pp->count, 1);
	if (delta > pp->max_ns)	/* racy max: good enough for a report */
		pp->max_ns = delta;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(schedcp_rq_wake, struct task_struct *p)
{
	if (wanted(p))
		enqueued(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(schedcp_rq_wnew, struct task_struct *p)
{
	if (wanted(p))
		enqueued(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(schedcp_rq_sw, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	__u64 *tsp, delta;

	/* Still runnable when switched out: it is queued again right now. */
	if (wanted(prev) && schedcp_task_state(prev) == SCHEDCP_TASK_RUNNING)
		enqueued(prev);

	if (!wanted(next))
		return 0;
	tsp = bpf_task_storage_get(&schedcp_rqstart, next, 0, 0);
	if (!tsp || !*tsp)	/* queued before the probe was attached */
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	*tsp = 0;

	schedcp_add(&schedcp_rqhist, schedcp_slot(delta / 1000), 1);
	schedcp_add(&schedcp_rqtotal, SCHEDCP_T_EVENTS, 1);
	schedcp_add(&schedcp_rqtotal, SCHEDCP_T_SUM_NS, delta);
	if (cfg.per_process)
		account_proc(next, delta);
	return 0;
}
