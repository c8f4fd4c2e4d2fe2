"""Static rules for sched_ext BPF scheduler source (verifier stage 2 for T2 policies).

The rules read C source the way a reviewer would, without compiling it:

- ``include-not-allowed``: only ``#include "scx_common.h"``; no other
  preprocessor file access, no ``#pragma``/``asm`` (compiler output is shown
  in reports, so a reachable file could leak into one);
- ``no-ops`` / ``no-ops-name``: one ops table (``SCHEDCP_OPS`` or
  ``SEC(".struct_ops.link")``) with a ``.name``;
- ``enqueue-no-dsq``: a path through ``ops.enqueue`` that returns (or falls
  off the end) without inserting the task into a dispatch queue
  (``scx_bpf_dsq_insert*``) -- the task would be lost and the watchdog
  eject the scheduler;
- ``dsq-not-consumed`` / ``dsq-not-created``: a task inserted into one of
  the scheduler's own queues that no ``ops.dispatch`` moves to a CPU, or
  that ``scx_bpf_create_dsq`` never creates;
- ``unbounded-loop``: ``while``/``do``/``for`` loops without a constant
  bound (use ``bpf_for``/``bpf_repeat`` or ``for (i = 0; i < N; i++)``);
- ``slice-out-of-bounds``: a constant slice outside 100 us..100 ms, an
  infinite slice (``SCX_SLICE_INF``), or a slice parameter's default out of
  those bounds.

The path analysis follows statements, blocks, ``if``/``else`` (an
if/else inserts only if both branches do), loops (may not run) and
``return``.  It is conservative: calls into the source's own helpers count
when the helper's body inserts on its top level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SLICE_MIN_NS = 100_000
SLICE_MAX_NS = 100_000_000
INSERT_CALLS = ("scx_bpf_dsq_insert", "scx_bpf_dsq_insert_vtime", "scx_bpf_dispatch",
                "scx_bpf_dispatch_vtime")
_INSERT_RE = re.compile(r"\b(" + "|".join(INSERT_CALLS) + r")\s*\(")
_CONSUME_RE = re.compile(r"\b(scx_bpf_dsq_move_to_local|scx_bpf_consume|scx_bpf_dsq_move"
                         r"|scx_bpf_dsq_move_vtime)\s*\(")
_KEYWORDS = ("if", "for", "while", "switch", "do", "return", "else")


def _finding(code: str, message: str, line: int = 0, severity: str = "error") -> dict[str, Any]:
    return {"code": code, "severity": severity, "field": f"scx.source:{line}" if line else
            "scx.source", "message": message + (f" (line {line})" if line else "")}


def strip_comments(text: str) -> str:
    """``text`` with comments and string contents blanked (newlines kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        two = text[i:i + 2]
        if two == "/*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif two == "//":
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text[i] in "\"'":
            quote, j = text[i], i + 1
            while j < n and text[j] != quote and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(quote + " " * (min(j, n) - i - 1) + (quote if j < n else ""))
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _matching(code: str, start: int, open_: str = "{", close: str = "}") -> int:
    """Index just after the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(code)):
        if code[i] == open_:
            depth += 1
        elif code[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(code)


def function_body(code: str, name: str) -> tuple[int, str] | None:
    """(offset, text) of the body of function ``name`` (a SCHEDCP_OP/BPF_PROG or plain C)."""
    pattern = re.compile(r"(?:\b(?:SCHEDCP_OP|SCHEDCP_OP_SLEEPABLE|BPF_PROG|BPF_STRUCT_OPS"
                         r"|BPF_STRUCT_OPS_SLEEPABLE)\s*\(\s*" + re.escape(name) + r"\b"
                         r"|\b" + re.escape(name) + r"\s*\()")
    for match in pattern.finditer(code):
        paren = code.find("(", match.start())
        after = _matching(code, paren, "(", ")")
        rest = code[after:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            start = after + (len(rest) - len(stripped))
            return start, code[start:_matching(code, start)]
    return None


@dataclass
class _Paths:
    code: str
    base: int
    inserting: set[str]
    uncovered: list[int] = field(default_factory=list)

    def line(self, pos: int) -> int:
        return self.code.count("\n", 0, self.base + pos) + 1

    def inserts(self, text: str) -> bool:
        if _INSERT_RE.search(text):
            return True
        return any(re.search(r"\b" + re.escape(f) + r"\s*\(", text) for f in self.inserting)


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _word(s: str, i: int) -> str:
    match = re.match(r"[A-Za-z_]\w*", s[i:])
    return match.group(0) if match else ""


def _statement(p: _Paths, s: str, i: int, seen: bool) -> tuple[int, bool]:
    """Parse one statement at ``s[i]``; return (end, whether every path inserted)."""
    i = _skip_ws(s, i)
    if i >= len(s):
        return i, seen
    if s[i] == "{":
        return _block(p, s, i + 1, seen)
    word = _word(s, i)
    if word == "if":
        cond = s.find("(", i)
        j, then = _statement(p, s, _matching(s, cond, "(", ")"), seen)
        k = _skip_ws(s, j)
        if _word(s, k) == "else":
            j, other = _statement(p, s, k + 4, seen)
            return j, seen or (then and other)
        return j, seen
    if word in ("for", "while", "switch"):
        head = s.find("(", i)
        j, _ = _statement(p, s, _matching(s, head, "(", ")"), seen)
        return j, seen
    if word == "do":
        j, body = _statement(p, s, i + 2, seen)
        k = s.find(";", j)
        return (k + 1 if k >= 0 else len(s)), body
    end, depth = i, 0
    while end < len(s):
        if s[end] in "({[":
            depth += 1
        elif s[end] in ")}]":
            depth -= 1
        elif s[end] == ";" and depth <= 0:
            break
        end += 1
    text = s[i:end]
    if word == "return":
        if not (seen or p.inserts(text)):
            p.uncovered.append(p.line(i))
        return end + 1, True
    return end + 1, seen or p.inserts(text)


def _block(p: _Paths, s: str, i: int, seen: bool) -> tuple[int, bool]:
    while True:
        i = _skip_ws(s, i)
        if i >= len(s) or s[i] == "}":
            return i + 1, seen
        i, seen = _statement(p, s, i, seen)


def enqueue_paths(code: str, body_start: int, body: str, inserting: set[str]) -> list[int]:
    """Lines of paths through ``body`` (from ``{``) that end without an insert."""
    p = _Paths(code, body_start, inserting)
    end, covered = _block(p, body, 1, False)
    if not covered:
        p.uncovered.append(p.line(max(end - 1, 0)))
    return sorted(set(p.uncovered))


def ops_table(code: str) -> dict[str, str] | None:
    """The ops table's ``.field = value`` members (None without one)."""
    match = re.search(r"(?:SCHEDCP_OPS\s*\(\s*\w+\s*\)|SEC\s*\(\s*\"\s*\"\s*\)\s*struct\s+"
                      r"sched_ext_ops\s+\w+)\s*=\s*\{", code)
    if not match:
        return None
    body = code[match.end() - 1:_matching(code, match.end() - 1)]
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"\.(\w+)\s*=\s*([^,}]+)", body)}


