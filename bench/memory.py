"""Resident memory of a process, sampled in a thread while something runs."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the sampler started
    rss: int  # the process itself
    children_rss: int  # its child processes (git), summed
    phase: str


@dataclass
class RssSampler:
    """Samples ``pid``'s RSS (and its children's) every ``interval`` seconds, labelled by ``phase``."""

    pid: int
    interval: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    phase: str = "idle"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: float = 0.0

    def start(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        try:
            process = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                rss = process.memory_info().rss
                children = 0
                for child in process.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        children += child.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.samples.append(Sample(time.perf_counter() - self._start, rss, children, self.phase))
            time.sleep(self.interval)

    def rss_of(self, phase: str) -> list[int]:
        return [s.rss for s in self.samples if s.phase == phase]

    def children_of(self, phase: str) -> list[int]:
        return [s.children_rss for s in self.samples if s.phase == phase]
