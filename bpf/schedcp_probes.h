/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Layouts shared by the schedcp catalogue probes and their Python reader
 * (schedcpd/probes/catalogue.py mirrors every struct here with ctypes;
 * change both together).
 */
#ifndef SCHEDCP_PROBES_H
#define SCHEDCP_PROBES_H

#define SCHEDCP_HIST_SLOTS 32	/* slot 0: [0,1) us; slot k: [2^(k-1), 2^k) us */
#define SCHEDCP_MAX_PROCS 8192	/* per-process entries a probe keeps */
#define SCHEDCP_COMM_LEN 16
#define SCHEDCP_TASK_RUNNING 0

/* Set through .rodata before load; the verifier prunes disabled paths. */
struct schedcp_cfg {
	__u32 filter_tgid;	/* 0 = every process */
	__u32 per_process;	/* 1 = keep the per-process table */
};

/* Index into the per-CPU "totals" array of each probe. */
enum schedcp_total {
	SCHEDCP_T_EVENTS = 0,	/* intervals (or switches) counted */
	SCHEDCP_T_SUM_NS,	/* total nanoseconds of those intervals */
	SCHEDCP_T_DROPPED,	/* per-process updates lost to a full table */
	SCHEDCP_T_AUX1,
	SCHEDCP_T_AUX2,
	SCHEDCP_T_AUX3,
	SCHEDCP_T_NR,
};

struct schedcp_rq_proc {	/* runqlat: per process (tgid) */
	__u64 wait_ns;
	__u64 count;
	__u64 max_ns;
	char comm[SCHEDCP_COMM_LEN];
};

struct schedcp_cs_proc {	/* cswitch: per process (tgid) */
	__u64 voluntary;
	__u64 involuntary;
	__u64 migrations;
	char comm[SCHEDCP_COMM_LEN];
};

struct schedcp_oc_task {	/* offcpu: per thread while it is off CPU */
	__u64 out_ns;		/* when it left the CPU */
	__u64 woken_ns;		/* when it was woken, 0 if not (yet) */
	__u32 preempted;	/* left the CPU still runnable */
	__u32 pad;
};

struct schedcp_oc_proc {	/* offcpu: per process (tgid) */
	__u64 blocked_ns;	/* sleeping: switched out until woken */
	__u64 runqueue_ns;	/* runnable but waiting for a CPU */
	__u64 intervals;
	__u64 max_ns;
	char comm[SCHEDCP_COMM_LEN];
};

#endif
