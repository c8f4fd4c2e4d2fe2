// SPDX-License-Identifier: GPL-2.0-only
/*
 * scx_loader: load one schedcp sched_ext scheduler and report as JSON lines.
 *
 *   scx_loader [options] OBJECT.bpf.o [name=value ...] [-- COMMAND ARGS...]
 *
 *   --prefix STR      put STR and a space before every output line
 *   --no-attach       open, set parameters, load (BPF verifier), then exit
 *   --partial         attach with SCX_OPS_SWITCH_PARTIAL: only tasks whose policy
 *                     is SCHED_EXT run on the scheduler (the others stay on the
 *                     kernel's fair class)
 *   --monitor-ms N    poll /sys/kernel/sched_ext every N ms (default 100)
 *   --duration-s N    detach after N seconds (default: run until SIGINT/SIGTERM)
 *   --timeout-s N     with COMMAND: kill it after N seconds (default 60)
 *
 * name=value sets a read-only global (const volatile) of the scheduler
 * before load; unknown names and non-integer values are refused.  With a
 * COMMAND the scheduler is attached, the command runs (its output is
 * relayed as "workload" events), then the scheduler is detached.
 *
 * Every line is one JSON object with an "event": open, param, partial, loaded,
 * attached, state, exited (the scheduler's exit record: kind, reason, msg),
 * workload, events, detached, error (stage, errno, message, log = the
 * libbpf/verifier log), final.  Exit status: 0 ok, 1 usage, 2 the
 * scheduler was ejected or exited by itself, 3 open or parameter error,
 * 4 load (verifier) error, 5 attach error, 6 the command failed or timed out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#define SYSFS "/sys/kernel/sched_ext"
#define LOG_MAX (256 * 1024)
/* An error line carries the whole libbpf/verifier log. */
#define JSONL_LINE_MAX (LOG_MAX + 8192)
#include "scx_jsonl.h"
#include "scx_globals.h"

static char *logbuf;
static size_t loglen;
static volatile sig_atomic_t stop_requested;

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	int n;

	if (level == LIBBPF_DEBUG || !logbuf || loglen >= LOG_MAX - 1)
		return 0;
	n = vsnprintf(logbuf + loglen, LOG_MAX - loglen, fmt, ap);
	if (n > 0)
		loglen = loglen + (size_t)n < LOG_MAX ? loglen + (size_t)n : LOG_MAX - 1;
	return 0;
}

static int fail(int code, const char *stage, int err, const char *message)
{
	begin("error");
	kstr("stage", stage);
	kint("errno", err < 0 ? -err : err);
	kstr("message", message);
	kstr("log", logbuf ? logbuf : "");
	end();
	begin("final");
	kint("status", code);
	end();
	return code;
}

/* -- sysfs ------------------------------------------------------------------ */

static bool read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return false;
	buf[n] = 0;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = 0;
	return true;
}

static void sysfs_state(char *buf, size_t size)
{
	if (!read_file(SYSFS "/state", buf, size))
		snprintf(buf, size, "absent");
}

static void emit_events(void)
{
	char buf[8192], *save = NULL, *ln;

	begin("events");
	if (read_file(SYSFS "/nr_rejected", buf, sizeof(buf)))
		kint("nr_rejected", strtoll(buf, NULL, 10));
	key("counters");
	put("{", 1);
	if (read_file(SYSFS "/root/events", buf, sizeof(buf))) {
		bool first = true;

		for (ln = strtok_r(buf, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
			char name[128];
			long long value;

			if (sscanf(ln, "%127s %lld", name, &value) != 2)
				continue;
			if (!first)
				put(",", 1);
			first = false;
			put_str(name);
			snprintf(buf + sizeof(buf) - 32, 32, ":%lld", value);
			put(buf + sizeof(buf) - 32, strlen(buf + sizeof(buf) - 32));
		}
	}
	put("}", 1);
	end();
}

static int set_param(struct bpf_object *obj, const char *arg)
{
	char name[128], msg[512], *endp;
	const char *eq = strchr(arg, '=');
	struct bpf_map *rodata = internal_map(obj, ".rodata");
	struct var_loc loc;
	size_t size;
	char *data;
	long long v;
	unsigned long long u;

	if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof(name)) {
		snprintf(msg, sizeof(msg), "bad parameter %s (want name=integer)", arg);
		return fail(3, "param", EINVAL, msg);
	}
	memcpy(name, arg, (size_t)(eq - arg));
	name[eq - arg] = 0;
	if (!rodata || !find_var(bpf_object__btf(obj), ".rodata", name, &loc)) {
		snprintf(msg, sizeof(msg), "unknown parameter %s (not a const volatile global)", name);
		return fail(3, "param", ENOENT, msg);
	}
	if (!loc.is_int) {
		snprintf(msg, sizeof(msg), "parameter %s is not an integer", name);
		return fail(3, "param", EINVAL, msg);
	}
	errno = 0;
	if (loc.is_signed) {
		v = strtoll(eq + 1, &endp, 0);
		u = (unsigned long long)v;
	} else {
		if (eq[1] == '-')
			errno = ERANGE;
		u = strtoull(eq + 1, &endp, 0);
	}
	if (errno || !eq[1] || *endp ||
	    (loc.size < 8 && !loc.is_signed && u >> (loc.size * 8)) ||
	    (loc.size < 8 && loc.is_signed &&
	     ((long long)u >= (1LL << (loc.size * 8 - 1)) ||
	      (long long)u < -(1LL << (loc.size * 8 - 1))))) {
		snprintf(msg, sizeof(msg), "value %s of %s does not fit %u bytes (%s)", eq + 1,
			 name, loc.size, loc.is_signed ? "signed" : "unsigned");
		return fail(3, "param", ERANGE, msg);
	}
	data = (char *)bpf_map__initial_value(rodata, &size);
	if (!data || loc.offset + loc.size > size)
		return fail(3, "param", EINVAL, "no .rodata image");
	memcpy(data + loc.offset, &u, loc.size);	/* little-endian: low bytes first */
	begin("param");
	kstr("name", name);
	kstr("value", eq + 1);
	end();
	return 0;
}

