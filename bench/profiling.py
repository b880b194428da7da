"""Sampling profiles of the Bulwark process with py-spy, one file per measurement."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

RATE = 200  # samples per second


@contextlib.contextmanager
def py_spy(pid: int, out: Path, name: str, rate: int = RATE) -> Iterator[None]:
    """Record ``pid`` while the block runs into ``out/name.txt`` (collapsed stacks, one per line)."""
    binary = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.txt"
    proc = subprocess.Popen([binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                             "--output", str(target), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        yield
    finally:
        (out / f"{name}.seconds").write_text(f"{time.monotonic() - started:.3f}\n")
        proc.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _own_code(frame: str) -> bool:
    return "bulwark/" in frame and "bulwark/cli/" not in frame and "bulwark/__main__" not in frame


def top_frames(collapsed: Path, count: int = 20) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """The number of samples (only those where a thread was running), and the functions most often
    on the stack: at its top (self time), and Bulwark's own anywhere in it (inclusive, less the
    command line and server start-up frames every sample has), as fractions of the samples."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not stack:
            continue
        weight = int(n)
        samples += weight
        frames = stack.split(";")
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + weight
        for frame in set(frames):
            if _own_code(frame):
                inclusive[frame] = inclusive.get(frame, 0) + weight
    if not samples:
        return 0, [], []

    def ranked(totals: dict[str, int]) -> list[tuple[str, float]]:
        top = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:count]
        return [(frame, n / samples) for frame, n in top]

    return samples, ranked(leaf), ranked(inclusive)
