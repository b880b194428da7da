"""Bulwark's web pages against cgit, side by side, over copies of the same large repository.

cgit is Debian's package, run by the reference server's own nginx + fcgiwrap (bench/reference.py)
under ``/cgit/``, with its cache off (``cache-size=0``) so that every page is rendered afresh, as
Bulwark's are, and without a source filter (no syntax highlighting). Its stylesheet is served by
nginx; only the pages' HTML is timed, on either side.

The large repository gets two more commits on ``main`` for these pages, pushed to both servers
from one source: a directory of 3,000 files with a source file of about 20 KiB, then a small change
to that file. Timed, per side: the tree of that directory, the source file, the first page of the
history and the commit of the change, one request at a time (p50 and p90), then a mix of the four
pages from 8 concurrent clients (pages per second). Every answer must be a 200 of HTML holding the
names or subjects the page exists to show, so a broken page can't pass for a fast one. Bulwark's
RSS is sampled throughout.

A page Bulwark does not serve (yet) is named and left out; cgit's figures are measured all the same.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import alternate, client_env, percentile, run_git
from bench.data import EPOCH, Spec, build
from bench.fixtures import LARGE, OWNER, copy_tree, seed
from bench.memory import RssSampler
from bench.reference import ReferenceServer
from bench.report import MEMORY_FLAT_MIB, machine_line
from tests.support.helpers import Server, admin_token

BULWARK = "bulwark"
CGIT = "cgit"
SIDES = (BULWARK, CGIT)
BRANCH = "main"
WIDE_DIR = "wide"
WIDE_FILES = 3000
SOURCE_PATH = "src/engine.py"
SOURCE_BYTES = 20 * 1024  # at least
ADD_SUBJECT = "Add a directory of 3000 files and an engine module"
CHANGE_SUBJECT = "Raise the default scale of the first engine functions"
CHANGED_FUNCTIONS = 3
TARGET_P50_RATIO = 1.5
AIM_P50_RATIO = 1.0
MIB = 2**20


@dataclass(frozen=True)
class Budget:
    warmup: int  # untimed requests per page and side
    requests: int  # timed requests per page and side
    mix_seconds: float  # each round of the concurrent mix
    mix_rounds: int
    clients: int = 8


BUDGETS = {
    "full": Budget(warmup=30, requests=200, mix_seconds=10, mix_rounds=3),
    "small": Budget(warmup=30, requests=100, mix_seconds=5, mix_rounds=2),
    "tiny": Budget(warmup=5, requests=20, mix_seconds=2, mix_rounds=1),
}


@dataclass(frozen=True)
class Page:
    key: str
    label: str
    paths: dict[str, str]  # side -> path on that side's server
    markers: tuple[str, ...]  # what the HTML must contain


class PageFailed(Exception):
    """A page answered with something else than a 200 of HTML holding its markers."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.status = status


class MixFailed(Exception):
    """Pages of one side failed under the concurrent mix."""

    def __init__(self, side: str, message: str) -> None:
        super().__init__(message)
        self.side = side


# -- the fixture ---------------------------------------------------------------------------------


def _function(i: int, scale: int) -> str:
    return (f"def function_{i:04d}(values: list[int], scale: int = {scale}) -> int:\n"
            f'    """The sum of the values above {i % 17}, each times the scale."""\n'
            f"    total = 0\n"
            f"    for value in values:\n"
            f"        if value > {i % 17}:\n"
            f"            total += value * scale\n"
            f"    return total\n\n\n")


def engine_source(changed: int = 0) -> tuple[str, int]:
    """A Python module of at least ``SOURCE_BYTES``, the first ``changed`` functions' default scale
    raised; and how many functions it has."""
    text = '"""Generated numeric helpers."""\n\nfrom __future__ import annotations\n\n\n'
    count = 0
    while len(text) < SOURCE_BYTES:
        text += _function(count, 4 if count < changed else 3)
        count += 1
    return text.rstrip("\n") + "\n", count


