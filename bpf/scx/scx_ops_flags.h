/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * scx_ops_flags.h: set sched_ext ops flags in a scheduler object before load
 * (part of scx_loader.c, which defines fail() and the JSON-lines writer).
 */
#ifndef SCHEDCP_SCX_OPS_FLAGS_H
#define SCHEDCP_SCX_OPS_FLAGS_H

/* The value of enumerator NAME in BTF, or false when BTF has none. */
static bool enum_value(const struct btf *btf, const char *name, long long *value)
{
	int n = (int)btf__type_cnt(btf), id, i;

	for (id = 1; btf && id < n; id++) {
		const struct btf_type *t = btf__type_by_id(btf, id);

		if (btf_is_enum(t)) {
			const struct btf_enum *e = btf_enum(t);

			for (i = 0; i < btf_vlen(t); i++, e++)
				if (!strcmp(btf__name_by_offset(btf, e->name_off), name)) {
					*value = e->val;
					return true;
				}
		} else if (btf_is_enum64(t)) {
			const struct btf_enum64 *e = btf_enum64(t);

			for (i = 0; i < btf_vlen(t); i++, e++)
				if (!strcmp(btf__name_by_offset(btf, e->name_off), name)) {
					*value = (long long)btf_enum64_value(e);
					return true;
				}
		}
	}
	return false;
}

/*
 * Set SCX_OPS_SWITCH_PARTIAL in the ops table's "flags" before load, as a
 * skeleton's ops->flags |= ... does.  The flag's value comes from the
 * running kernel's BTF (the scheduler's own BTF only has the types it uses).
 */
static int set_partial(struct bpf_object *obj, struct bpf_map *ops_map)
{
	struct btf *btf = bpf_object__btf(obj), *kbtf = btf__load_vmlinux_btf();
	const struct btf_type *t;
	const struct btf_member *m;
	long long flag = 0;
	__u64 flags;
	size_t size;
	char *data;
	int id, i;
	bool found = false;

	if (!kbtf || !enum_value(kbtf, "SCX_OPS_SWITCH_PARTIAL", &flag)) {
		btf__free(kbtf);
		return fail(3, "param", ENOENT,
			    "the kernel's BTF has no SCX_OPS_SWITCH_PARTIAL (no sched_ext?)");
	}
	btf__free(kbtf);
	id = btf__find_by_name_kind(btf, "sched_ext_ops", BTF_KIND_STRUCT);
	data = (char *)bpf_map__initial_value(ops_map, &size);
	if (id < 0 || !data)
		return fail(3, "param", ENOENT, "no sched_ext_ops table to set flags in");
	t = btf__type_by_id(btf, id);
	m = btf_members(t);
	for (i = 0; i < btf_vlen(t); i++, m++) {
		__u32 off = btf_member_bit_offset(t, i) / 8;

		if (strcmp(btf__name_by_offset(btf, m->name_off), "flags"))
			continue;
		if (off + sizeof(flags) > size)
			break;
		memcpy(&flags, data + off, sizeof(flags));
		flags |= (__u64)flag;
		memcpy(data + off, &flags, sizeof(flags));
		found = true;
		break;
	}
	if (!found)
		return fail(3, "param", ENOENT, "sched_ext_ops has no flags member");
	begin("partial");
	kint("flags", (long long)flags);
	kint("switch_partial", flag);
	end();
	return 0;
}

#endif