def ops_name(text: str) -> str | None:
    """The scheduler's ``.name`` from the (uncommented) source."""
    code = strip_comments(text)
    match = re.search(r"(?:SCHEDCP_OPS\s*\(|struct_ops\.link)", code)
    if not match:
        return None
    name = re.search(r"\.name\s*=\s*\"", code[match.start():])
    if not name:
        return None
    start = match.start() + name.end()
    end = text.find('"', start)
    return text[start:end] if end > start else None


def rodata_params(text: str) -> dict[str, int | None]:
    """``const volatile`` globals (the loader's parameters) and their defaults."""
    code = strip_comments(text)
    out: dict[str, int | None] = {}
    for m in re.finditer(r"\bconst\s+volatile\s+[\w\s]+?\b(\w+)\s*(?:=\s*([^;]+))?;", code):
        value = (m.group(2) or "").strip().lower()
        if value in ("true", "false"):
            out[m.group(1)] = int(value == "true")
            continue
        try:
            out[m.group(1)] = int(value.rstrip("ul"), 0) if value else 0
        except ValueError:
            out[m.group(1)] = None
    return out


def slice_bounds(name: str) -> tuple[int, int] | None:
    """Allowed range of a slice parameter by its unit suffix, or None if not a slice."""
    if not re.search(r"(^|_)slice(_us|_ns|_ms)?$", name):
        return None
    if name.endswith("_ns"):
        return SLICE_MIN_NS, SLICE_MAX_NS
    if name.endswith("_ms"):
        return max(1, SLICE_MIN_NS // 1_000_000), SLICE_MAX_NS // 1_000_000
    return SLICE_MIN_NS // 1000, SLICE_MAX_NS // 1000


def _calls(code: str, regex: re.Pattern[str]) -> list[tuple[int, list[str]]]:
    out = []
    for m in regex.finditer(code):
        paren = m.end() - 1
        inner = code[paren + 1:_matching(code, paren, "(", ")") - 1]
        args, depth, cur = [], 0, ""
        for ch in inner:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            if ch == "," and depth == 0:
                args.append(cur.strip())
                cur = ""
            else:
                cur += ch
        args.append(cur.strip())
        out.append((code.count("\n", 0, m.start()) + 1, args))
    return out


def check(text: str) -> list[dict[str, Any]]:
    """All static findings for one scheduler source (empty: nothing found)."""
    findings: list[dict[str, Any]] = []
    code = strip_comments(text)
    for m in re.finditer(r"^[ \t]*#[ \t]*(\w+)(.*)$", code, re.M):
        line = code.count("\n", 0, m.start()) + 1
        directive, rest = m.group(1), text.splitlines()[line - 1]
        if directive == "include" and not re.search(r"#\s*include\s+\"scx_common\.h\"", rest):
            findings.append(_finding("include-not-allowed", "only #include \"scx_common.h\" is "
                                     "allowed", line))
        elif directive in ("pragma", "embed", "line", "include_next", "import"):
            findings.append(_finding("include-not-allowed", f"#{directive} is not allowed", line))
    for m in re.finditer(r"\b(asm|__asm__|__asm)\b", code):
        findings.append(_finding("include-not-allowed", "inline assembly is not allowed",
                                 code.count("\n", 0, m.start()) + 1))
    table = ops_table(code)
    if table is None:
        return [*findings, _finding("no-ops", "no sched_ext ops table (SCHEDCP_OPS(var) = "
                                    "{...} or SEC(\".struct_ops.link\"))")]
    if not ops_name(text):
        findings.append(_finding("no-ops-name", "the ops table has no .name = \"...\""))

    def target(member: str) -> str | None:
        value = table.get(member)
        return re.sub(r"\(\s*void\s*\*\s*\)", "", value).strip() if value else None

    helpers = {m.group(1) for m in re.finditer(r"\b(\w+)\s*\([^;{)]*\)\s*\{", code)}
    inserting = set()
    for name in helpers - set(_KEYWORDS):
        found = function_body(code, name)
        if found and _INSERT_RE.search(found[1]):
            inserting.add(name)
    enqueue = target("enqueue")
    if enqueue:
        found = function_body(code, enqueue)
        if found is None:
            findings.append(_finding("enqueue-no-dsq", f"ops.enqueue names {enqueue!r}, whose "
                                     "body is not in the source"))
        else:
            for line in enqueue_paths(code, found[0], found[1], inserting - {enqueue}):
                findings.append(_finding(
                    "enqueue-no-dsq", "a path through ops.enqueue ends without inserting the "
                    "task into a dispatch queue (scx_bpf_dsq_insert*): the task would never "
                    "run and the kernel's watchdog would eject the scheduler", line))
    findings += _dsq_findings(code, table, target("dispatch"))
    findings += _loop_findings(code)
    findings += _slice_findings(code, text)
    return findings


def _dsq_findings(code: str, table: dict[str, str], dispatch: str | None) -> list[dict[str, Any]]:
    findings = []
    inserted = {args[1]: line for line, args in _calls(code, _INSERT_RE) if len(args) > 1}
    custom = {dsq: line for dsq, line in inserted.items() if not dsq.startswith("SCX_DSQ_")}
    consumed = {args[0] for _, args in _calls(code, _CONSUME_RE) if args}
    consumed |= {args[1] for _, args in _calls(code, _CONSUME_RE) if len(args) > 1}
    created = {args[0] for _, args in _calls(code, re.compile(r"\bscx_bpf_create_dsq\s*\("))
               if args}
    for dsq, line in sorted(custom.items()):
        if dispatch is None or dsq not in consumed:
            findings.append(_finding(
                "dsq-not-consumed", f"tasks are inserted into queue {dsq} but no ops.dispatch "
                "moves them to a CPU (scx_bpf_dsq_move_to_local)", line))
        if dsq not in created and re.fullmatch(r"\w+", dsq):
            findings.append(_finding("dsq-not-created", f"queue {dsq} is never created "
                                     "(scx_bpf_create_dsq in ops.init)", line))
    return findings


def _loop_findings(code: str) -> list[dict[str, Any]]:
    findings = []
    for m in re.finditer(r"\b(while|for|do)\b", code):
        kind, line = m.group(1), code.count("\n", 0, m.start()) + 1
        before = code[:m.start()].rstrip()
        if kind == "while" and before.endswith("}"):
            continue  # the tail of a do { } while (...): reported at "do"
        if kind == "for":
            head = code[code.find("(", m.start()):_matching(code, code.find("(", m.start()),
                                                              "(", ")")]
            parts = head[1:-1].split(";")
            # Bounded when the condition, or one of its && conjuncts, compares
            # with a constant (``i < MAX_CPUS && i < nr`` stops at MAX_CPUS).
            if len(parts) == 3 and "||" not in parts[1] and any(re.search(
                    r"<=?\s*(\d+|[A-Z_][A-Z0-9_]*|sizeof\s*\(.*\)|ARRAY_SIZE\s*\(.*\))\s*$",
                    conjunct.strip()) for conjunct in parts[1].split("&&")):
                continue
        findings.append(_finding(
            "unbounded-loop", f"'{kind}' loop without a constant bound: use bpf_for(i, 0, N), "
            "bpf_repeat(N) or for (i = 0; i < CONSTANT; i++)", line))
    return findings


def _slice_findings(code: str, text: str) -> list[dict[str, Any]]:
    findings = []
    for line, args in _calls(code, _INSERT_RE):
        if len(args) < 3:
            continue
        value = args[2]
        if "SCX_SLICE_INF" in value:
            findings.append(_finding("slice-out-of-bounds", "an infinite slice (SCX_SLICE_INF) "
                                     "lets a task keep a CPU forever", line))
            continue
        try:
            ns = int(value.rstrip("ULul"), 0)
        except ValueError:
            continue
        if not SLICE_MIN_NS <= ns <= SLICE_MAX_NS:
            findings.append(_finding("slice-out-of-bounds", f"slice {ns} ns outside "
                                     f"{SLICE_MIN_NS}..{SLICE_MAX_NS} ns", line))
    for name, default in rodata_params(text).items():
        bounds = slice_bounds(name)
        if bounds and default is not None and not bounds[0] <= default <= bounds[1]:
            findings.append(_finding("slice-out-of-bounds", f"default {name} = {default} "
                                     f"outside {bounds[0]}..{bounds[1]}"))
    return findings