def _person(kind: str, when: int) -> bytes:
    return f"{kind} Bench {kind.title()} <{kind}@example.com> {when} +0000\n".encode()


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def _fixture_stream(parent: str, when: int) -> bytes:
    """Two commits on ``main`` after ``parent``: the wide directory and the module, then a change to it."""
    source, _ = engine_source()
    add = b"commit refs/heads/" + BRANCH.encode() + b"\nmark :1\n"
    add += _person("author", when) + _person("committer", when) + _data(ADD_SUBJECT.encode())
    add += f"from {parent}\n".encode()
    for i in range(WIDE_FILES):
        add += f"M 100644 inline {WIDE_DIR}/f{i:04d}.txt\n".encode() + _data(f"file {i}\n".encode())
    add += f"M 100644 inline {SOURCE_PATH}\n".encode() + _data(source.encode())
    changed, _ = engine_source(CHANGED_FUNCTIONS)
    change = b"commit refs/heads/" + BRANCH.encode() + b"\nmark :2\n"
    change += _person("author", when + 600) + _person("committer", when + 600) + _data(CHANGE_SUBJECT.encode())
    change += b"from :1\n" + f"M 100644 inline {SOURCE_PATH}\n".encode() + _data(changed.encode())
    return add + b"\n" + change + b"\ndone\n"


def make_fixture(large: Path, target: Path, commits: int) -> str:
    """A clone of the large repository (sharing its objects) with the two commits; their tip.

    The dates are fixed, so the same large repository always gives the same commits."""
    env = client_env(target.parent)
    run_git(["clone", "-q", "--bare", "--shared", str(large), str(target)], env)
    parent = run_git(["rev-parse", f"refs/heads/{BRANCH}"], env, cwd=target).strip()
    proc = subprocess.run(["git", "fast-import", "--quiet", "--done"], cwd=target, env=env,
                          input=_fixture_stream(parent, EPOCH + 3600 * (commits + 1)), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git fast-import failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    return run_git(["rev-parse", f"refs/heads/{BRANCH}"], env, cwd=target).strip()


def pages(tip: str) -> list[Page]:
    base = f"/{OWNER}/{LARGE}"
    cgit = f"/cgit/{LARGE}"
    _, functions = engine_source()
    return [
        Page("tree", f"tree of {WIDE_FILES:,} files",
             {BULWARK: f"{base}/tree/{BRANCH}/{WIDE_DIR}", CGIT: f"{cgit}/tree/{WIDE_DIR}?h={BRANCH}"},
             ("f0000.txt", f"f{WIDE_FILES - 1:04d}.txt")),
        Page("blob", f"one file ({SOURCE_PATH}, {len(engine_source(CHANGED_FUNCTIONS)[0]) / 1024:.0f} KiB)",
             {BULWARK: f"{base}/blob/{BRANCH}/{SOURCE_PATH}", CGIT: f"{cgit}/tree/{SOURCE_PATH}?h={BRANCH}"},
             ("function_0000", f"function_{functions - 1:04d}")),
        Page("commits", "history, first page",
             {BULWARK: f"{base}/commits/{BRANCH}", CGIT: f"{cgit}/log/?h={BRANCH}"},
             (CHANGE_SUBJECT, ADD_SUBJECT)),
        Page("commit", "one commit (a change of 3 lines)",
             {BULWARK: f"{base}/commit/{tip}", CGIT: f"{cgit}/commit/?id={tip}"},
             (CHANGE_SUBJECT, SOURCE_PATH, tip[:7])),
    ]


def cgitrc(repository: Path) -> str:
    # Global settings come before the repositories' (cgit applies them in order).
    return f"""# Generated for one benchmark run; removed with its directory.
cache-size=0
virtual-root=/cgit/
css=/cgit-static/cgit.css
logo=/cgit-static/cgit.png
enable-http-clone=0
max-commit-count=30
root-title=bench

repo.url={LARGE}
repo.path={repository}
repo.desc=the large repository
"""


# -- requests ------------------------------------------------------------------------------------


def fetch(client: httpx.Client, url: str, page: Page) -> float:
    """One GET of ``url``: its seconds, the whole body read; PageFailed unless it is the page."""
    start = time.perf_counter()
    r = client.get(url)
    body = r.content
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        raise PageFailed(url, r.status_code, f"answered {r.status_code}")
    content_type = r.headers.get("content-type", "")
    if not content_type.startswith("text/html"):
        raise PageFailed(url, r.status_code, f"answered {content_type or 'no content type'}, not HTML")
    missing = [m for m in page.markers if m.encode() not in body]
    if missing:
        raise PageFailed(url, r.status_code, f"the page lacks {', '.join(repr(m) for m in missing)}")
    return seconds


def _client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=60, headers={"User-Agent": "bulwark-bench"})


