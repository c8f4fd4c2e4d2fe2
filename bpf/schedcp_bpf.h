/* SPDX-License-Identifier: GPL-2.0-only */
/* Helpers shared by the schedcp catalogue probes (BPF side only). */
#ifndef SCHEDCP_BPF_H
#define SCHEDCP_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* Kernels before 5.14 called task_struct::__state "state". */
struct task_struct___pre514 {
	volatile long state;
} __attribute__((preserve_access_index));

static __always_inline __u32 schedcp_task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

/* Histogram slot of a duration in microseconds (see schedcp_probes.h). */
static __always_inline __u32 schedcp_slot(__u64 us)
{
	__u32 r = 0;

	if (!us)
		return 0;
	if (us >> 32) { us >>= 32; r += 32; }
	if (us >> 16) { us >>= 16; r += 16; }
	if (us >> 8) { us >>= 8; r += 8; }
	if (us >> 4) { us >>= 4; r += 4; }
	if (us >> 2) { us >>= 2; r += 2; }
	if (us >> 1) { r += 1; }
	r += 1;
	return r < SCHEDCP_HIST_SLOTS ? r : SCHEDCP_HIST_SLOTS - 1;
}

/* Add to one slot of a per-CPU u64 array; per-CPU, so no atomics needed. */
static __always_inline void schedcp_add(void *map, __u32 idx, __u64 val)
{
	__u64 *slot = bpf_map_lookup_elem(map, &idx);

	if (slot)
		*slot += val;
}

/* Name of the process (thread-group leader) a task belongs to. */
static __always_inline void schedcp_comm(struct task_struct *t, char *dst)
{
	struct task_struct *leader = BPF_CORE_READ(t, group_leader);

	bpf_probe_read_kernel_str(dst, SCHEDCP_COMM_LEN, &leader->comm);
}

#endif
