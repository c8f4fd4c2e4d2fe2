"""Start schedcpd on a private system-like bus and show what schedcpctl sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import PrivateBus, SchedcpdProcess

CTL = str(Path(sys.executable).parent / "schedcpctl")


def main() -> None:
    """Run the demo."""
    with PrivateBus() as bus, SchedcpdProcess(bus.address) as daemon:
        print(f"schedcpd pid {daemon.proc.pid} on {bus.address}\n", flush=True)
        for args in (["status"], ["subsystems"]):
            print(f"$ schedcpctl {' '.join(args)}", flush=True)
            subprocess.run([CTL, "--bus", bus.address, *args], check=True)
            print(flush=True)
    print("schedcpd stopped; every managed value was restored.")


if __name__ == "__main__":
    main()