def probe(clients: dict[str, httpx.Client], page_list: list[Page], log: Callable[[str], None]) -> dict[str, str]:
    """The pages Bulwark does not serve as they should, each with why; cgit must serve them all."""
    failed: dict[str, str] = {}
    for page in page_list:
        try:
            fetch(clients[BULWARK], page.paths[BULWARK], page)
        except PageFailed as exc:
            why = ("Bulwark has no such page yet (404)" if exc.status == 404 else f"Bulwark's page failed: {exc}")
            log(f"web: {page.label}: {str(clients[BULWARK].base_url).rstrip('/')}{page.paths[BULWARK]}: {why}; "
                "measuring cgit's alone")
            failed[page.key] = why
        fetch(clients[CGIT], page.paths[CGIT], page)
    return failed


def _latency(seconds: list[float]) -> dict[str, Any]:
    return {"p50": percentile(seconds, 0.5), "p90": percentile(seconds, 0.9), "min": min(seconds),
            "max": max(seconds), "n": len(seconds), "raw": seconds}


def warm_up(clients: dict[str, httpx.Client], page: Page, sides: list[str], budget: Budget) -> None:
    for side in sides:
        for _ in range(budget.warmup):
            fetch(clients[side], page.paths[side], page)


def sequential(clients: dict[str, httpx.Client], page: Page, sides: list[str], budget: Budget) -> dict[str, Any]:
    """``budget.requests`` requests per side one at a time, the sides alternating."""

    def timer(side: str) -> Callable[[], float]:
        return lambda: fetch(clients[side], page.paths[side], page)

    times = alternate(budget.requests, {side: timer(side) for side in sides})
    sizes = {side: len(clients[side].get(page.paths[side]).content) for side in sides}
    out: dict[str, Any] = {"label": page.label, "paths": page.paths, "bytes": sizes}
    for side in sides:
        out[side] = _latency(times[side])
    if BULWARK in out:
        out["ratio_p50"] = out[BULWARK]["p50"] / out[CGIT]["p50"]
        out["ratio_p90"] = out[BULWARK]["p90"] / out[CGIT]["p90"]
    return out


@dataclass
class Mix:
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_failure: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def mix(base: str, side: str, page_list: list[Page], clients: int, seconds: float) -> Mix:
    """``clients`` threads, each with its own kept-alive connection, GET the pages in turn for ``seconds``."""
    result = Mix()
    barrier = threading.Barrier(clients + 1)
    start = 0.0

    def client(c: int) -> None:
        with _client(base) as http:
            barrier.wait()
            i = c
            while time.perf_counter() - start < seconds:
                page = page_list[i % len(page_list)]
                i += 1
                try:
                    fetch(http, page.paths[side], page)
                    ok, why = True, ""
                except (PageFailed, httpx.HTTPError) as exc:
                    ok, why = False, str(exc)
                with result.lock:
                    if ok:
                        result.done += 1
                    else:
                        result.failed += 1
                        result.first_failure = result.first_failure or why

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start = time.perf_counter()  # set before the barrier releases the clients, which read it
    barrier.wait()
    for t in threads:
        t.join(seconds + 120)
    result.seconds = time.perf_counter() - start
    if not result.done and not result.failed:
        raise RuntimeError(f"{side}: no page was requested in the mix")
    return result


def throughput(bases: dict[str, str], sides: list[str], page_list: list[Page], budget: Budget) -> dict[str, Any]:
    def run(side: str) -> Callable[[], float]:
        def once() -> float:
            result = mix(bases[side], side, page_list, budget.clients, budget.mix_seconds)
            if result.failed:
                raise MixFailed(side, f"{result.failed} of {result.done + result.failed} pages failed in the "
                                      f"mix, the first: {result.first_failure}")
            return result.per_second
        return once

    rates = alternate(budget.mix_rounds, {side: run(side) for side in sides})
    out: dict[str, Any] = {"clients": budget.clients, "seconds": budget.mix_seconds, "rounds": budget.mix_rounds}
    for side in sides:
        out[side] = {"median": statistics.median(rates[side]), "raw": rates[side]}
    if BULWARK in out:
        out["ratio"] = out[BULWARK]["median"] / out[CGIT]["median"]
    return out


def rss_report(sampler: RssSampler) -> dict[str, Any]:
    measured = sampler.rss_of("sequential") + sampler.rss_of("mix")
    if not measured:
        return {}
    low, high = min(measured), max(measured)
    warm = sampler.rss_of("warmup")
    return {"warm_mib": (warm[-1] if warm else low) / MIB, "min_mib": low / MIB, "max_mib": high / MIB,
            "growth_mib": (high - low) / MIB, "flat": (high - low) / MIB <= MEMORY_FLAT_MIB,
            "samples": len(measured),
            "phases_mib": {phase: [min(rss) / MIB, max(rss) / MIB]
                           for phase in ("sequential", "mix") if (rss := sampler.rss_of(phase))},
            "timeline": [(round(s.t, 2), s.rss, s.phase) for s in sampler.samples[::4]]}


