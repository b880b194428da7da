"""The results as JSON, a Markdown table and PNG plots."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MEMORY_FLAT_MIB = 5.0  # "flat": the peak during a clone or a push at most this much above idle
PHASE_LABEL = {"clone": "the clones", "push": "the pushes"}


@dataclass(frozen=True)
class Target:
    """A bound on the ratio Bulwark / reference: at most (``upper``) or at least ``value``."""

    value: float
    upper: bool
    text: str

    def met(self, ratio: float) -> bool:
        return ratio <= self.value if self.upper else ratio >= self.value


TARGETS = {
    "clone": Target(1.05, True, "≤ 1.05"),
    "push": Target(1.10, True, "≤ 1.10"),
    "noop_fetch": Target(1.0, False, "≥ 1.0 (aim ≥ 2.0)"),
}

ROWS = [
    ("clone", "full clone of the large repository (`clone --bare`)"),
    ("push", "push of the large repository into an empty one"),
    ("noop_fetch", "no-op fetch of the large repository, 8 concurrent clients"),
    ("noop_fetch_cpu", "server CPU time per no-op fetch (the machine's CPU time less the clients')"),
    ("ls_remote", "`ls-remote` of the large repository, one client"),
    ("info_refs", "`GET info/refs` (v0 advertisement), 8 connections"),
    ("api", "API `GET /repos/{owner}/{repo}` vs the reference's `info/refs` (rough peer)"),
]


def _value(value: float, unit: str) -> str:
    if unit == "s" and value < 0.02:
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.0f} {unit}"


def _spread(summary: dict[str, float], unit: str) -> str:
    if unit == "s" and summary["median"] < 0.02:
        return f"{summary['q1'] * 1000:.1f}-{summary['q3'] * 1000:.1f}"
    if unit == "s" and summary["median"] < 1:
        return f"{summary['q1'] * 1000:.0f}-{summary['q3'] * 1000:.0f}"
    if unit == "s":
        return f"{summary['q1']:.2f}-{summary['q3']:.2f}"
    return f"{summary['q1']:.0f}-{summary['q3']:.0f}"


def _status(met: bool) -> str:
    return "met" if met else "**missed**"


def comparison_table(results: dict[str, Any]) -> list[str]:
    if not any(key in results and "error" not in results[key] for key, _ in ROWS):
        return []
    lines = [
        "| measure | Bulwark median (IQR) | reference median (IQR) | ratio Bulwark / reference "
        "(per-round IQR) | target | |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        row = results.get(key)
        if row is None or "error" in row:
            continue
        unit = row["unit"]
        b, r = row["bulwark"], row["reference"]
        rounds = row.get("ratio_rounds") or {"q1": row["ratio"], "q3": row["ratio"]}
        target = TARGETS.get(key)
        direction = "higher is better" if row["higher_is_better"] else "lower is better"
        lines.append(
            f"| {label} | {_value(b['median'], unit)} ({_spread(b, unit)}) | "
            f"{_value(r['median'], unit)} ({_spread(r, unit)}) | **{row['ratio']:.2f}** "
            f"({rounds['q1']:.2f}-{rounds['q3']:.2f}), {direction} | {target.text if target else '—'} | "
            f"{_status(target.met(row['ratio'])) if target else ''} |")
    memory = results.get("memory", {})
    for phase in ("clone", "push"):
        if phase in memory:
            m = memory[phase]
            over, idle = m["peak_over_idle_mib"], memory["idle_rss_mib"]
            lines.append(
                f"| Bulwark process RSS during {PHASE_LABEL[phase]}, peak over idle ({idle:.0f} MiB) | "
                f"+{over:.1f} MiB | — | — | flat (≤ {MEMORY_FLAT_MIB:.0f} MiB) | {_status(over <= MEMORY_FLAT_MIB)} |")
    return lines


def fetch_bound(results: dict[str, Any]) -> list[str]:
    """What limits the no-op fetch ratio when the clients share the machine with the servers."""
    fetch, cpu = results.get("noop_fetch", {}), results.get("noop_fetch_cpu", {})
    client = fetch.get("client_cpu_s_per_fetch")
    if not client or "reference" not in cpu:
        return []
    reference = cpu["reference"]["median"]
    return [f"The `git fetch` clients used {client * 1000:.1f} ms of CPU per no-op fetch: on one machine the "
            f"throughput ratio cannot exceed ({client * 1000:.1f} + {reference * 1000:.1f}) / "
            f"{client * 1000:.1f} = {(client + reference) / client:.2f}, however little the server costs.", ""]


def modes_table(results: dict[str, Any]) -> list[str]:
    lines = ["| Bulwark's own modes | result |", "|---|---|"]
    ha = results.get("ha_lag")
    if ha and "error" not in ha:
        s = ha["summary"]
        lines.append(f"| HA replication lag, {ha['pushes']} pushes to the primary | "
                     f"median {s['median'] * 1000:.0f} ms, p99 {ha['p99'] * 1000:.0f} ms "
                     "(includes one `ls-remote` poll of the replica) |")
    cp = results.get("cluster_push")
    if cp and "error" not in cp:
        base = cp["standalone"]["summary"]["median"]
        for name in ("cluster node", "cluster via HAProxy"):
            c = cp[name]
            lines.append(f"| push latency, 3-node {name} / standalone ({cp['rounds']} rounds) | "
                         f"**{c['ratio']:.2f}** ({c['summary']['median'] * 1000:.0f} ms vs {base * 1000:.0f} ms; "
                         f"per-round IQR {c['ratio_rounds']['q1']:.2f}-{c['ratio_rounds']['q3']:.2f}) |")
    fo = results.get("failover")
    if fo and "error" not in fo:
        rounds = fo["rounds"]
        for key, label in (("first_push_s", "`kill -9` of a node → first push (begun after it) acknowledged "
                                            "through HAProxy"),
                           ("every_repo_push_s", f"`kill -9` of a node → a push acknowledged on every one of "
                                                 f"{fo['repositories']} repositories"),
                           ("rf_restored_s", "`kill -9` of a node → replication factor restored "
                                             "(`cluster_replace_after` 5 s, reconcile every 1 s)")):
            s = fo[key]
            lines.append(f"| {label}, 4 nodes, {rounds} round(s) | median {s['median']:.2f} s "
                         f"(min {s['min']:.2f}, max {s['max']:.2f}) |")
    bk = results.get("backup")
    if bk and "error" not in bk:
        full, inc = bk["full"], bk["incremental"]
        lines.append(f"| `bulwark backup create`, first (full) / `rsync -a` of the data dir | **{full['ratio']:.2f}** "
                     f"({full['backup']:.2f} s vs {full['rsync']:.2f} s) |")
        lines.append(f"| `bulwark backup create`, incremental / `rsync -a` again, after pushes to "
                     f"{bk['changed_per_round']} repositories | **{inc['ratio']:.2f}** "
                     f"({inc['backup']['median']:.2f} s vs {inc['rsync']['median']:.2f} s; the command's own "
                     f"start-up is {bk['cli_startup_s']:.2f} s of it) |")
    return lines


def machine_line(machine: dict[str, Any]) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Linux {machine['kernel']} "
            f"({machine['os']}); Python {machine['python']}, {machine['git']}, {machine['nginx']}, "
            f"fcgiwrap {machine['fcgiwrap']}")


def markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    pack = f"{data['pack_mib']:.0f} MiB" if "pack_mib" in data else f"about {data['large_bytes'] / 2**20:.0f} MiB"
    lines = [
        f"# Bulwark benchmark, {report['profile']} run, {report['finished_at']}",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"Data: a large repository of {data['commits']} commits with {pack} of packs and "
        f"{data['small_repos']} small repositories (seed {data['seed']}). Reference: nginx + fcgiwrap "
        f"({report['reference_children']} workers) + `git http-backend`. Bulwark and the reference alternate "
        "round by round; medians with interquartile ranges.",
        "",
        *comparison_table(report["results"]),
        "",
        *fetch_bound(report["results"]),
        *modes_table(report["results"]),
        "",
        *[f"- {key} failed: {value['error']}" for key, value in report["results"].items()
          if isinstance(value, dict) and "error" in value],
        f"Run: `{report['command']}` ({report['seconds'] / 60:.1f} minutes).",
        "",
    ]
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------------


def plot_ratios(results: dict[str, Any], path: Path) -> bool:
    rows = [(key, label) for key, label in ROWS if key in results and "error" not in results[key]]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    for i, (key, _) in enumerate(rows):
        row = results[key]
        rounds = row.get("ratio_rounds") or {"min": row["ratio"], "max": row["ratio"]}
        ax.barh(i, row["ratio"], color="#4c72b0")
        ax.plot([rounds["min"], rounds["max"]], [i, i], color="black", linewidth=1)
        target = TARGETS.get(key)
        if target is not None:
            ax.plot([target.value] * 2, [i - 0.4, i + 0.4], color="red", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [key.replace("_", " ") for key, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("Bulwark / reference (bars: median; lines: per-round range; red: target)")
    ax.set_title("Bulwark against nginx + fcgiwrap + git http-backend")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_memory(memory: dict[str, Any], path: Path) -> bool:
    timeline = memory.get("timeline", [])
    if not timeline:
        return False
    fig, ax = plt.subplots(figsize=(9, 4))
    t = [s[0] for s in timeline]
    ax.plot(t, [s[1] / 2**20 for s in timeline], color="#4c72b0", label="Bulwark process RSS")
    ax.plot(t, [s[2] / 2**20 for s in timeline], color="#dd8452", linewidth=0.8, label="its git children, summed")
    for phase, color in (("clone", "#55a868"), ("push", "#c44e52")):
        labelled = False
        start = None
        for i, sample in enumerate(timeline):
            inside = sample[3] == phase
            if inside and start is None:
                start = sample[0]
            last = i == len(timeline) - 1
            if start is not None and (not inside or last):
                ax.axvspan(start, sample[0], color=color, alpha=0.25, label=None if labelled else PHASE_LABEL[phase])
                labelled, start = True, None
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title("Memory while cloning and pushing the large repository")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latencies(results: dict[str, Any], path: Path) -> bool:
    keys = [k for k in ("clone", "push", "ls_remote") if k in results and "error" not in results[k]]
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6))
    for ax, key in zip(axes if len(keys) > 1 else [axes], keys, strict=True):
        raw = results[key]["raw"]
        ax.boxplot([raw["bulwark"], raw["reference"]], tick_labels=["Bulwark", "reference"])
        ax.set_title(key.replace("_", " "))
        ax.set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_modes(results: dict[str, Any], path: Path) -> bool:
    ha, cp = results.get("ha_lag"), results.get("cluster_push")
    ha = ha if ha and "error" not in ha else None
    cp = cp if cp and "error" not in cp else None
    if not ha and not cp:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    if ha:
        axes[0].hist([v * 1000 for v in ha["raw"]], bins=20, color="#4c72b0")
        axes[0].set_xlabel("ms")
        axes[0].set_title("HA replication lag")
    if cp:
        names = [n for n in ("standalone", "cluster node", "cluster via HAProxy") if n in cp]
        axes[1].boxplot([[v * 1000 for v in cp[n]["raw"]] for n in names], tick_labels=names)
        axes[1].set_ylabel("ms")
        axes[1].set_title("push latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "latest.json", out / "latest.md"]
    (out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "latest.md").write_text(markdown(report))
    results = report["results"]
    plots: dict[str, Callable[[Path], bool]] = {
        "ratios.png": lambda p: plot_ratios(results, p),
        "memory.png": lambda p: plot_memory(results.get("memory", {}), p),
        "latency.png": lambda p: plot_latencies(results, p),
        "modes.png": lambda p: plot_modes(results, p),
    }
    for name, draw in plots.items():
        if draw(out / name):
            written.append(out / name)
        else:
            (out / name).unlink(missing_ok=True)  # an earlier run's plot would not match this run's table
    return written


def main() -> None:
    """Render the table and the plots again from a results file: python -m bench.report [bench/results/latest.json]"""
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "latest.json"
    for path in write(json.loads(source.read_text()), source.parent):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
