"""The machine a node runs on: its data dir's filesystem, memory and load, sampled in one go."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class SystemSample:
    """One reading; a field is None when this system cannot tell (no /proc, no statvfs)."""

    disk_used: int | None  # bytes in use on the data dir's filesystem
    disk_free: int | None  # bytes still available to the node (not counting root's reserve)
    memory_total: int | None
    memory_available: int | None
    load: tuple[float, float, float] | None  # 1, 5 and 15-minute load averages
    cpus: int

    @property
    def disk_total(self) -> int | None:
        if self.disk_used is None or self.disk_free is None:
            return None
        return self.disk_used + self.disk_free

    @property
    def disk_ratio(self) -> float | None:
        """The share of the filesystem in use, as ``df`` counts it (root's reserve left out)."""
        total = self.disk_total
        return self.disk_used / total if total and self.disk_used is not None else None

    @property
    def memory_ratio(self) -> float | None:
        if not self.memory_total or self.memory_available is None:
            return None
        return (self.memory_total - self.memory_available) / self.memory_total

    @property
    def load15_per_cpu(self) -> float | None:
        return self.load[2] / self.cpus if self.load is not None else None


def sample(data_dir: Path) -> SystemSample:
    used: int | None = None
    free: int | None = None
    try:
        usage = shutil.disk_usage(data_dir)
        used, free = usage.used, usage.free
    except OSError:
        pass
    try:
        load: tuple[float, float, float] | None = os.getloadavg()
    except OSError:
        load = None
    total, available = _memory()
    return SystemSample(used, free, total, available, load, os.cpu_count() or 1)


def _memory() -> tuple[int | None, int | None]:
    """MemTotal and MemAvailable in bytes: what the kernel says could be used without swapping."""
    try:
        text = MEMINFO.read_text()
    except OSError:
        return None, None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024  # the kernel counts in KiB
    return values.get("MemTotal"), values.get("MemAvailable")
