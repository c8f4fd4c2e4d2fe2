"""lua-build: a parallel build of a real C project, Lua 5.4 from its Debian source package.

``prepare`` fetches the Debian 12 source package ``lua5.4`` once into the
cache with ``apt-get source --download-only`` and unpacks it with
``dpkg-source -x --skip-patches``: the upstream tree of the package, since
Debian's patches turn the build into a libtool one (a shared library, every
file compiled as C and as C++) that needs libtool.  It does not touch the
system's APT configuration: a private sources list (``deb-src`` of the
Debian mirror, checked with the Debian archive keyring) and private
list/cache directories under the cache are passed with ``-o``.  ``start``
copies the tree into the run directory; the driver loops one unit: ``make
clean`` then ``make -j NCPU linux`` in ``src/`` (Lua's own Makefile, ``-O2``:
33 C files, liblua.a, lua and luac); a build that fails fails the unit.
The compiler, ar and ranlib run through ``RUN_DIR/bin`` links and ``TMPDIR``
is in the run directory, so every process of the build names the run.  The
unit's figure is its wall time.  The build is deterministic; there is no seed
to take.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    median,
    ncpu,
    python_env,
    tool,
)

PACKAGE = "lua5.4"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
UNIT = ("{make} -s -C {src} clean && "
        "{make} -s -C {src} -j{n} linux CC={cc} AR='{ar} rcu' RANLIB={ranlib} && "
        "test -x {src}/lua && test -x {src}/luac")


def fetch_source(cache: Path, package: str = PACKAGE) -> Path:
    """The unpacked source tree of ``package`` under ``cache/debsrc`` (fetched once)."""
    base = cache / "debsrc-upstream"
    found = sorted(p for p in base.glob(f"{package}-*") if (p / "src" / "Makefile").is_file())
    if found:
        return found[-1]
    if shutil.which("apt-get") is None or shutil.which("dpkg-source") is None:
        raise RuntimeError("apt-get and dpkg-source (dpkg-dev) are needed to fetch "
                           f"the {package} source package")
    apt = cache / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    signed = f" [signed-by={KEYRING}]" if Path(KEYRING).is_file() else ""
    sources.write_text(f"deb-src{signed} {MIRROR} {SUITE} main\n")
    opts = ["-q", "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::State::Lists={apt}/lists",
            "-o", f"Dir::Cache={apt}/cache", "-o", "APT::Sandbox::User=root"]
    work = base / ".fetch"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for argv in (["apt-get", *opts, "update"],
                 ["apt-get", *opts, "source", "--download-only", package]):
        out = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=False,
                             timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:1] + argv[-2:])} failed "
                               f"(the Debian mirror {MIRROR} must be reachable once): "
                               f"{out.stderr.strip()[-600:]}")
    dscs = sorted(work.glob(f"{package}_*.dsc"))
    if len(dscs) != 1:
        raise RuntimeError(f"apt-get source {package}: expected one .dsc, got {dscs}")
    # Debian's patches turn the build into a libtool one (shared library, C and
    # C++ objects); the benchmark builds the upstream tree of the same package.
    out = subprocess.run(["dpkg-source", "-x", "--skip-patches", dscs[0].name,
                          f"{package}-upstream"], cwd=work, capture_output=True, text=True,
                         check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"dpkg-source -x {dscs[0].name} failed: {out.stderr.strip()[-600:]}")
    trees = [p for p in work.glob(f"{package}-*") if p.is_dir()]
    if len(trees) != 1 or not (trees[0] / "src" / "Makefile").is_file():
        raise RuntimeError(f"apt-get source {package}: no unpacked tree with src/Makefile")
    target = base / trees[0].name
    trees[0].replace(target)
    shutil.rmtree(work, ignore_errors=True)
    return target


class LuaBuild(BenchWorkload):
    """make -j NCPU of Lua 5.4 (Debian source package), rebuilt again and again."""

    name = "lua-build"
    description = ("make -j NCPU clean+build of Lua 5.4 from the Debian source package "
                   "(apt-get source lua5.4), looped")
    packages = ("make", "gcc", "libc6-dev", "dpkg-dev", "debian-archive-keyring")
    commands = ("make", "cc", "ar", "ranlib", "apt-get", "dpkg-source")
    goal = "makespan"
    quick = False
    warmup = 0.5
    #: a window must hold a whole build
    min_window = 10.0
    metrics = (Metric("makespan_s", "s", "lower", 1.0,
                      "wall time of one clean build (median of builds)"),)
    slos = (
        SLO("makespan_s", "<=", 60.0, hard=True),
        SLO("makespan_s", "<=", 4.5, hard=False),
    )

    def __init__(self) -> None:
        super().__init__()
        self.source: Path | None = None

    def prepare(self, cache: Path) -> None:
        """Fetch and unpack the source package into the cache (once)."""
        super().prepare(cache)
        self.source = fetch_source(Path(cache))

    def start(self, run_dir: Path, seed: int) -> Session:
        """Copy the source tree into the run and start the driver looping the build."""
        if self.source is None:
            raise RuntimeError(f"{self.name}: call prepare(cache) before start()")
        session = self.new_session(run_dir)
        tree = session.dir / "lua"
        if not tree.exists():
            shutil.copytree(self.source, tree, symlinks=True)
        tmp = session.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        d = session.dir
        script = UNIT.format(make=tool(d, "make"), src=tree / "src", n=ncpu(),
                             cc=tool(d, "cc"), ar=tool(d, "ar"), ranlib=tool(d, "ranlib"))
        env = dict(python_env(), TMPDIR=str(tmp))
        driver = self.spawn_driver(session, [tool(d, "sh"), "-c", script], env=env)
        session.roles = {"build": [driver.pid], "batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median wall time of the builds inside the window."""
        recs = good(session.records(t0, t1))
        return {"makespan_s": median(r["end"] - r["start"] for r in recs)}
