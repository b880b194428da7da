"""Hostile clients: what each attack does to a standalone node while it runs for a fixed time.

Measured during each attack: ``/status`` latency from a separate probe process, the node's RSS
growth (its git children apart), and a legitimate anonymous ``git clone`` of a public repository
of a few MiB as a ratio to the same clone just before the attack.

The attacks run in a process of their own and come from loopback addresses of their own
(127.0.0.10-17, a handful of hosts), the probe and the clone from 127.0.0.1, so a per-address
limit may turn an attacker away without turning the legitimate clients away with it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.client
import itertools
import multiprocessing
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import psutil

from bench.common import GitFailed, client_env, percentile, run_git, timed
from bench.data import Spec, build
from bench.memory import RssSampler
from tests.support.helpers import Server, admin_token, bulwark

REPO_SPEC = Spec(large_bytes=8 * 2**20, commits=40, small_repos=1)
OWNER, REPO, VICTIM = "bench", "abuse", "victim"
ATTACKERS = tuple(f"127.0.0.{10 + i}" for i in range(24))
PROBE_INTERVAL = 0.05  # seconds between two /status requests
PROBE_TIMEOUT = 10.0
TRICKLE_INTERVAL = 2.0
TARGET_P99_S = 0.100
TARGET_RSS_MB = 100  # megabytes (10**6), as the issue states it
TARGET_CLONE_RATIO = 2.0
MIB = 2**20


@dataclass(frozen=True)
class Plan:
    seconds: float  # each attack's fixed time
    slow_connections: int
    trickles: int
    baseline_clones: int


PLANS = {"full": Plan(40, 5000, 500, 3), "small": Plan(15, 500, 200, 3), "tiny": Plan(6, 100, 20, 1)}


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tip: str  # the repository's main branch, which trickling fetches want

    def connect(self, address: str, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout, source_address=(address, 0))


def bomb_body() -> bytes:
    """16 KiB of gzip that inflates to 16 MiB of empty pkt-lines."""
    z = zlib.compressobj(9, 8, 31)
    return b"".join([z.compress(b"0004" * 1024) for _ in range(4095)] + [z.compress(b"0000"), z.flush()])


def pkt(text: str) -> bytes:
    return b"%04x" % (len(text) + 4) + text.encode()


# -- the attacking process: clients that send requests back to back -----------------------------


Request = Callable[[int], tuple[str, str, bytes | None, dict[str, str]]]


def _request_loop(target: Target, address: str, make: Request, numbers: Iterator[int], tally: Counter[str],
                  lock: threading.Lock, stop: Event) -> None:
    """Requests one after the other on a kept-alive connection (a new one when it closes) until ``stop``."""
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        try:
            conn = conn or target.connect(address, 15)
            conn.request(*make(next(numbers)))
            response = conn.getresponse()
            response.read()
            with lock:
                tally[str(response.status)] += 1
            if response.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                tally[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
            conn = None
            stop.wait(0.05)
    if conn is not None:
        conn.close()


def _in_threads(count: int, addresses: tuple[str, ...], target: Target, make: Request, ready: Event,
                stop: Event) -> dict[str, Any]:
    tally: Counter[str] = Counter()
    numbers, lock = itertools.count(), threading.Lock()
    threads = [threading.Thread(target=_request_loop, daemon=True,
                                args=(target, addresses[i % len(addresses)], make, numbers, tally, lock, stop))
               for i in range(count)]
    ready.set()
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(20)
    return {"sent": tally.total(), "outcomes": dict(tally)}


def gzip_bomb(target: Target, addresses: tuple[str, ...], ready: Event, stop: Event, *,
              clients: int) -> dict[str, Any]:
    body = bomb_body()
    headers = {"Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"}
    path = f"/{OWNER}/{REPO}.git/git-upload-pack"
    return _in_threads(clients, addresses, target, lambda n: ("POST", path, body, headers), ready, stop)


def wrong_passwords(target: Target, addresses: tuple[str, ...], ready: Event, stop: Event, *,
                    clients: int, per_round: int) -> dict[str, Any]:
    def make(n: int) -> tuple[str, str, None, dict[str, str]]:
        secret = base64.b64encode(f"{VICTIM}:wrong-{n % per_round}".encode()).decode()
        return "GET", "/api/v3/user", None, {"Authorization": f"Basic {secret}"}

    return _in_threads(clients, addresses, target, make, ready, stop)


# -- the attacking process: connections held open -----------------------------------------------


class Sockets:
    """``count`` raw connections, each opened with ``opening`` and opened again when the server
    answers or closes it, as an attacker would."""

    def __init__(self, target: Target, addresses: tuple[str, ...], count: int, opening: bytes) -> None:
        self.target, self.addresses, self.opening = target, addresses, opening
        self.selector = selectors.DefaultSelector()
        self.missing = list(range(count))
        self.counts: Counter[str] = Counter()
        self.peak = 0
        self.dripped: dict[int, int] = {}  # bytes of the drip each open connection has sent

    def open_missing(self) -> None:
        todo, self.missing = self.missing, []
        for i in todo:
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.bind((self.addresses[i % len(self.addresses)], 0))
                sock.connect((self.target.host, self.target.port))
                sock.sendall(self.opening)
            except OSError:
                self.counts["connect failed"] += 1
                sock.close()
                self.missing.append(i)
                continue
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, i)
            self.dripped[i] = 0
            self.counts["opened"] += 1
        self.peak = max(self.peak, len(self.dripped))

    def read(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the server to answer or close; such connections are reopened."""
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                parts = sock.recv(4096).split(b" ", 2)
            except OSError:
                parts = []
            self.counts[f"answered {parts[1].decode(errors='replace')}" if len(parts) > 1 else "closed"] += 1
            self.selector.unregister(sock)
            sock.close()
            del self.dripped[key.data]
            self.missing.append(key.data)

    def hold(self, drip: bytes, ready: Event, stop: Event) -> dict[str, Any]:
        """Keep the connections open until ``stop``, a byte of ``drip`` on each every TRICKLE_INTERVAL."""
        ready.set()
        try:
            while not stop.is_set():
                self.open_missing()
                for key in list(self.selector.get_map().values()) if drip else []:
                    offset = self.dripped[key.data] % len(drip)
                    with contextlib.suppress(OSError):  # a closed one is seen, and reopened, by read()
                        self.dripped[key.data] += key.fileobj.send(drip[offset:offset + 1])  # type: ignore[union-attr]
                tick = time.monotonic() + TRICKLE_INTERVAL
                while not stop.is_set() and time.monotonic() < tick:
                    self.read(min(0.2, max(0.0, tick - time.monotonic())))
        finally:
            held = len(self.dripped)
            for key in list(self.selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()
        return {"held_at_end": held, "peak_held": self.peak, **self.counts}


def slow_headers(target: Target, addresses: tuple[str, ...], ready: Event, stop: Event, *,
                 connections: int) -> dict[str, Any]:
    return Sockets(target, addresses, connections, b"GET /status HTTP/1.1\r\nHo").hold(b"", ready, stop)


def trickle(target: Target, addresses: tuple[str, ...], ready: Event, stop: Event, *,
            requests: int) -> dict[str, Any]:
    wants = pkt(f"want {target.tip} multi_ack_detailed side-band-64k ofs-delta agent=git/2.39.5\n") + b"0000"
    drip = pkt("have " + "0" * 40 + "\n") * 20  # a byte every 2 s: never a whole line in time
    head = (f"POST /{OWNER}/{REPO}.git/git-upload-pack HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            "Content-Type: application/x-git-upload-pack-request\r\n"
            f"Content-Length: {len(wants) + len(drip)}\r\n\r\n").encode()
    return Sockets(target, addresses, requests, head + wants).hold(drip, ready, stop)


# -- the probe, and the processes attacks and probe run in ----------------------------------------


def status_ok(target: Target, timeout: float) -> bool:
    """``GET /status`` on a new connection, as a load balancer's health check makes it: answered 200."""
    conn = target.connect("127.0.0.1", timeout)
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def status_probe(target: Target, ready: Event, stop: Event) -> dict[str, Any]:
    samples: list[tuple[float, float, bool]] = []  # when, seconds, answered 200
    ready.set()
    while not stop.is_set():
        start = time.monotonic()
        ok = status_ok(target, PROBE_TIMEOUT)
        samples.append((start, time.monotonic() - start, ok))
        stop.wait(PROBE_INTERVAL)
    return {"samples": samples}


def _child_main(function: Callable[..., dict[str, Any]], args: tuple[Any, ...], options: dict[str, Any],
                ready: Event, stop: Event, conn: Any) -> None:
    try:
        result = function(*args, ready, stop, **options)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    conn.send(result)
    conn.close()


class Child:
    """``function(*args, ready, stop, **options)`` in a process of its own, with its own interpreter lock."""

    def __init__(self, function: Callable[..., dict[str, Any]], *args: Any, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.stop = context.Event(), context.Event()
        self.results, sender = context.Pipe(duplex=False)
        self.proc = context.Process(target=_child_main, args=(function, args, options, self.ready, self.stop, sender),
                                    daemon=True)
        self.proc.start()
        sender.close()
        if not self.ready.wait(30):
            self.finish()
            raise RuntimeError(f"{function.__name__} did not start")
        self.process = psutil.Process(self.proc.pid)

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        self.stop.set()
        try:
            result: dict[str, Any] = self.results.recv() if self.results.poll(timeout) else {"error": "no result"}
        except EOFError:
            result = {"error": f"the process ended ({self.proc.exitcode}) without a result"}
        self.results.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        return result


# -- the measurement -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    key: str
    label: str
    function: Callable[..., dict[str, Any]]
    options: dict[str, Any]
    addresses: tuple[str, ...] = ATTACKERS


def attacks(plan: Plan) -> list[Attack]:
    return [
        Attack("bomb4", "gzip bomb, 4 concurrent POSTs", gzip_bomb, {"clients": 4}),
        Attack("bomb16", "gzip bomb, 16 concurrent POSTs", gzip_bomb, {"clients": 16}),
        Attack("passwords", "wrong Basic passwords for one login, 50 at a time, rounds of 1,000", wrong_passwords,
               {"clients": 50, "per_round": 1000}),
        Attack("slow_headers", f"{plan.slow_connections:,} slow-header connections", slow_headers,
               {"connections": plan.slow_connections}),
        Attack("trickle", f"{plan.trickles} trickling fetches", trickle, {"requests": plan.trickles}),
        Attack("trickle_one", f"{plan.trickles} trickling fetches from one address", trickle,
               {"requests": plan.trickles}, ATTACKERS[:1]),
    ]


class Node:
    """The node under attack, the repository and an anonymous client's clone of it."""

    def __init__(self, work: Path, data_dir: Path) -> None:
        sources = build(REPO_SPEC, data_dir)
        self.work, self.clones = work, 0
        self.server = Server(data_dir=work / "data", token=admin_token()).start()
        assert self.server.proc is not None
        self.process = psutil.Process(self.server.proc.pid)
        self.env = client_env(work)
        try:
            made = bulwark("user", "create", VICTIM, "--password-stdin", "--data-dir", str(self.server.data_dir),
                           input="the right password\n", env=self.server.env())
            if made.returncode != 0:
                raise RuntimeError(f"bulwark user create failed: {made.stderr.strip()}")
            token = self.server.create_user(OWNER)
            self.server.create_repo(token, REPO)
            run_git(["push", "-q", self.server.remote(OWNER, REPO, token=token), "refs/heads/*:refs/heads/*"],
                    self.env, cwd=sources.large)
            tip = run_git(["rev-parse", "refs/heads/main"], self.env, cwd=sources.large).strip()
        except BaseException:
            self.server.stop()
            raise
        self.target = Target(self.server.host, self.server.port, tip)

    def clone(self) -> float:
        self.clones += 1
        target = self.work / f"clone-{self.clones}"
        try:
            return timed(lambda: run_git(["clone", "--bare", "-q", self.server.remote(OWNER, REPO), str(target)],
                                         self.env, timeout=120))
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def git(self) -> list[psutil.Process]:
        return self.process.children(recursive=True)

    def settle(self, timeout: float = 60) -> float:
        """Seconds until no git process is left and /status answers at once."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            began = time.monotonic()
            if status_ok(self.target, 5) and time.monotonic() - began < TARGET_P99_S and not self.git():
                break
            time.sleep(0.25)
        return time.monotonic() - start


def _cpu(process: psutil.Process) -> float:
    """User and system seconds so far (not a number once the process is gone)."""
    try:
        return float(sum(process.cpu_times()[:2]))
    except psutil.Error:
        return float("nan")


def _latencies(samples: list[tuple[float, float, bool]], start: float, end: float) -> dict[str, Any]:
    inside = [(t, s, ok) for t, s, ok in samples if start <= t <= end]
    seconds = [s for _, s, _ in inside]
    return {"p50": percentile(seconds, 0.5), "p99": percentile(seconds, 0.99), "max": max(seconds),
            "n": len(seconds), "failed": sum(1 for *_, ok in inside if not ok),
            "timeline": [[round(t - start, 3), round(s, 4)] for t, s, _ in inside]}


def _rss(sampler: RssSampler, key: str) -> dict[str, Any]:
    before = statistics.median(sampler.rss_of(f"before {key}"))
    during = [s for s in sampler.samples if s.phase == key]
    return {"before_mib": before / MIB, "growth_mib": (max(s.rss for s in during) - before) / MIB,
            "timeline": [[round(s.t - during[0].t, 2), round((s.rss - before) / MIB, 1)] for s in during[::3]]}


def _clones_until(node: Node, start: float, end: float) -> list[tuple[float, str]]:
    """Clones one after the other from ``start`` until ``end``: seconds, and why one failed ('' if it did not)."""
    time.sleep(max(0.0, start - time.monotonic()))
    clones = []
    while time.monotonic() < end:
        began = time.monotonic()
        try:
            clones.append((node.clone(), ""))
        except (GitFailed, subprocess.TimeoutExpired) as exc:
            clones.append((time.monotonic() - began, str(exc).splitlines()[-1][-300:]))
    return clones


def run_attack(node: Node, attack: Attack, plan: Plan, sampler: RssSampler) -> dict[str, Any]:
    settled = node.settle()
    baseline = [node.clone() for _ in range(plan.baseline_clones)]
    load_before = os.getloadavg()
    sampler.phase = f"before {attack.key}"
    time.sleep(1.0)
    probe = Child(status_probe, node.target)
    try:
        attacker = Child(attack.function, node.target, attack.addresses, **attack.options)
    except BaseException:
        probe.finish()
        raise
    start = time.monotonic()
    sampler.phase = attack.key
    cpu = _cpu(node.process), _cpu(attacker.process)
    git_peak, git_pss = 0, 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The clones begin once the attack has taken hold; the attack goes on until the last one ends.
        cloning = pool.submit(_clones_until, node, start + min(2.0, plan.seconds / 4), start + plan.seconds)
        try:
            while time.monotonic() < start + plan.seconds or not cloning.done():
                with contextlib.suppress(psutil.Error):
                    git = node.git()
                    git_peak = max(git_peak, len(git))
                    git_pss = max(git_pss, sum(p.memory_full_info().pss for p in git))
                time.sleep(0.5)
        finally:
            end = time.monotonic()
            sampler.phase = f"after {attack.key}"
            cpu = _cpu(node.process) - cpu[0], _cpu(attacker.process) - cpu[1]
            attacked, probed = attacker.finish(), probe.finish()
        clones = cloning.result()
    if "error" in probed:
        raise RuntimeError(f"the /status probe failed: {probed['error']}")
    good = [seconds for seconds, why in clones if not why]
    during = statistics.median(good) if good else None
    clone: dict[str, Any] = {
        "baseline": statistics.median(baseline), "during": during,
        "ratio": during / statistics.median(baseline) if during is not None else None, "count": len(clones),
        "failed": len(clones) - len(good), "raw": [seconds for seconds, _ in clones], "raw_baseline": baseline,
        "errors": sorted({why for _, why in clones if why})[:3]}
    status, rss = _latencies(probed["samples"], start, end), _rss(sampler, attack.key)
    return {
        "key": attack.key, "label": attack.label, "addresses": len(attack.addresses), "seconds": end - start,
        "settle_s": settled, "status": status, "rss": rss, "git_processes_peak": git_peak,
        "git_pss_peak_mib": git_pss / MIB, "node_cpu": cpu[0] / (end - start), "attacker_cpu": cpu[1] / (end - start),
        "clone": clone, "load_before": list(load_before), "load_after": list(os.getloadavg()), "attack": attacked,
        "met": {"status p99": status["p99"] <= TARGET_P99_S and not status["failed"],
                "RSS": rss["growth_mib"] * MIB <= TARGET_RSS_MB * 10**6,
                "clone": clone["ratio"] is not None and clone["ratio"] <= TARGET_CLONE_RATIO and not clone["failed"]},
    }


def measure(work: Path, data_dir: Path, profile: str, log: Callable[[str], None]) -> dict[str, Any]:
    plan, began, load = PLANS[profile], time.monotonic(), os.getloadavg()
    work.mkdir(parents=True, exist_ok=True)
    node = Node(work, data_dir)
    results = []
    try:
        sampler = RssSampler(node.process.pid, interval=0.1).start()
        try:
            for attack in attacks(plan):
                log(f"abuse: {attack.label}, {plan.seconds:.0f} s")
                results.append(run_attack(node, attack, plan, sampler))
                a, ratio = results[-1], results[-1]["clone"]["ratio"]
                log(f"  /status p99 {a['status']['p99'] * 1000:.0f} ms, RSS +{a['rss']['growth_mib']:.1f} MiB, clone "
                    f"x{ratio or float('nan'):.2f} ({a['clone']['failed']} failed), load {a['load_after'][0]:.2f}")
        finally:
            sampler.stop()
    finally:
        node.server.stop()
    return {"seconds": time.monotonic() - began, "seconds_per_attack": plan.seconds,
            "repository_mib": REPO_SPEC.large_bytes / MIB, "attacker_addresses": list(ATTACKERS),
            "load_at_start": list(load), "attacks": results,
            "targets": {"status_p99_s": TARGET_P99_S, "rss_mb": TARGET_RSS_MB, "clone_ratio": TARGET_CLONE_RATIO}}
