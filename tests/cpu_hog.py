"""A CPU hog: busy processes beside a test, so that fault tolerance is tested on a busy machine.

`cpu_hog(n)` starts `n` processes that spin in a loop (each keeps one core busy at the default
priority) and kills them on exit, however the block ends. `python tests/cpu_hog.py N` runs the same
hog in the foreground until it is interrupted, to run the whole suite beside it:

    python tests/cpu_hog.py 2 & make test; kill %1
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"
"""A busy loop that ends when its parent does (a killed test run leaves no hog behind)."""


@contextmanager
def cpu_hog(processes: int = 2) -> Iterator[list[int]]:
    """`processes` busy-looping Python processes for the length of the block; yields their pids."""
    hogs = [subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True) for _ in range(processes)]
    try:
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            try:
                os.killpg(hog.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            hog.wait()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the hog's processes too
    with cpu_hog(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
