/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * scx_jsonl.h: the JSON-lines writer of scx_loader.
 *
 * One line per event: begin("name"), then kstr/kint/kbool per field, then
 * end() prints it (after "prefix " when --prefix was given) and flushes.
 * Strings are escaped for JSON; a line that would not fit in
 * JSONL_LINE_MAX bytes is cut, never overrun.  Single-threaded, one line
 * at a time.  Header-only: scx_loader is built from one translation unit.
 */
#ifndef SCX_JSONL_H
#define SCX_JSONL_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#ifndef JSONL_LINE_MAX
#define JSONL_LINE_MAX 8192
#endif

static const char *prefix = "";
static char line[JSONL_LINE_MAX];
static size_t pos;

static void put(const char *s, size_t n)
{
	if (pos + n >= sizeof(line) - 4)
		n = sizeof(line) - 4 - pos;
	memcpy(line + pos, s, n);
	pos += n;
}

static void put_str(const char *s)
{
	char esc[8];

	put("\"", 1);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(esc, 2);
		} else if (c == '\n') {
			put("\\n", 2);
		} else if (c == '\t') {
			put("\\t", 2);
		} else if (c < 0x20 || c == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			put(esc, 6);
		} else {
			put((const char *)&c, 1);
		}
	}
	put("\"", 1);
}

static void begin(const char *event)
{
	pos = 0;
	put("{\"event\":", 9);
	put_str(event);
}

static void key(const char *k)
{
	put(",", 1);
	put_str(k);
	put(":", 1);
}

static void kstr(const char *k, const char *v)
{
	key(k);
	put_str(v);
}

static void kint(const char *k, long long v)
{
	char buf[32];

	key(k);
	put(buf, (size_t)snprintf(buf, sizeof(buf), "%lld", v));
}

static void kbool(const char *k, bool v)
{
	key(k);
	put(v ? "true" : "false", v ? 4 : 5);
}

static void end(void)
{
	line[pos++] = '}';
	line[pos] = 0;
	printf("%s%s%s\n", prefix, *prefix ? " " : "", line);
	fflush(stdout);
}

#endif /* SCX_JSONL_H */
