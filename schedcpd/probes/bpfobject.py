"""One loaded BPF object file: its programs, their links, its maps.

A thin, owning wrapper over the libbpf binding.  :class:`BpfObject` is
thread-safe in the one way the manager needs: :meth:`BpfObject.close` may be
called from any thread at any time, also while :meth:`BpfObject.load` or
:meth:`BpfObject.attach` runs in a worker thread, and waits for them, so the
C object is never freed under a running call.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from schedcpd.probes import libbpf

_LOGGER = logging.getLogger(__name__)

# enum bpf_map_type values whose lookups return one value per possible CPU.
_PERCPU_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, ...


class BpfMap:
    """A map of a loaded object, read with raw byte keys and values."""

    def __init__(self, handle: int, name: str) -> None:
        lib = libbpf.lib()
        self.name = name
        self.fd = libbpf.check(lib.bpf_map__fd(handle), f"bpf_map__fd({name})")
        self.key_size = int(lib.bpf_map__key_size(handle))
        self.value_size = int(lib.bpf_map__value_size(handle))
        self.max_entries = int(lib.bpf_map__max_entries(handle))
        self.percpu = lib.bpf_map__type(handle) in _PERCPU_TYPES
        # The kernel returns per-CPU values padded to 8 bytes, one per CPU.
        self.stride = (self.value_size + 7) // 8 * 8 if self.percpu else self.value_size
        self.ncpus = libbpf.num_possible_cpus() if self.percpu else 1

    def lookup(self, key: bytes) -> list[bytes] | None:
        """Value(s) stored at ``key``: one per CPU for per-CPU maps, else one."""
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vbuf = ctypes.create_string_buffer(self.stride * self.ncpus)
        rc = libbpf.lib().bpf_map_lookup_elem(self.fd, kbuf, vbuf)
        if rc == -errno.ENOENT:
            return None
        libbpf.check(rc, f"lookup in {self.name}")
        raw = vbuf.raw
        return [
            raw[i * self.stride : i * self.stride + self.value_size] for i in range(self.ncpus)
        ]

    def keys(self) -> Iterator[bytes]:
        """Iterate over the keys (a hash map may change while iterating)."""
        lib = libbpf.lib()
        cur = None
        nxt = ctypes.create_string_buffer(self.key_size)
        for _ in range(self.max_entries + 1):
            rc = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if rc == -errno.ENOENT:
                return
            libbpf.check(rc, f"next key in {self.name}")
            key = nxt.raw
            yield key
            cur = ctypes.create_string_buffer(key, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a map that is not per-CPU."""
        for key in self.keys():
            values = self.lookup(key)
            if values is not None:
                yield key, values[0]

    def sum_u64_array(self) -> list[int]:
        """An array of u64 (per-CPU ones summed over CPUs), index by index."""
        out = []
        for idx in range(self.max_entries):
            values = self.lookup(idx.to_bytes(4, "little")) or []
            out.append(sum(int.from_bytes(v[:8], "little") for v in values))
        return out


class BpfObject:
    """An object file opened, loaded and attached through libbpf."""

    def __init__(self, path: Path, object_name: str) -> None:
        self.path = path
        self.object_name = object_name
        self._obj: int | None = None
        self._links: list[int] = []
        self._programs: list[str] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def program_names(self) -> list[str]:
        """Names of the object's programs (known after :meth:`load`)."""
        return list(self._programs)

    @property
    def attached(self) -> bool:
        """Whether any program is attached now."""
        return bool(self._links)

    def load(self, rodata: bytes | None = None) -> None:
        """Open the file, set ``.rodata`` (if given, exactly its size) and load."""
        lib = libbpf.lib()
        with self._lock:
            if self._closed:
                raise libbpf.LibbpfError(errno.ECANCELED, f"{self.object_name}: closed")
            opts = libbpf.OpenOpts(
                sz=ctypes.sizeof(libbpf.OpenOpts), object_name=self.object_name.encode()
            )
            ctypes.set_errno(0)
            obj = lib.bpf_object__open_file(str(self.path).encode(), ctypes.byref(opts))
            self._obj = libbpf.check_ptr(obj, f"open {self.path}")
            if rodata is not None:
                self._set_rodata(rodata)
            libbpf.check(lib.bpf_object__load(self._obj), f"load {self.path}")
            prog = lib.bpf_object__next_program(self._obj, None)
            while prog:
                self._programs.append(lib.bpf_program__name(prog).decode())
                prog = lib.bpf_object__next_program(self._obj, prog)

    def _set_rodata(self, rodata: bytes) -> None:
        lib = libbpf.lib()
        ctypes.set_errno(0)
        handle = libbpf.check_ptr(
            lib.bpf_object__find_map_by_name(self._obj, b".rodata"), "find .rodata"
        )
        size = ctypes.c_size_t(0)
        lib.bpf_map__initial_value(handle, ctypes.byref(size))
        if size.value != len(rodata):
            raise libbpf.LibbpfError(
                errno.EINVAL,
                f"{self.path}: .rodata is {size.value} bytes, config is {len(rodata)}"
                " (object and schedcpd out of step; rebuild with make -C bpf)",
            )
        buf = ctypes.create_string_buffer(rodata, len(rodata))
        libbpf.check(
            lib.bpf_map__set_initial_value(handle, buf, len(rodata)), "set .rodata"
        )

    def attach(self) -> None:
        """Attach every program (tp_btf: by its section name)."""
        lib = libbpf.lib()
        with self._lock:
            if self._closed or self._obj is None:
                raise libbpf.LibbpfError(errno.ECANCELED, f"{self.object_name}: not loaded")
            prog = lib.bpf_object__next_program(self._obj, None)
            while prog:
                name = lib.bpf_program__name(prog).decode()
                ctypes.set_errno(0)
                link = libbpf.check_ptr(lib.bpf_program__attach(prog), f"attach {name}")
                self._links.append(link)
                prog = lib.bpf_object__next_program(self._obj, prog)

    def detach(self) -> None:
        """Destroy every link; the programs stop running, maps stay readable."""
        with self._lock:
            self._detach_locked()

    def _detach_locked(self) -> None:
        lib = libbpf.lib()
        while self._links:
            rc = lib.bpf_link__destroy(self._links.pop())
            if rc < 0:
                _LOGGER.warning("%s: detach failed: %s", self.object_name, libbpf.strerror(rc))

    def map(self, name: str) -> BpfMap:
        """A map of the loaded object by its name in the C source."""
        with self._lock:
            if self._obj is None or self._closed:
                raise libbpf.LibbpfError(errno.EBADF, f"{self.object_name}: not loaded")
            ctypes.set_errno(0)
            handle = libbpf.lib().bpf_object__find_map_by_name(self._obj, name.encode())
            return BpfMap(libbpf.check_ptr(handle, f"find map {name}"), name)

    def close(self) -> None:
        """Detach and free everything; idempotent and safe from any thread."""
        with self._lock:
            self._closed = True
            self._detach_locked()
            if self._obj is not None:
                libbpf.lib().bpf_object__close(self._obj)
                self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