# -- the section ---------------------------------------------------------------------------------


def measure(spec: Spec, data_dir: Path, work: Path, profile: str, log: Callable[[str], None],
            children: int = 8) -> dict[str, Any]:
    budget = BUDGETS[profile]
    sources = build(spec, data_dir)
    seeded = seed(sources, data_dir)
    work.mkdir(parents=True, exist_ok=True)
    log("web: copying the seeded repositories and adding the pages' commits")
    copy_tree(seeded.bulwark_data, work / "bulwark" / "data")
    repository = work / "reference" / "root" / OWNER / f"{LARGE}.git"
    copy_tree(seeded.reference_root / OWNER / f"{LARGE}.git", repository)
    tip = make_fixture(sources.large, work / "fixture.git", spec.commits)
    env = client_env(work)
    rc = work / "cgitrc"
    rc.write_text(cgitrc(repository))
    server = Server(data_dir=work / "bulwark" / "data", token=admin_token())
    reference = ReferenceServer(work / "reference" / "root", work / "reference" / "run", children=children, cgitrc=rc)
    try:
        server.start()
        reference.start()
        # The same push of the same commits on both sides: the same pack received by each.
        refspec = f"refs/heads/{BRANCH}:refs/heads/{BRANCH}"
        run_git(["push", "-q", server.remote(OWNER, LARGE, token=seeded.user_token), refspec], env,
                cwd=work / "fixture.git")
        run_git(["push", "-q", str(repository), refspec], env, cwd=work / "fixture.git")
        assert server.proc is not None
        sampler = RssSampler(server.proc.pid, interval=0.1, phase="start").start()
        bases = {BULWARK: server.url, CGIT: reference.url}
        clients = {side: _client(bases[side]) for side in SIDES}
        try:
            page_list = pages(tip)
            missing = probe(clients, page_list, log)
            results: dict[str, Any] = {"pages": {}, "missing": missing, "tip": tip,
                                       "budget": {"warmup": budget.warmup, "requests": budget.requests}}
            side_lists = {page.key: [CGIT] if page.key in missing else [BULWARK, CGIT] for page in page_list}
            log(f"web: warming up, {budget.warmup} requests of each page on each side")
            sampler.phase = "warmup"
            for page in page_list:
                try:
                    warm_up(clients, page, side_lists[page.key], budget)
                except PageFailed as exc:
                    if exc.url != page.paths[BULWARK]:
                        raise
                    missing[page.key] = f"Bulwark's page failed in the warm-up: {exc}"
                    log(f"web: {page.label}: {missing[page.key]}; measuring cgit's alone")
                    side_lists[page.key] = [CGIT]
                    warm_up(clients, page, [CGIT], budget)
            sampler.phase = "sequential"
            for page in page_list:
                sides = side_lists[page.key]
                log(f"web: {page.label}, {budget.requests} requests each one at a time ({', '.join(sides)})")
                try:
                    results["pages"][page.key] = sequential(clients, page, sides, budget)
                except PageFailed as exc:
                    if BULWARK not in sides or exc.url != page.paths[BULWARK]:
                        raise
                    missing[page.key] = f"Bulwark's page failed while timed: {exc}"
                    log(f"web: {page.label}: {missing[page.key]}; measuring cgit's alone")
                    results["pages"][page.key] = sequential(clients, page, [CGIT], budget)
            sampler.phase = "mix"
            sides = [CGIT] if missing else [BULWARK, CGIT]
            log(f"web: a mix of the four pages, {budget.clients} clients ({', '.join(sides)})")
            try:
                results["mix"] = throughput(bases, sides, page_list, budget)
            except MixFailed as exc:
                if exc.side != BULWARK:
                    raise
                results["mix_missing"] = f"Bulwark's pages failed: {exc}"
                log(f"web: the mix: {results['mix_missing']}; measuring cgit's alone")
                results["mix"] = throughput(bases, [CGIT], page_list, budget)
            sampler.phase = "after"
        finally:
            sampler.stop()
            for client in clients.values():
                client.close()
        if len(missing) < len(page_list):
            results["rss"] = rss_report(sampler)
        return results
    finally:
        reference.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


