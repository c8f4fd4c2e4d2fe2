/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * scx_globals.h: a loaded scheduler's global variables, read by scx_loader.
 *
 * find_var() locates a global in a data section (.rodata, .bss) through
 * the object's BTF; internal_map() finds that section's map.  From the live
 * .bss the loader reads the scheduler's exit record (schedcp_exit, see
 * scx_common.h) and its integer counters (a "stats" event).
 * Header-only, after scx_jsonl.h: scx_loader is built from one translation
 * unit.
 */
#ifndef SCX_GLOBALS_H
#define SCX_GLOBALS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "scx_jsonl.h"

/* -- BTF: find a global variable in a data section ------------------------- */

struct var_loc {
	__u32 offset, size;
	bool is_signed, is_int;
};

static bool find_var(struct btf *btf, const char *sec, const char *name, struct var_loc *loc)
{
	int id = btf__find_by_name_kind(btf, sec, BTF_KIND_DATASEC);
	const struct btf_type *t;
	const struct btf_var_secinfo *vs;
	int i;

	if (id < 0)
		return false;
	t = btf__type_by_id(btf, id);
	vs = btf_var_secinfos(t);
	for (i = 0; i < btf_vlen(t); i++, vs++) {
		const struct btf_type *var = btf__type_by_id(btf, vs->type);
		const struct btf_type *vt;
		int tid;

		if (strcmp(btf__name_by_offset(btf, var->name_off), name))
			continue;
		loc->offset = vs->offset;
		loc->size = vs->size;
		tid = btf__resolve_type(btf, var->type);
		vt = tid >= 0 ? btf__type_by_id(btf, tid) : NULL;
		loc->is_int = vt && (btf_is_int(vt) || btf_is_enum(vt)) && vs->size <= 8;
		loc->is_signed = vt && btf_is_int(vt) && (btf_int_encoding(vt) & BTF_INT_SIGNED);
		return true;
	}
	return false;
}

static struct bpf_map *internal_map(struct bpf_object *obj, const char *suffix)
{
	struct bpf_map *map;
	size_t ls = strlen(suffix);

	bpf_object__for_each_map(map, obj) {
		const char *n = bpf_map__name(map);
		size_t ln = strlen(n);

		if (bpf_map__is_internal(map) && ln >= ls && !strcmp(n + ln - ls, suffix))
			return map;
	}
	return NULL;
}

/* -- the exit record (schedcp_exit in .bss, see scx_common.h) ------------- */

struct exit_rec {
	int32_t kind;
	int32_t pad;
	int64_t exit_code;
	char reason[128];
	char msg[1024];
};

/* Copy the live .bss (NULL without one); the caller frees it. */
static char *read_bss(struct bpf_object *obj)
{
	struct bpf_map *bss = internal_map(obj, ".bss");
	__u32 zero = 0;
	char *buf;

	if (!bss || !(buf = calloc(1, bpf_map__value_size(bss))))
		return NULL;
	if (bpf_map_lookup_elem(bpf_map__fd(bss), &zero, buf)) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* The exit record, or one with kind 0 while the scheduler runs. */
static bool exit_record(struct bpf_object *obj, struct exit_rec *rec)
{
	struct var_loc loc;
	char *bss;

	memset(rec, 0, sizeof(*rec));
	if (!find_var(bpf_object__btf(obj), ".bss", "schedcp_exit", &loc) ||
	    loc.size < sizeof(*rec) || !(bss = read_bss(obj)))
		return false;
	memcpy(rec, bss + loc.offset, sizeof(*rec));
	rec->reason[sizeof(rec->reason) - 1] = 0;
	rec->msg[sizeof(rec->msg) - 1] = 0;
	free(bss);
	return true;
}

/* The scheduler's own integer counters in .bss, as a "stats" event. */
static void emit_stats(struct bpf_object *obj)
{
	struct btf *btf = bpf_object__btf(obj);
	int id = btf__find_by_name_kind(btf, ".bss", BTF_KIND_DATASEC);
	const struct btf_var_secinfo *vs;
	const struct btf_type *t;
	char *bss = read_bss(obj);
	int i;

	if (id < 0 || !bss) {
		free(bss);
		return;
	}
	t = btf__type_by_id(btf, id);
	begin("stats");
	vs = btf_var_secinfos(t);
	for (i = 0; i < btf_vlen(t); i++, vs++) {
		const struct btf_type *var = btf__type_by_id(btf, vs->type);
		int tid = btf__resolve_type(btf, var->type);
		const struct btf_type *vt = tid >= 0 ? btf__type_by_id(btf, tid) : NULL;
		unsigned long long v = 0;

		if (!vt || !btf_is_int(vt) || (vs->size != 4 && vs->size != 8))
			continue;
		memcpy(&v, bss + vs->offset, vs->size);
		kint(btf__name_by_offset(btf, var->name_off), (long long)v);
	}
	end();
	free(bss);
}

static void emit_exit(const struct exit_rec *rec)
{
	begin("exited");
	kint("kind", rec->kind);
	kint("exit_code", rec->exit_code);
	kbool("error", rec->kind >= 1024);
	kstr("reason", rec->reason);
	kstr("msg", rec->msg);
	end();
}

#endif /* SCX_GLOBALS_H */
