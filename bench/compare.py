"""Bulwark standalone and the reference server side by side, over copies of the same repositories.

Every comparison alternates the two servers round by round (the order reversed every other
round). Reads are anonymous on both (the repositories are public); pushes carry a token on
Bulwark and nothing on the reference, which has no accounts.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench.common import Summary, alternate, run_git, timed
from bench.data import Sources
from bench.fixtures import LARGE, LARGE_REFSPECS, OWNER
from bench.load import Throughput, command_throughput, http_throughput
from bench.memory import RssSampler
from bench.reference import ReferenceServer
from tests.support.helpers import Server

BULWARK = "bulwark"
REFERENCE = "reference"


@dataclass(frozen=True)
class Budget:
    """How many rounds, calls and seconds each comparison gets."""

    clone_rounds: int
    push_rounds: int
    fetch_rounds: int
    fetch_seconds: float
    ls_remote_calls: int
    http_rounds: int
    http_seconds: float
    clients: int = 8


FULL_BUDGET = Budget(clone_rounds=9, push_rounds=9, fetch_rounds=5, fetch_seconds=8, ls_remote_calls=30,
                     http_rounds=5, http_seconds=5)
SMALL_BUDGET = Budget(clone_rounds=3, push_rounds=3, fetch_rounds=2, fetch_seconds=3, ls_remote_calls=10,
                      http_rounds=2, http_seconds=2)
TINY_BUDGET = Budget(clone_rounds=2, push_rounds=2, fetch_rounds=1, fetch_seconds=1, ls_remote_calls=4,
                     http_rounds=1, http_seconds=1)


@dataclass
class Sides:
    bulwark: Server
    token: str
    reference: ReferenceServer
    sources: Sources
    small_names: list[str]
    work: Path
    env: dict[str, str]


def comparison(bulwark: list[float], reference: list[float], unit: str, higher_is_better: bool) -> dict[str, Any]:
    """Both series' summaries and the ratio Bulwark / reference of the medians, with the spread of the
    per-round ratios (rounds are paired: each Bulwark round ran next to one reference round)."""
    b, r = Summary.of(bulwark), Summary.of(reference)
    paired = [x / y for x, y in zip(bulwark, reference, strict=False) if y]
    return {
        "unit": unit,
        "higher_is_better": higher_is_better,
        BULWARK: b.to_json(),
        REFERENCE: r.to_json(),
        "ratio": b.median / r.median if r.median else None,
        "ratio_rounds": Summary.of(paired).to_json() if paired else None,
        "raw": {BULWARK: bulwark, REFERENCE: reference},
    }


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def measure_clone(sides: Sides, budget: Budget, sampler: RssSampler, *, urls: dict[str, str] | None = None,
                  env: dict[str, str] | None = None, phase: str = "clone") -> dict[str, Any]:
    """``urls``, ``env`` and ``phase``: another transport's (see bench/ssh.py); HTTP by default."""
    target = sides.work / "clone.git"
    env = env or sides.env

    def clone(url: str, phase: str) -> Callable[[], float]:
        def run() -> float:
            _fresh(target)
            sampler.phase = phase
            seconds = timed(lambda: run_git(["clone", "--bare", "-q", url, str(target)], env))
            sampler.phase = "between"
            _fresh(target)
            return seconds
        return run

    urls = urls or {BULWARK: sides.bulwark.remote(OWNER, LARGE), REFERENCE: sides.reference.remote(OWNER, LARGE)}
    # One untimed clone from each first: both servers start with the same warm page cache.
    for url in urls.values():
        clone(url, "between")()
    # The clone written by one round is flushed before the next, so its writeback slows neither side.
    times = alternate(budget.clone_rounds, {BULWARK: clone(urls[BULWARK], phase),
                                            REFERENCE: clone(urls[REFERENCE], "between")}, between=os.sync)
    return comparison(times[BULWARK], times[REFERENCE], "s", higher_is_better=False)


