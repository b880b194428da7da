"""Whether a process of this machine is still there, and which one it is (Linux's /proc).

A leaf: the server's record (monitoring/running.py) and the HA loop both ask it.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")


def process_start(pid: int) -> str | None:
    """The boot and the moment process ``pid`` started (Linux); None where the system does not say."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None
    # Field 22, counted after the command name, which is in parentheses and may hold spaces.
    fields = stat.rpartition(")")[2].split()
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    try:
        state = (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")  # a zombie has died; only its exit status waits to be collected
