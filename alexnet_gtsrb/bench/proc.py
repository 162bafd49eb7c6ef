"""Readings from /proc and getrusage: CPU seconds of the process tree, busy cores, RSS, USS, peak RSS.

Linux-first: without /proc the readings degrade to what ``resource`` offers (or 0), never to an error.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MIB", "CpuMeter", "cores_note", "cpu_seconds", "peak_rss_mib", "rss", "usable_cores", "uss", "worker_pids"]

MIB = 1024 * 1024


def _proc_fields(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], utime [11], stime [12])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (DataLoader workers), found by scanning /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_proc_fields(entry.name)[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its live children and its reaped children (0 without /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids: list[int | str] = ["self", *_children(os.getpid())]
    for pid in pids:
        try:
            f = _proc_fields(pid)
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + reaped.ru_utime + reaped.ru_stime


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CpuMeter:
    """Cores this process tree kept busy over a stretch of wall time.

    Why: on a shared machine a low number means other jobs took the CPU (or the work waited for data), so a
    throughput figure from that window is pessimistic; compare it with the usable core count.
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Begin (or restart) the window."""
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()

    def cores(self) -> float:
        """Average busy cores since :meth:`start`."""
        return (cpu_seconds() - self.cpu) / max(time.perf_counter() - self.wall, 1e-9)


def cores_note(cores: float) -> str:
    """``"1.95/2 cores busy"``: the note a timed row carries."""
    return f"{cores:.2f}/{usable_cores()} cores busy"


def rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def uss(pid: int | str) -> int:
    """Private (unshared) resident bytes of a process: what it owns beyond the pages shared with its parent.

    A forked DataLoader worker's RSS counts every page it shares with the main process; its growth from
    copy-on-write (Python refcounts touching the record list, per-item leaks) shows up here instead.
    Falls back to RSS where ``smaps_rollup`` is unavailable.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return rss(pid)
    kib = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kib += int(line.split()[1])
    return kib * 1024


def worker_pids(iterator: Any) -> list[int]:
    """PIDs of a DataLoader iterator's worker processes (empty for an in-process loader)."""
    return [w.pid for w in getattr(iterator, "_workers", []) if w.pid]


def peak_rss_mib() -> tuple[float, float]:
    """Peak RSS (``ru_maxrss``) in MiB of this process and of its largest finished child."""
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / MIB
    return own, kids
