"""A campaign's report: ``summary.md`` (the verdict and the figures as tables), ``summary.json`` and plots.

The plots need matplotlib (the ``bench`` extra, which ``make chaos`` installs); without it the
report says so and has the tables only.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.campaign import CampaignResult
from chaos.history import Kind, Op, Role

MAX_LISTED = 40  # violations listed one by one in the summary (all are in summary.json)


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _spread(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    missing = len(values) - len(known)
    if not known:
        return "—" if not missing else f"never ({missing})"
    text = f"median {statistics.median(known):.2f} s, max {max(known):.2f} s ({len(known)} rounds)"
    return text + (f"; {missing} never" if missing else "")


def markdown(result: CampaignResult) -> str:
    spec, fig, verdict = result.spec, result.figures, result.verdict
    status = "**passed**" if verdict.valid else f"**failed: {len(verdict.violations)} violations**"
    load = spec.load
    lines = [
        f"# Chaos campaign: {spec.mode}, {len(fig.rounds)} of {len(result.plan)} rounds, seed {spec.seed} — {status}",
        "",
        f"Command: `{spec.command()}` ({result.seconds / 60:.1f} minutes). Load: {load.writers} single writers, "
        f"{load.racers} racers on one branch, {load.readers} reader(s), on {load.repos} repositories, through "
        f"{'the node' if spec.mode == 'standalone' else 'HAProxy'}. Second 0 of the history is "
        f"{datetime.fromtimestamp(result.wall_zero, UTC):%Y-%m-%d %H:%M:%S.%f} UTC in the logs.",
    ]
    if result.skipped:
        lines.append(f"Faults left out (they need root): {', '.join(result.skipped)}.")
    if result.halted:
        lines.append(f"**The rounds stopped early: {result.halted}** (the final checks ran all the same).")
    lines += ["", "## Verdict", "", "| invariant | violations |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in verdict.counts().items()]
    if verdict.violations:
        lines += ["", "History lines (0-based) in brackets:", ""]
        lines += [f"- {v.problem}: {v.message} {list(v.ops)}" for v in verdict.violations[:MAX_LISTED]]
        if len(verdict.violations) > MAX_LISTED:
            lines.append(f"- ... {len(verdict.violations) - MAX_LISTED} more in summary.json")
    if result.load_errors:
        lines += ["", f"The load itself failed {len(result.load_errors)} times (see summary.json)."]
    lines += ["", "## Operations", "", "| | count |", "|---|---|",
              f"| pushes (acknowledged) | {fig.pushes} ({fig.acknowledged}) |",
              f"| reads (answered) | {fig.reads} ({fig.reads_ok}) |"]
    lines += [f"| failures: {kind} | {count} |" for kind, count in fig.failures.items()]
    if fig.refusals:
        lines += ["", "| refusal, in git's words | count |", "|---|---|"]
        lines += [f"| {text} | {count} |" for text, count in fig.refusals.items()]
    lines += ["", "## Figures", "", "| measure | result |", "|---|---|"]
    for outage in fig.outages:
        lines.append(f"| longest write outage, {outage.repo} | {outage.seconds:.2f} s (from {outage.began:.1f} s) |")
    kills = [r for r in fig.rounds if r.kill_to_ack]
    if kills:
        lines.append(f"| kill → a push acknowledged on every repository | {_spread([r.every_repo for r in kills])} |")
    pauses = [r for r in fig.rounds if r.fault == "pause"]
    if pauses:
        lines.append(f"| longest push while a node hangs (acknowledged) | "
                     f"{_spread([r.longest_acked_push for r in pauses])} |")
        lines.append(f"| hang → acknowledgement, pushes acknowledged while the node was still hung | "
                     f"{_spread([r.longest_while_hung for r in pauses])} |")
    by_kind: dict[str, list[float | None]] = defaultdict(list)
    for r in fig.rounds:
        by_kind[r.fault].append(r.heal)
    for kind, heals in sorted(by_kind.items()):
        lines.append(f"| {kind}: node back → all its replicas up to date | {_spread(heals)} |")
    latency = fig.push_latency
    if latency:
        lines.append(f"| acknowledged push latency | median {latency['median'] * 1000:.0f} ms, p95 "
                     f"{latency['p95'] * 1000:.0f} ms, max {latency['max']:.2f} s |")
    promotions = [op for op in result.ops if op.kind is Kind.FAULT and "unreplicated" in op.detail]
    if promotions:
        lost = sum(len(op.detail["unreplicated"]) for op in promotions)
        lines.append(f"| acknowledged pushes a promoted replica did not have (asynchronous replication, documented) | "
                     f"{lost} over {len(promotions)} promotions |")
    converged = result.final.converged_after
    lines.append(f"| load stopped → replicas converged | {_s(converged)} (bound {result.final.bound:.0f} s) |")
    lines += ["", "## Rounds", "",
              "| round | fault | target | hold | at | heal | kill → ack, every repo | longest push while hung | |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in fig.rounds:
        lines.append(f"| {r.round} | {r.fault} | {r.target} | {r.hold:.1f} s | {r.start:.1f} s | {_s(r.heal)} | "
                     f"{_s(r.every_repo) if r.kill_to_ack else ''} | {_s(r.longest_push) if r.fault == 'pause' else ''}"
                     f" | {r.error or 'ok'} |")
    lines += ["", "Files: `history.jsonl` (one operation a line), `summary.json`, `timeline.png`, `latency.png`, "
              "`logs/`.", ""]
    return "\n".join(lines)


def summary(result: CampaignResult) -> dict[str, Any]:
    return {
        "spec": {**asdict(result.spec), "command": result.spec.command()},
        "valid": result.verdict.valid,
        "counts": result.verdict.counts(),
        "violations": [asdict(v) for v in result.verdict.violations],
        "figures": result.figures.to_json(),
        "plan": [asdict(p) for p in result.plan],
        "skipped": result.skipped,
        "halted": result.halted,
        "final": asdict(result.final),
        "load_errors": result.load_errors,
        "seconds": result.seconds,
        "wall_zero": result.wall_zero,
        "wall_zero_utc": datetime.fromtimestamp(result.wall_zero, UTC).isoformat(timespec="milliseconds"),
    }


def write(result: CampaignResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(markdown(result))
    (out / "summary.json").write_text(json.dumps(summary(result), indent=1, default=str) + "\n")
    written = [out / "history.jsonl", out / "summary.md", out / "summary.json"]
    try:
        written += plot(result, out)
    except ImportError:
        with open(out / "summary.md", "a") as f:
            f.write("No plots: matplotlib is not installed (`make chaos` installs it).\n")
    return written


def plot(result: CampaignResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = result.ops
    clients = sorted({op.process for op in ops if op.kind is not Kind.FAULT and op.role is not Role.SEED})
    row = {name: i for i, name in enumerate(clients)}
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(clients) + 2))
    _shade_faults(ax, ops)
    for op in ops:  # each fault's round number under its band; the rounds table says what it was
        if op.kind is Kind.FAULT:
            ax.text(op.start, -0.9, str(op.round), fontsize=6)
    ax.set_ylim(-1.2, len(clients) - 0.5)
    for ok, color, marker in ((True, "#55a868", "|"), (False, "#c44e52", "x")):
        mine = [op for op in ops if op.process in row and op.ok is ok]
        if mine:
            ax.scatter([op.start for op in mine], [row[op.process] for op in mine], s=12, c=color, marker=marker,
                       label="acknowledged / answered" if ok else "failed")
    ax.set_yticks(range(len(clients)), clients)
    ax.set_xlabel("seconds since the campaign began (shaded: a fault, from injection to its node up to date)")
    ax.set_title(f"{result.spec.mode}, seed {result.spec.seed}: every operation by its start")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=110)
    plt.close(fig)

    pushes = [op for op in ops if op.kind is Kind.PUSH and op.ok and op.role in (Role.SINGLE, Role.RACE)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    left.scatter([op.start for op in pushes], [op.duration for op in pushes], s=6, c="#4c72b0")
    _shade_faults(left, ops)
    left.set_yscale("log")
    left.set_xlabel("seconds")
    left.set_ylabel("acknowledged push, seconds")
    rounds = [r for r in result.figures.rounds if r.heal is not None]
    right.bar([f"{r.round}\n{r.fault}" for r in rounds], [r.heal or 0.0 for r in rounds], color="#8172b2")
    right.set_ylabel("node back → replicas up to date, s")
    right.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    return [out / "timeline.png", out / "latency.png"]


def _shade_faults(ax: Any, ops: Sequence[Op]) -> None:
    for op in ops:
        if op.kind is Kind.FAULT:
            ax.axvspan(op.start, op.end, color="#dd8452", alpha=0.18)
