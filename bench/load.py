"""Concurrent load for a fixed time: processes (git fetch) or HTTP GETs over kept-alive connections."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Throughput:
    done: int
    failed: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def _run_clients(clients: int, duration: float, one: Callable[[int, int], bool]) -> Throughput:
    """``clients`` threads call ``one(client, i)`` until ``duration`` has passed; each call that returns
    True counts as done. Time runs from the common start to the end of the last call."""
    barrier = threading.Barrier(clients + 1)
    done = [0] * clients
    failed = [0] * clients
    start = 0.0

    def client(c: int) -> None:
        barrier.wait()
        i = 0
        while time.perf_counter() - start < duration:
            if one(c, i):
                done[c] += 1
            else:
                failed[c] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(duration + 120)
    return Throughput(sum(done), sum(failed), time.perf_counter() - start)


def command_throughput(argv_for: Callable[[int], Sequence[str]], env: Mapping[str, str], clients: int,
                       duration: float) -> Throughput:
    """How many times per second ``clients`` concurrent loops complete the command ``argv_for(client)``."""

    def one(c: int, _i: int) -> bool:
        proc = subprocess.run(list(argv_for(c)), env=dict(env), capture_output=True, timeout=60)
        return proc.returncode == 0

    return _run_clients(clients, duration, one)


def http_throughput(host: str, port: int, paths: Sequence[str], clients: int, duration: float,
                    headers: Mapping[str, str] | None = None) -> Throughput:
    """GET ``paths`` in turn over one kept-alive connection per client; a 200 with its whole body counts."""
    connections = [http.client.HTTPConnection(host, port, timeout=30) for _ in range(clients)]
    sent = {"User-Agent": "bulwark-bench", **(headers or {})}

    def one(c: int, i: int) -> bool:
        conn = connections[c]
        try:
            conn.request("GET", paths[(c + i * clients) % len(paths)], headers=sent)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
            if response.will_close:
                conn.close()
            return ok
        except (OSError, http.client.HTTPException):
            conn.close()
            return False

    try:
        return _run_clients(clients, duration, one)
    finally:
        for conn in connections:
            conn.close()
