/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * schedcp's own minimal sched_ext header (BPF side).
 *
 * The kernel's types (struct sched_ext_ops, enum scx_*) come from the
 * vmlinux.h generated from the BTF of the kernel the scheduler runs on;
 * this file adds only the kfunc declarations and macros schedcp's
 * schedulers use, plus the exit record the loader reads (schedcp_exit).
 */
#ifndef SCHEDCP_SCX_COMMON_H
#define SCHEDCP_SCX_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char _license[] SEC("license") = "GPL";

/* sched_ext kfuncs (resolved by name against the running kernel's BTF). */
void scx_bpf_dsq_insert(struct task_struct *p, u64 dsq_id, u64 slice, u64 enq_flags) __ksym;
void scx_bpf_dsq_insert_vtime(struct task_struct *p, u64 dsq_id, u64 slice, u64 vtime,
			      u64 enq_flags) __ksym;
bool scx_bpf_dsq_move_to_local(u64 dsq_id) __ksym;
s32 scx_bpf_create_dsq(u64 dsq_id, s32 node) __ksym;
s32 scx_bpf_select_cpu_dfl(struct task_struct *p, s32 prev_cpu, u64 wake_flags,
			   bool *is_idle) __ksym;
void scx_bpf_kick_cpu(s32 cpu, u64 flags) __ksym;
s32 scx_bpf_dsq_nr_queued(u64 dsq_id) __ksym;
s32 scx_bpf_task_cpu(const struct task_struct *p) __ksym;
u32 scx_bpf_nr_cpu_ids(void) __ksym;

/* One struct_ops callback: SCHEDCP_OP(name, args...) { body }. */
#define SCHEDCP_OP(name, args...) SEC("struct_ops/" #name) BPF_PROG(name, ##args)
/* A sleepable callback (init, init_task may sleep). */
#define SCHEDCP_OP_SLEEPABLE(name, args...) SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

/* The ops table: SCHEDCP_OPS(var) = { .enqueue = (void *)fn, ..., .name = "x" }; */
#define SCHEDCP_OPS(var) SEC(".struct_ops.link") struct sched_ext_ops var

/* Is vtime a before vtime b (wrap-safe)? */
static __always_inline bool schedcp_before(u64 a, u64 b)
{
	return (s64)(a - b) < 0;
}

/*
 * Why the kernel stopped the scheduler: filled by SCHEDCP_EXIT_RECORD in
 * ops.exit, read by the loader from the object's .bss.  kind is written
 * last, so a non-zero kind means the rest is complete.
 */
struct schedcp_exit_rec {
	s32 kind;
	s64 exit_code;
	char reason[128];
	char msg[1024];
};

struct schedcp_exit_rec schedcp_exit;

#define SCHEDCP_EXIT_RECORD(ei)							\
	do {									\
		schedcp_exit.exit_code = (ei)->exit_code;			\
		bpf_probe_read_kernel_str(schedcp_exit.reason,			\
					  sizeof(schedcp_exit.reason), (ei)->reason); \
		bpf_probe_read_kernel_str(schedcp_exit.msg,			\
					  sizeof(schedcp_exit.msg), (ei)->msg);	\
		schedcp_exit.kind = (ei)->kind;					\
	} while (0)

#endif /* SCHEDCP_SCX_COMMON_H */
