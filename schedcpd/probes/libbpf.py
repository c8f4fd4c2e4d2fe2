"""A small ctypes binding to the system libbpf (``libbpf.so.1``).

Only the calls the probe catalogue needs: open a CO-RE object file, set its
``.rodata`` before load, load, attach its programs, read its maps, close.
libbpf 1.x reports errors as a NULL pointer or a negative errno with
``errno`` set; :func:`check` and :func:`check_ptr` turn both into
:class:`LibbpfError`.  libbpf's own log lines go to this module's logger.

Why ctypes and not a binding package: the maintained choices either need
kernel headers (BCC) or are young, pre-1.0 wheels that bundle their own
libbpf build; Debian's libbpf1 is already on every host that runs the
probes, and the ABI used here (about twenty functions) is stable since
libbpf 1.0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Any

_LOGGER = logging.getLogger(__name__)

_LIB_NAMES = ("libbpf.so.1", "libbpf.so")

# libbpf_print_level
_LIBBPF_WARN = 0
_LIBBPF_INFO = 1


class LibbpfError(OSError):
    """A libbpf call failed; ``errno`` holds the error number."""


class OpenOpts(ctypes.Structure):
    """Leading fields of ``struct bpf_object_open_opts`` (libbpf >= 0.1).

    libbpf accepts a shorter struct than its own (``sz`` says how long), so
    only the fields used here are declared.
    """

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
    )


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_load_error: str | None = None
_print_cb: Any = None  # kept referenced: libbpf holds the raw pointer


def _declare(lib: ctypes.CDLL) -> None:
    """Set argument and result types; a missing symbol raises AttributeError."""
    vp, cp, ci, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
    u32 = ctypes.c_uint32
    protos: dict[str, tuple[Any, list[Any]]] = {
        "libbpf_set_print": (ctypes.c_void_p, [_PRINT_FN]),
        "libbpf_strerror": (ci, [ci, cp, sz]),
        "libbpf_num_possible_cpus": (ci, []),
        "bpf_object__open_file": (vp, [cp, ctypes.POINTER(OpenOpts)]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_link__destroy": (ci, [vp]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_map__type": (ci, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__max_entries": (u32, [vp]),
        "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(sz)]),
        "bpf_map__set_initial_value": (ci, [vp, vp, sz]),
        "bpf_map_get_next_key": (ci, [ci, vp, vp]),
        "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _install_print(lib: ctypes.CDLL) -> None:
    """Route libbpf's log lines (printf format + va_list) to logging."""
    global _print_cb
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    vsnprintf = libc.vsnprintf
    # va_list arrives as a pointer on the ABIs that matter (x86-64, arm64).
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    vsnprintf.restype = ctypes.c_int

    def _print(level: int, fmt: bytes | None, args: int | None) -> int:
        # libbpf's debug level logs every ELF section; format only if wanted.
        if level > _LIBBPF_INFO and not _LOGGER.isEnabledFor(logging.DEBUG):
            return 0
        buf = ctypes.create_string_buffer(1024)
        vsnprintf(buf, len(buf), fmt, args)
        text = buf.value.decode(errors="replace").rstrip()
        if level == _LIBBPF_WARN:
            _LOGGER.warning("libbpf: %s", text)
        else:
            _LOGGER.debug("libbpf: %s", text)
        return 0

    _print_cb = _PRINT_FN(_print)
    lib.libbpf_set_print(_print_cb)


def lib() -> ctypes.CDLL:
    """The loaded, declared libbpf; raises :class:`LibbpfError` if unusable."""
    global _lib, _load_error
    with _lock:
        if _lib is not None:
            return _lib
        if _load_error is not None:
            raise LibbpfError(0, _load_error)
        errors = []
        for name in _LIB_NAMES:
            try:
                candidate = ctypes.CDLL(name, use_errno=True)
                _declare(candidate)
            except (OSError, AttributeError) as exc:
                errors.append(f"{name}: {exc}")
                continue
            _install_print(candidate)
            _lib = candidate
            return candidate
        _load_error = "libbpf 1.x not usable (" + "; ".join(errors) + ")"
        raise LibbpfError(0, _load_error)


def unavailable_reason() -> str | None:
    """Why libbpf cannot be used here, or None when it can."""
    try:
        lib()
    except LibbpfError as exc:
        return str(exc.strerror)
    return None


def strerror(err: int) -> str:
    """libbpf's text for a (positive or negative) error number."""
    buf = ctypes.create_string_buffer(256)
    lib().libbpf_strerror(-abs(err), buf, len(buf))
    return buf.value.decode(errors="replace")


def check(rc: int, what: str) -> int:
    """Return ``rc`` or raise :class:`LibbpfError` if it is a negative errno."""
    if rc < 0:
        raise LibbpfError(-rc, f"{what}: {strerror(rc)}")
    return rc


def check_ptr(ptr: int | None, what: str) -> int:
    """Return a non-NULL pointer or raise :class:`LibbpfError` from ``errno``."""
    if not ptr:
        err = ctypes.get_errno() or 22  # EINVAL when libbpf left no errno
        raise LibbpfError(err, f"{what}: {strerror(err)}")
    return ptr


def num_possible_cpus() -> int:
    """Number of possible CPUs, the stride of per-CPU map values."""
    return check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def is_root() -> bool:
    """Loading tracing programs needs root (CAP_BPF + CAP_PERFMON at least)."""
    return os.geteuid() == 0
