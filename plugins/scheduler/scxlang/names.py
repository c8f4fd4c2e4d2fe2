"""Identifier rules for scheduler-language names (params, classes, the scheduler).

A parameter's name becomes a C global (``const volatile u64 <name>``) in a
translation unit that includes the kernel's ``vmlinux.h`` and libbpf's
headers, so a name must not be a C keyword, a reserved prefix of the
generated code or of libbpf/sched_ext, or an identifier the kernel's
headers already declare (typedefs, enum constants).  Class and scheduler
names only appear inside prefixed generated identifiers, but follow the
same rules so that stats and reports read the same everywhere.

The kernel check uses the ``vmlinux.h`` of the micro-VM's guest kernel when
the cache has one (every typedef, enum constant and tag in it), and a fixed
list of well-known kernel globals and typedefs always, so the result does
not depend on the cache for the common cases.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if
    inline int long register restrict return short signed sizeof static struct switch typedef
    union unsigned void volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic
    _Imaginary _Noreturn _Static_assert _Thread_local asm typeof bool true false alignas alignof
    nullptr static_assert thread_local constexpr typeof_unqual
    """.split())
# Declared by vmlinux.h, libbpf's headers or the C environment in every build.
KERNEL_NAMES = frozenset("""
    u8 u16 u32 u64 s8 s16 s32 s64 __u8 __u16 __u32 __u64 __s8 __s16 __s32 __s64 size_t ssize_t
    pid_t uid_t gid_t loff_t off_t time64_t ktime_t umode_t dev_t cpumask_t atomic_t atomic64_t
    current jiffies jiffies_64 init_task nr_cpu_ids cpu_online_mask cpu_possible_mask
    cpu_active_mask nr_cpumask_bits system_state panic printk memcpy memset strlen min max
    likely unlikely barrier container_of offsetof null NULL errno _license license
    """.split())
RESERVED_PREFIXES = ("bpf_", "scx_", "scxl_", "schedcp_", "stat_", "btf_")
IDENT = re.compile(r"^[a-z][a-z0-9_]{0,23}$")


@functools.lru_cache(maxsize=4)
def _header_names(path: str, mtime: float) -> frozenset[str]:
    text = Path(path).read_text(errors="replace")
    names = set(re.findall(r"^typedef\s[^;]*?\b(\w+)\s*(?:\[[^\]]*\])?\s*;", text, re.M))
    names |= set(re.findall(r"^\t(\w+) = -?\w+,?$", text, re.M))  # enum constants
    names |= set(re.findall(r"^(?:struct|union|enum) (\w+) \{", text, re.M))
    return frozenset(names)


def kernel_header_names() -> frozenset[str]:
    """Identifiers in the cached guest kernel's vmlinux.h (empty without a cache)."""
    from plugins.scheduler.microvm import paths

    try:  # not paths.cache_dir(): checking a name must not create the cache
        root = Path(os.environ.get(paths.CACHE_ENV) or paths.DEFAULT_CACHE) / "kernel"
        headers = sorted(root.glob("*/vmlinux.h"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return frozenset()
    if not headers:
        return frozenset()
    return _header_names(str(headers[-1]), headers[-1].stat().st_mtime)


def problem(name: str) -> str | None:
    """Why ``name`` cannot be used as a program identifier (None: it can)."""
    if not IDENT.match(name):
        return "must be 1-24 lower-case letters, digits and '_', starting with a letter"
    if name in C_KEYWORDS:
        return "is a C keyword"
    if name.startswith(RESERVED_PREFIXES):
        return ("starts with a reserved prefix (" + ", ".join(RESERVED_PREFIXES) + ")")
    if name in KERNEL_NAMES or name in kernel_header_names():
        return "collides with a kernel symbol declared in vmlinux.h or libbpf's headers"
    return None