#include "scx_ops_flags.h"

/* -- main ------------------------------------------------------------------ */

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void)
{
	fprintf(stderr, "usage: scx_loader [--prefix STR] [--no-attach] [--partial] [--monitor-ms N] "
		"[--duration-s N] [--timeout-s N] OBJECT [name=value ...] [-- COMMAND ...]\n");
	return 1;
}

static pid_t spawn(char **argv, int *out_fd)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC))
		return -1;
	pid = fork();
	if (pid == 0) {
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		execvp(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(fds[1]);
	/* Non-blocking: a grandchild that keeps the pipe open must not hang us. */
	fcntl(fds[0], F_SETFL, O_NONBLOCK);
	*out_fd = fds[0];
	return pid;
}

/* Relay complete lines from the command's output as workload events. */
static void relay(int fd, char *buf, size_t *len, size_t cap, bool flush)
{
	ssize_t n = flush ? 0 : read(fd, buf + *len, cap - *len - 1);
	char *start = buf, *nl;

	if (n > 0)
		*len += (size_t)n;
	buf[*len] = 0;
	while ((nl = strchr(start, '\n')) || (flush && *start) || (*len == cap - 1)) {
		if (nl)
			*nl = 0;
		begin("workload");
		kstr("line", start);
		end();
		if (!nl) {
			start = buf + *len;
			break;
		}
		start = nl + 1;
	}
	*len -= (size_t)(start - buf);
	memmove(buf, start, *len);
}

int main(int argc, char **argv)
{
	bool attach = true, partial = false, ejected = false, exit_seen = false, cmd_failed = false;
	long monitor_ms = 100, duration_s = -1, timeout_s = 60;
	char state[64], last_state[64], ops[256] = "", msg[512], switch_all[16];
	char **cmd = NULL, outbuf[4096];
	const char *path;
	struct bpf_object *obj;
	struct bpf_map *map, *ops_map = NULL;
	struct bpf_link *link;
	struct exit_rec rec;
	bool have_rec;
	size_t outlen = 0;
	int i, err, out_fd = -1, status = 0, wstatus = 0;
	pid_t child = -1;
	double t0, started;

	for (i = 1; i < argc && !strncmp(argv[i], "--", 2) && argv[i][2]; i++) {
		if (!strcmp(argv[i], "--no-attach"))
			attach = false;
		else if (!strcmp(argv[i], "--partial"))
			partial = true;
		else if (i + 1 < argc && !strcmp(argv[i], "--prefix"))
			prefix = argv[++i];
		else if (i + 1 < argc && !strcmp(argv[i], "--monitor-ms"))
			monitor_ms = strtol(argv[++i], NULL, 10);
		else if (i + 1 < argc && !strcmp(argv[i], "--duration-s"))
			duration_s = strtol(argv[++i], NULL, 10);
		else if (i + 1 < argc && !strcmp(argv[i], "--timeout-s"))
			timeout_s = strtol(argv[++i], NULL, 10);
		else
			return usage();
	}
	if (i >= argc || monitor_ms < 1)
		return usage();
	path = argv[i++];
	logbuf = calloc(1, LOG_MAX);
	libbpf_set_print(libbpf_log);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);

	obj = bpf_object__open_file(path, NULL);
	if (!obj) {
		snprintf(msg, sizeof(msg), "cannot open %s: %s", path, strerror(errno));
		return fail(3, "open", errno, msg);
	}
	bpf_object__for_each_map(map, obj)
		if (bpf_map__type(map) == BPF_MAP_TYPE_STRUCT_OPS)
			ops_map = map;
	if (!ops_map)
		return fail(3, "open", ENOENT, "no struct_ops map (SEC(\".struct_ops.link\"))");
	begin("open");
	kstr("object", path);
	kstr("struct_ops", bpf_map__name(ops_map));
	end();
	for (; i < argc; i++) {
		if (!strcmp(argv[i], "--")) {
			cmd = argv + i + 1;
			break;
		}
		if ((err = set_param(obj, argv[i])))
			return err;
	}
	if (cmd && !*cmd)
		return usage();
	if (partial && (err = set_partial(obj, ops_map)))
		return err;

	t0 = now_s();
	err = bpf_object__load(obj);
	if (err) {
		snprintf(msg, sizeof(msg), "load failed: %s", strerror(-err));
		return fail(4, "load", err, msg);
	}
	begin("loaded");
	kint("ms", (long long)((now_s() - t0) * 1000));
	end();
	if (!attach) {
		bpf_object__close(obj);
		begin("final");
		kint("status", 0);
		end();
		return 0;
	}

	sysfs_state(last_state, sizeof(last_state));
	link = bpf_map__attach_struct_ops(ops_map);
	if (!link) {
		err = -errno;
		snprintf(msg, sizeof(msg), "attach failed: %s (state was %s)", strerror(-err),
			 last_state);
		return fail(5, "attach", err, msg);
	}
	for (t0 = now_s(); now_s() - t0 < 5; usleep(10000)) {
		sysfs_state(state, sizeof(state));
		if (strcmp(state, "enabling"))
			break;
	}
	read_file(SYSFS "/root/ops", ops, sizeof(ops));
	if (!read_file(SYSFS "/switch_all", switch_all, sizeof(switch_all)))
		snprintf(switch_all, sizeof(switch_all), "?");
	have_rec = exit_record(obj, &rec);
	begin("attached");
	kstr("state", state);
	kstr("ops", ops);
	kstr("switch_all", switch_all);
	kbool("exit_record", have_rec);
	end();
	snprintf(last_state, sizeof(last_state), "%s", state);

	if (cmd) {
		child = spawn(cmd, &out_fd);
		if (child < 0) {
			snprintf(msg, sizeof(msg), "cannot start %s: %s", cmd[0], strerror(errno));
			cmd_failed = true;
			begin("error");
			kstr("stage", "workload");
			kstr("message", msg);
			end();
		}
	}
	started = now_s();
	while (!stop_requested) {
		struct pollfd pfd = { .fd = out_fd, .events = POLLIN };

		if (out_fd >= 0) {
			if (poll(&pfd, 1, (int)monitor_ms) > 0)
				relay(out_fd, outbuf, &outlen, sizeof(outbuf), false);
		} else {
			usleep((useconds_t)monitor_ms * 1000);
		}
		sysfs_state(state, sizeof(state));
		if (strcmp(state, last_state)) {
			begin("state");
			kstr("state", state);
			kint("ms", (long long)((now_s() - started) * 1000));
			end();
			snprintf(last_state, sizeof(last_state), "%s", state);
		}
		if (have_rec && exit_record(obj, &rec) && rec.kind && !exit_seen) {
			exit_seen = true;
			emit_exit(&rec);
		}
		if (strcmp(state, "enabled") && strcmp(state, "enabling")) {
			ejected = true;
			if (!strcmp(state, "disabled"))
				break;
		}
		if (child > 0 && waitpid(child, &wstatus, WNOHANG) == child) {
			relay(out_fd, outbuf, &outlen, sizeof(outbuf), false);
			relay(out_fd, outbuf, &outlen, sizeof(outbuf), true);
			child = -1;
			break;
		}
		if (child > 0 && now_s() - started > (double)timeout_s) {
			begin("error");
			kstr("stage", "workload");
			snprintf(msg, sizeof(msg), "command still running after %ld s: killed",
				 timeout_s);
			kstr("message", msg);
			end();
			kill(child, SIGKILL);
			cmd_failed = true;
		}
		if (!cmd && duration_s >= 0 && now_s() - started >= (double)duration_s)
			break;
	}
	if (child > 0) {	/* stopped early (signal or ejection): end the command */
		kill(child, SIGKILL);
		waitpid(child, &wstatus, 0);
		cmd_failed = true;
	}
	if (cmd && !cmd_failed) {
		cmd_failed = !WIFEXITED(wstatus) || WEXITSTATUS(wstatus);
		begin("workload_done");
		kint("status", WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus));
		kint("ms", (long long)((now_s() - started) * 1000));
		end();
	}
	emit_events();
	emit_stats(obj);
	bpf_link__destroy(link);
	for (t0 = now_s(); now_s() - t0 < 10; usleep(10000)) {
		sysfs_state(state, sizeof(state));
		if (!strcmp(state, "disabled"))
			break;
	}
	/* The kernel calls ops.exit after it sets the state to disabled. */
	for (t0 = now_s(); have_rec && now_s() - t0 < 2; usleep(10000))
		if (exit_record(obj, &rec) && rec.kind)
			break;
	if (have_rec && rec.kind && !exit_seen)
		emit_exit(&rec);
	if (have_rec && rec.kind >= 1024)
		ejected = true;
	begin("detached");
	kstr("state", state);
	kbool("ejected", ejected);
	end();
	bpf_object__close(obj);
	status = ejected ? 2 : cmd_failed ? 6 : 0;
	begin("final");
	kint("status", status);
	end();
	return status;
}
