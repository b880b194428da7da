"""Run every benchmark and write ``bench/results/latest.{json,md}`` and the plots.

    .venv/bin/python -m bench            # the full run (about 150 MiB, 1,000 small repositories)
    .venv/bin/python -m bench --small    # a quick run (20 MiB, 50 small repositories)
    .venv/bin/python -m bench --only abuse   # hostile clients alone: bench/results/abuse.{json,md,png}
    .venv/bin/python -m bench --only scale --scale 100000   # lists and look-ups against size: scale.*
    .venv/bin/python -m bench --only web     # web pages against cgit: bench/results/web.{json,md}
    .venv/bin/python -m bench --only webhooks   # delivery latency and a drained backlog: webhooks.*

Everything listens on 127.0.0.1 and is started, and stopped, by this process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ROOT, abuse, compare, modes, report, scale, ssh, web, webhooks
from bench.common import client_env
from bench.data import FULL, SMALL, TINY, Spec, build
from bench.fixtures import copy_tree, seed
from bench.machine import describe
from bench.profiling import RATE, py_spy, top_frames
from bench.reference import ReferenceServer
from tests.support.helpers import Server, admin_token

SECTIONS = ("compare", "ssh", "web", "backup", "ha", "cluster", "failover", "abuse", "scale", "webhooks")
REFERENCE_CHILDREN = 8
HIGH_API_LIMIT = {"BULWARK_API_RATE": "1000000", "BULWARK_API_BURST": "1000000"}


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def _section(results: dict[str, Any], key: str, clock: Clock, work: Callable[[], Any]) -> None:
    """Run one section; a failure is recorded in the results and the run goes on."""
    try:
        results[key] = work()
    except Exception as exc:
        traceback.print_exc()
        clock.log(f"{key} failed: {exc}")
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}


def standalone_sections(args: argparse.Namespace, spec: Spec, work: Path, clock: Clock,
                        results: dict[str, Any]) -> None:
    """The comparisons with the reference, then the backups, on one Bulwark node and one reference server."""
    sources = build(spec, args.data_dir)
    clock.log("seeding the servers' repositories (cached after the first run)")
    seeded = seed(sources, args.data_dir)
    clock.log("copying the seeded repositories for this run")
    copy_tree(seeded.bulwark_data, work / "bulwark" / "data")
    copy_tree(seeded.reference_root, work / "reference" / "root")
    # The load comes from one address doing the work of many clients: the per-address API limit
    # stays in the request path, set far above what the load reaches.
    server = Server(data_dir=work / "bulwark" / "data", token=admin_token(), ssh="ssh" in args.sections,
                    extra_env=HIGH_API_LIMIT)
    reference = ReferenceServer(work / "reference" / "root", work / "reference" / "run", children=REFERENCE_CHILDREN)
    try:
        server.start()
        if server.ssh:
            server.wait_for_ssh()
        reference.start()
        home = work / "home"
        home.mkdir()
        sides = compare.Sides(server, seeded.user_token, reference, sources, seeded.small_names, work / "client",
                              client_env(home))
        sides.work.mkdir()
        budget = {"tiny": compare.TINY_BUDGET, "small": compare.SMALL_BUDGET,
                  "full": compare.FULL_BUDGET}[args.profile_name]
        if "compare" in args.sections:
            profile: Callable[[str], contextlib.AbstractContextManager[None]] = compare._no_profile
            if args.profile:
                assert server.proc is not None
                profile = functools.partial(py_spy, server.proc.pid, args.out / "profiles")
            try:
                results.update(compare.run(sides, budget, clock.log, profile))
            except Exception as exc:
                traceback.print_exc()
                results["compare"] = {"error": f"{type(exc).__name__}: {exc}"}
        if "ssh" in args.sections:
            clock.log("git over SSH against OpenSSH's sshd")
            _section(results, "ssh", clock, lambda: ssh.run(sides, budget, work / "ssh", clock.log))
        if "backup" in args.sections:
            clock.log("backup against rsync")
            names = seeded.small_names[:10]

            def backups() -> dict[str, Any]:
                changes = modes.Changes(server, seeded.user_token, sources, names, work / "changes")
                rounds = 3 if args.profile_name == "full" else 2
                return modes.measure_backup(server, changes, work / "backup", rounds=rounds)

            (work / "changes").mkdir()
            (work / "backup").mkdir()
            _section(results, "backup", clock, backups)
    finally:
        reference.stop()
        server.stop()
    results["data_info"] = {"pack_mib": sources.pack_bytes() / 2**20, "large_tip": sources.large_tip()}


def _command(args: argparse.Namespace) -> str:
    """The make command that repeats this run."""
    flags = {"full": "", "small": "--small", "tiny": "--tiny"}[args.profile_name]
    if "scale" in args.sections and args.scale != 10_000:
        flags = f"{flags} --scale {args.scale}".strip()
    if args.sections != set(SECTIONS):
        flags = f"{flags} --only {','.join(s for s in SECTIONS if s in args.sections)}".strip()
    return "make bench" + (f' BENCH_ARGS="{flags}"' if " " in flags else f" BENCH_ARGS={flags}" if flags else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a quick run on small data (about 5 minutes)")
    parser.add_argument("--tiny", action="store_true",
                        help="a check of the benchmark itself on tiny data; its numbers mean nothing")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "data",
                        help="where generated repositories are cached (default: bench/data)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where results go (default: bench/results)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--scale", type=int, default=10_000, metavar="N",
                        help="the scale section grows to this many repositories (1,000, 10,000, 100,000 up to N; "
                             "default 10,000)")
    parser.add_argument("--profile", action="store_true",
                        help="record py-spy profiles of Bulwark during the comparisons into OUT/profiles "
                             "(the numbers are then perturbed: latest.* is not written)")
    args = parser.parse_args(argv)
    args.sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.data_dir = args.data_dir.resolve()
    args.profile_name = "tiny" if args.tiny else "small" if args.small else "full"
    args.out = args.out.resolve()
    spec = {"tiny": TINY, "small": SMALL, "full": FULL}[args.profile_name]
    quick = args.profile_name != "full"
    clock = Clock()
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="bulwark-bench-"))
    try:
        if args.sections & {"compare", "ssh", "backup"}:
            standalone_sections(args, spec, work, clock, results)
        if "ha" in args.sections:
            clock.log("HA replication lag")
            (work / "ha").mkdir()
            _section(results, "ha_lag", clock, lambda: modes.measure_ha_lag(10 if quick else 40, work / "ha"))
        if "cluster" in args.sections:
            clock.log("cluster push latency against standalone")
            (work / "cluster").mkdir()
            _section(results, "cluster_push", clock,
                     lambda: modes.measure_cluster_push(6 if quick else 20, work / "cluster"))
        if "failover" in args.sections:
            clock.log("node kill: first push, and the replication factor restored")
            (work / "failover").mkdir()
            _section(results, "failover", clock,
                     lambda: modes.measure_failover(1 if quick else 3, work / "failover"))
        if "abuse" in args.sections:
            clock.log("hostile clients against a standalone node")
            _section(results, "abuse", clock,
                     lambda: abuse.measure(work / "abuse", args.data_dir, args.profile_name, clock.log))
        if "web" in args.sections:
            clock.log("web pages against cgit")
            _section(results, "web", clock,
                     lambda: web.measure(spec, args.data_dir, work / "web", args.profile_name, clock.log,
                                         children=REFERENCE_CHILDREN))
        if "webhooks" in args.sections:
            clock.log("webhooks: latency and a backlog after an outage")
            _section(results, "webhooks", clock, lambda: webhooks.measure(work / "webhooks", args.profile_name,
                                                                         clock.log))
        if "scale" in args.sections:
            clock.log("scale: lists and look-ups against the number of repositories")
            _section(results, "scale", clock, lambda: scale.measure(work / "scale", args.scale, clock.log))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data_info = results.pop("data_info", {})
    full_report = {
        "profile": args.profile_name,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.monotonic() - clock.start,
        "command": _command(args),
        "machine": describe(),
        "data": {"large_bytes": spec.large_bytes, "commits": spec.commits, "small_repos": spec.small_repos,
                 "seed": spec.seed, **data_info},
        "reference_children": REFERENCE_CHILDREN,
        "sections": sorted(args.sections),
        "results": results,
    }
    if args.profile:
        for path in sorted((args.out / "profiles").glob("*.txt")):
            samples, own, anywhere = top_frames(path)
            seconds = float(path.with_suffix(".seconds").read_text())
            print(f"\n== {path.stem}: {seconds:.1f} s; Bulwark's threads were running in "
                  f"{samples / (RATE * seconds) * 100:.0f}% of the samples' time; most often at the top of the stack:")
            for frame, share in own:
                print(f"{share * 100:5.1f}%  {frame}")
            print("-- Bulwark's functions most often anywhere on the stack:")
            for frame, share in anywhere:
                print(f"{share * 100:5.1f}%  {frame}")
        return 0
    written = web.write(full_report, args.out) + webhooks.write(full_report, args.out)
    if args.sections not in ({"web"}, {"webhooks"}):  # alone, it leaves the full run's latest.* as they are
        written += report.write(full_report, args.out)
    for path in written:
        clock.log(f"wrote {os.path.relpath(path, Path.cwd())}")
    print()
    alone = {"abuse": report.abuse_markdown, "scale": report.scale_markdown, "ssh": report.ssh_markdown,
             "web": web.markdown, "webhooks": webhooks.markdown}
    only = next(iter(args.sections)) if len(args.sections) == 1 else ""
    print(alone[only](full_report) if only in alone else report.markdown(full_report))
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