# -- the report ----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def _status(met: bool) -> str:
    return "met" if met else "**missed**"


def table(web: dict[str, Any]) -> list[str]:
    if "error" in web:
        return [f"The web section failed: {web['error']}"]
    lines = ["| measure | Bulwark | cgit | ratio Bulwark / cgit | target | |", "|---|---|---|---|---|---|"]
    for key, row in web["pages"].items():
        c = row[CGIT]
        cgit = f"{_ms(c['p50'])} (p90 {_ms(c['p90'])})"
        if BULWARK in row:
            b = row[BULWARK]
            ratio = row["ratio_p50"]
            status = _status(ratio <= TARGET_P50_RATIO) + (" (aim met)" if ratio <= AIM_P50_RATIO else "")
            lines.append(f"| {row['label']}, p50 (p90) | {_ms(b['p50'])} (p90 {_ms(b['p90'])}) | {cgit} | "
                         f"{ratio:.2f} (p90 {row['ratio_p90']:.2f}) | ≤ {TARGET_P50_RATIO} "
                         f"(aim ≤ {AIM_P50_RATIO}) | {status} |")
        else:
            lines.append(f"| {row['label']}, p50 (p90) | not measured: {web['missing'][key]} | {cgit} | | "
                         f"≤ {TARGET_P50_RATIO} (aim ≤ {AIM_P50_RATIO}) | |")
    m = web["mix"]
    label = f"a mix of the four pages, {m['clients']} concurrent clients"
    cgit_rate = f"{m[CGIT]['median']:.0f} pages/s"
    if BULWARK in m:
        lines.append(f"| {label} | {m[BULWARK]['median']:.0f} pages/s | {cgit_rate} | {m['ratio']:.2f} | "
                     "reported | |")
    else:
        why = web.get("mix_missing", "a page is missing")
        lines.append(f"| {label} | not measured: {why} | {cgit_rate} | | reported | |")
    rss = web.get("rss")
    if rss:
        phases = rss.get("phases_mib", {})
        names = {"sequential": "one at a time", "mix": f"{m['clients']} clients"}
        detail = "".join(f"; {names[phase]} {low:.1f}-{high:.1f}" for phase, (low, high) in phases.items())
        lines.append(f"| Bulwark's RSS while timed, min-max (after the warm-up{detail}) | "
                     f"{rss['min_mib']:.1f}-{rss['max_mib']:.1f} MiB ({rss['warm_mib']:.1f}) | | | "
                     f"flat (≤ {MEMORY_FLAT_MIB:.0f} MiB growth) | {_status(rss['flat'])} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    web = report["results"]["web"]
    lines = [f"# Web pages against cgit, {report['profile']} run, {report['finished_at']}", "",
             f"Machine: {machine_line(report['machine'])}.", "",
             f"Command: `{report['command']}`", ""]
    if "error" not in web:
        budget = web["budget"]
        lines += [f"The large repository of {report['data']['commits']} commits, and two more on `{BRANCH}` "
                  f"for these pages (tip `{web['tip'][:12]}`), on both sides. cgit: Debian's, behind the reference's "
                  f"nginx + fcgiwrap ({report['reference_children']} workers), cache off, no source filter "
                  "(no syntax highlighting), 30 commits a page as Bulwark's. Per page and side: "
                  f"{budget['warmup']} requests of warm-up, then {budget['requests']} one at a time, the sides "
                  "alternating; every answer checked (200, HTML, the names or subjects it shows). Bulwark's RSS: "
                  "the node's own, sampled every 0.1 s while timed.",
                  ""]
        sizes = [f"{row['label']}: " + ", ".join(f"{side} {n / 1024:.0f} KiB" for side, n in row["bytes"].items())
                 for row in web["pages"].values()]
        lines += [*table(web), "", "Page sizes: " + "; ".join(sizes) + ".", ""]
        for key, why in web["missing"].items():
            lines.append(f"- {web['pages'][key]['paths'][BULWARK]}: {why}.")
    else:
        lines += table(web)
    return "\n".join(lines).rstrip("\n") + "\n"


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """web.json and web.md, when the run had the web section."""
    figures = report["results"].get("web")
    if not figures:
        return []
    out.mkdir(parents=True, exist_ok=True)
    own = {**report, "sections": ["web"], "results": {"web": figures}}
    (out / "web.json").write_text(json.dumps(own, indent=1) + "\n")
    (out / "web.md").write_text(markdown(own))
    return [out / "web.json", out / "web.md"]
