"""How many CPU threads a compute step should use: the cores that the load average leaves idle.

On the shared 2-core machines this project runs on, threads that find their core busy spin-wait on each
other: onnxruntime (benchmarks/al.md) and llama.cpp (2 threads fell from ~10 to 1.2 tokens/s under load, while
1 thread held its speed) are both slower with 2 threads on a busy machine and faster with them on an idle one.
"""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    """The cores this process may use, which in a container can be fewer than the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores_now(seconds: float) -> float | None:
    """Cores busy over the next `seconds` (Linux /proc/stat), or None where that cannot be read. Unlike the
    1-minute load average it does not remember what just finished (`make demo`'s installs)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def idle_cores(env: str, at_most: int | None = None, sample_seconds: float = 0.0) -> int:
    """$env if it is a positive number, else the cores left idle (at least 1, at most `at_most`): by the CPU
    time used over `sample_seconds` when given, else by the 1-minute load average."""
    given = os.environ.get(env, "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    cores = usable_cores()
    busy = busy_cores_now(sample_seconds) if sample_seconds > 0 else None
    try:
        busy = os.getloadavg()[0] if busy is None else busy
    except OSError:
        return 1
    idle = max(1, min(cores, int(cores - busy + 0.5)))
    return idle if at_most is None else min(idle, at_most)