def measure_push(sides: Sides, budget: Budget, sampler: RssSampler, *,
                 urls: dict[str, Callable[[str], str]] | None = None, env: dict[str, str] | None = None,
                 phase: str = "push") -> dict[str, Any]:
    """``urls`` (a repository's name to its URL, per side), ``env`` and ``phase``: another transport's."""
    serial = iter(range(1_000_000))
    env = env or sides.env
    urls = urls or {BULWARK: lambda name: sides.bulwark.remote(OWNER, name, token=sides.token),
                    REFERENCE: lambda name: sides.reference.remote(OWNER, name)}

    def push_bulwark() -> float:
        name = f"push-{next(serial)}"
        sides.bulwark.create_repo(sides.token, name)
        url = urls[BULWARK](name)
        sampler.phase = phase
        seconds = timed(lambda: run_git(["push", "-q", url, *LARGE_REFSPECS], env, cwd=sides.sources.large))
        sampler.phase = "between"
        r = sides.bulwark.api("DELETE", f"/repos/{OWNER}/{name}", token=sides.token)
        if r.status_code != 204:
            raise RuntimeError(f"deleting {name}: {r.status_code} {r.text}")
        return seconds

    def push_reference() -> float:
        name = f"push-{next(serial)}"
        path = sides.reference.project_root / OWNER / f"{name}.git"
        run_git(["init", "-q", "--bare", str(path)], env)
        url = urls[REFERENCE](name)
        seconds = timed(lambda: run_git(["push", "-q", url, *LARGE_REFSPECS], env, cwd=sides.sources.large))
        shutil.rmtree(path)
        return seconds

    # Written data is flushed between rounds, so one round's writeback does not slow the next one down.
    times = alternate(budget.push_rounds, {BULWARK: push_bulwark, REFERENCE: push_reference}, between=os.sync)
    return comparison(times[BULWARK], times[REFERENCE], "s", higher_is_better=False)


