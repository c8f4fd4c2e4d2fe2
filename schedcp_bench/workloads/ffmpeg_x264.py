"""ffmpeg-x264: H.264 encodes of a seeded synthetic clip, looped (media throughput).

The driver loops one encode (``ffmpeg`` through ``RUN_DIR/bin``): ``FRAMES``
frames of ffmpeg's ``testsrc2`` pattern at 640x360, 30 fps, with temporal
noise whose generator is seeded from the run's seed (``noise=all_seed=S``:
the same frames for the same seed), encoded with libx264 ``-preset veryfast
-threads NCPU`` to the null muxer (no disk I/O).  No neighbour: the
encoder's threads compete with each other, its lookahead and the frame
source.  Figures: encoded frames per second and the encode's wall
time.
"""

from __future__ import annotations

from pathlib import Path

from schedcp_bench.workload import SLO, Metric, Session
from schedcp_bench.workloads.common import BenchWorkload, good, median, ncpu, tool

FRAMES = 90
SOURCE = "testsrc2=size=640x360:rate=30,noise=alls=25:allf=t:all_seed={seed}"


class FfmpegX264(BenchWorkload):
    """ffmpeg libx264 encodes of a seeded synthetic clip, looped."""

    name = "ffmpeg-x264"
    description = (f"ffmpeg libx264 veryfast encode of {FRAMES} seeded synthetic 640x360 "
                   "frames to the null muxer, NCPU threads, looped")
    packages = ("ffmpeg",)
    commands = ("ffmpeg",)
    goal = "throughput"
    quick = False
    warmup = 0.5
    metrics = (
        Metric("fps", "frames/s", "higher", 1.0, "encoded frames per second (median of runs)"),
        Metric("encode_s", "s", "lower", 0.5, "wall time of one encode (median of runs)"),
    )
    slos = (
        SLO("fps", ">=", 10.0, hard=True),
        SLO("fps", ">=", 83.0, hard=False),
    )

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the driver looping the encode of the clip for ``seed``."""
        session = self.new_session(run_dir)
        argv = [tool(session.dir, "ffmpeg"), "-hide_banner", "-nostdin", "-loglevel", "error",
                "-f", "lavfi", "-i", SOURCE.format(seed=seed), "-frames:v", str(FRAMES),
                "-c:v", "libx264", "-preset", "veryfast", "-threads", str(ncpu()),
                "-f", "null", "-"]
        driver = self.spawn_driver(session, argv)
        session.roles = {"batch": [driver.pid]}
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median encode time and frame rate over the window."""
        recs = good(session.records(t0, t1))
        span = median(r["end"] - r["start"] for r in recs)
        return {"fps": None if not span else FRAMES / span, "encode_s": span}