def measure_noop_fetch(sides: Sides, budget: Budget, *, urls: dict[str, str] | None = None,
                       env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``clients`` loops of ``git fetch`` of the large repository into clones that already have everything:
    fetches per second, and the CPU time the server spent per fetch (see ``server_cpu_seconds``).
    ``urls`` and ``env``: another transport's."""
    env = env or sides.env
    clients = []
    for c in range(budget.clients):
        path = _fresh(sides.work / f"fetch-client-{c}.git")
        run_git(["clone", "-q", "--bare", "--shared", str(sides.sources.large), str(path)], env)
        clients.append(path)
    urls = urls or {BULWARK: sides.bulwark.remote(OWNER, LARGE), REFERENCE: sides.reference.remote(OWNER, LARGE)}
    refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
    cpu_per_fetch: dict[str, list[float]] = {BULWARK: [], REFERENCE: []}
    client_cpu: list[float] = []

    def fetch(side: str) -> Callable[[], float]:
        def run() -> float:
            before, clients_before = server_cpu_seconds(), _children_cpu_seconds()
            result = command_throughput(
                lambda c: ["git", "-C", str(clients[c]), "fetch", "-q", urls[side], *refspecs], env,
                budget.clients, budget.fetch_seconds)
            _check(result, f"no-op fetch from {side}")
            done = max(result.done, 1)
            cpu_per_fetch[side].append((server_cpu_seconds() - before) / done)
            client_cpu.append((_children_cpu_seconds() - clients_before) / done)
            return result.per_second
        return run

    rates = alternate(budget.fetch_rounds, {BULWARK: fetch(BULWARK), REFERENCE: fetch(REFERENCE)})
    for path in clients:
        shutil.rmtree(path)
    fetches = comparison(rates[BULWARK], rates[REFERENCE], "fetches/s", higher_is_better=True)
    # What bounds the throughput ratio on one machine: the clients' own CPU time per fetch.
    fetches["client_cpu_s_per_fetch"] = statistics.median(client_cpu)
    return fetches, comparison(cpu_per_fetch[BULWARK], cpu_per_fetch[REFERENCE], "s", higher_is_better=False)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu_seconds() -> float:
    """CPU time the whole machine spent, less this process's and its reaped children's (the clients).

    What is left is the servers' (and the machine's background, small on a quiet machine). Counting
    the server's process tree instead would miss the git processes fcgiwrap does not wait for.
    """
    machine = psutil.cpu_times()
    ours = resource.getrusage(resource.RUSAGE_SELF)
    clients = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
    return busy - (ours.ru_utime + ours.ru_stime) - (clients.ru_utime + clients.ru_stime)


def measure_ls_remote(sides: Sides, budget: Budget) -> dict[str, Any]:
    urls = {BULWARK: sides.bulwark.remote(OWNER, LARGE), REFERENCE: sides.reference.remote(OWNER, LARGE)}

    def ls_remote(side: str) -> Callable[[], float]:
        return lambda: timed(lambda: run_git(["ls-remote", urls[side]], sides.env))

    times = alternate(budget.ls_remote_calls, {BULWARK: ls_remote(BULWARK), REFERENCE: ls_remote(REFERENCE)})
    return comparison(times[BULWARK], times[REFERENCE], "s", higher_is_better=False)


def _check(result: Throughput, what: str) -> None:
    if result.failed:
        raise RuntimeError(f"{what}: {result.failed} of {result.done + result.failed} requests failed")


def _http(url: str, paths: list[str], budget: Budget, what: str) -> Callable[[], float]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None

    def run() -> float:
        result = http_throughput(parts.hostname or "", parts.port or 0, paths, budget.clients, budget.http_seconds)
        _check(result, what)
        return result.per_second
    return run


def measure_http(sides: Sides, budget: Budget) -> tuple[dict[str, Any], dict[str, Any]]:
    """``GET info/refs`` (the ref advertisement, protocol v0) on both servers, and Bulwark's
    ``GET /api/v3/repos/{owner}/{repo}`` over the small repositories, alternating the three."""
    info_refs = [f"/{OWNER}/{LARGE}.git/info/refs?service=git-upload-pack"]
    api = [f"/api/v3/repos/{OWNER}/{name}" for name in sides.small_names]
    rates = alternate(budget.http_rounds, {
        BULWARK: _http(sides.bulwark.url, info_refs, budget, "Bulwark info/refs"),
        REFERENCE: _http(sides.reference.url, info_refs, budget, "reference info/refs"),
        "api": _http(sides.bulwark.url, api, budget, "Bulwark API"),
    })
    refs = comparison(rates[BULWARK], rates[REFERENCE], "requests/s", higher_is_better=True)
    api_vs_refs = comparison(rates["api"], rates[REFERENCE], "requests/s", higher_is_better=True)
    api_vs_refs["note"] = ("Bulwark's API against the reference's info/refs: the reference has no API, "
                           "so this is a rough peer, not a like-for-like comparison")
    return refs, api_vs_refs


def memory_report(sampler: RssSampler) -> dict[str, Any]:
    idle = sampler.rss_of("idle")
    base = statistics.median(idle) if idle else 0
    out: dict[str, Any] = {"idle_rss_mib": base / 2**20}
    for phase in ("clone", "push"):
        rss = sampler.rss_of(phase)
        kids = sampler.children_of(phase)
        if rss:
            out[phase] = {
                "peak_rss_mib": max(rss) / 2**20,
                "peak_over_idle_mib": (max(rss) - base) / 2**20,
                "samples": len(rss),
                "git_children_peak_rss_mib": max(kids) / 2**20 if kids else 0.0,
            }
    return out


def _no_profile(_name: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def run(sides: Sides, budget: Budget, log: Callable[[str], None],
        profile: Callable[[str], contextlib.AbstractContextManager[None]] = _no_profile) -> dict[str, Any]:
    """Every comparison, in order; ``profile(name)`` wraps each one (a profiler, or nothing)."""
    assert sides.bulwark.proc is not None
    sampler = RssSampler(sides.bulwark.proc.pid).start()
    try:
        # Warm both servers up (lazy imports, first connections), then sample Bulwark at rest.
        for url in (sides.bulwark.remote(OWNER, sides.small_names[0]), sides.reference.remote(OWNER, LARGE)):
            run_git(["ls-remote", url], sides.env)
        sides.bulwark.api("GET", f"/repos/{OWNER}/{LARGE}")
        time.sleep(0.5)
        sampler.phase = "idle"
        time.sleep(2)
        sampler.phase = "between"
        results: dict[str, Any] = {}
        log("clone of the large repository")
        with profile("clone"):
            results["clone"] = measure_clone(sides, budget, sampler)
        log("push of the large repository into an empty one")
        with profile("push"):
            results["push"] = measure_push(sides, budget, sampler)
        log(f"no-op fetch, {budget.clients} clients")
        with profile("noop_fetch"):
            results["noop_fetch"], results["noop_fetch_cpu"] = measure_noop_fetch(sides, budget)
        log("ls-remote latency")
        with profile("ls_remote"):
            results["ls_remote"] = measure_ls_remote(sides, budget)
        log(f"info/refs and API throughput, {budget.clients} connections")
        with profile("http"):
            results["info_refs"], results["api"] = measure_http(sides, budget)
    finally:
        sampler.stop()
    results["memory"] = memory_report(sampler)
    results["memory"]["timeline"] = [(round(s.t, 3), s.rss, s.children_rss, s.phase) for s in sampler.samples[::2]]
    return results
