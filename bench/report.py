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

from bench import scale

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


SSH_TARGETS = {
    "clone": Target(1.10, True, "≤ 1.10"),
    "push": Target(1.10, True, "≤ 1.10"),
    "noop_fetch": Target(1.0, False, "≥ 1.0"),
}
SSH_ROWS = [
    ("connect", "`ls-remote` of the large repository (connection set-up, login, advertisement)"),
    ("clone", "full clone of the large repository (`clone --bare`)"),
    ("push", "push of the large repository into an empty one"),
    ("noop_fetch", "no-op fetch of the large repository, 8 concurrent clients"),
]


def ssh_table(results: dict[str, Any]) -> list[str]:
    """Git over SSH: Bulwark's listener against OpenSSH's sshd with git-shell."""
    ssh = results.get("ssh")
    if not ssh or "error" in ssh:
        return []
    lines = ["| git over SSH | Bulwark median (IQR) | sshd + git-shell median (IQR) | ratio (per-round IQR) | "
             "target | |", "|---|---|---|---|---|---|"]
    for key, label in SSH_ROWS:
        row = ssh.get(key)
        if row is None:
            continue
        unit, b, r = row["unit"], row["bulwark"], row["reference"]
        rounds = row.get("ratio_rounds") or {"q1": row["ratio"], "q3": row["ratio"]}
        target = SSH_TARGETS.get(key)
        lines.append(
            f"| {label} | {_value(b['median'], unit)} ({_spread(b, unit)}) | {_value(r['median'], unit)} "
            f"({_spread(r, unit)}) | **{row['ratio']:.2f}** ({rounds['q1']:.2f}-{rounds['q3']:.2f}) | "
            f"{target.text if target else '—'} | {_status(target.met(row['ratio'])) if target else ''} |")
    for phase, label in (("ssh_clone", "clones"), ("ssh_push", "pushes")):
        m = ssh.get("memory", {}).get(phase)
        if m:
            lines.append(f"| Bulwark process RSS during the {label} over SSH, lowest to highest sample | "
                         f"{m['low_rss_mib']:.0f}-{m['peak_rss_mib']:.0f} MiB | — | — | flat | |")
    return [*lines, ""]


def ssh_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Git over SSH — {report['finished_at']}", "", machine_line(report["machine"]), "",
             f"Command: `{report['command']}`", "", *ssh_table(report["results"])]
    return "\n".join(lines) + "\n"


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
        hung = cp.get("cluster node, a follower hung")
        if hung:
            lines.append(f"| push to a cluster node while a follower's node hangs (SIGSTOP), longest of "
                         f"{cp['rounds']} | {hung['summary']['max'] * 1000:.0f} ms (median "
                         f"{hung['summary']['median'] * 1000:.0f} ms; the first {hung['raw'][0] * 1000:.0f} ms) |")
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


def _happened(a: dict[str, Any]) -> str:
    """What an attack's clients got back, and what it cost the node."""
    got = a["attack"]
    if "error" in got:
        text = f"the attack failed: {got['error']}"
    elif "outcomes" in got:
        answers = sorted(got["outcomes"].items(), key=lambda item: -item[1])
        text = f"{got['sent']:,} requests, " + ", ".join(f"{n:,} answered {what}" for what, n in answers)
    else:
        counts = [f"{n:,} {what}" for what, n in got.items() if what not in ("held_at_end", "peak_held")]
        text = f"{got['peak_held']:,} connections held at most ({', '.join(counts)})"
    text += (f"; the node's process used {a['node_cpu']:.2f} of a core; at most {a['git_processes_peak']} git "
             f"processes at once and {a['git_pss_peak_mib']:.0f} MiB of their PSS")
    return text + "".join(f"; a clone failed: {why}" for why in a["clone"]["errors"][:1])


ABUSE_READING = (
    "Each attack runs in a process of its own from {addresses} loopback addresses (one for the last row); another "
    "process asks `/status` every 50 ms on a new connection, as a health check does, and it and the clones come "
    "from 127.0.0.1, so a limit per address may refuse the attacker and not them. RSS growth: the node's own process, "
    "its peak less its median in the second before the attack (git processes apart, above). Clone: an anonymous "
    "`git clone --bare`, one after the other from 2 s into the attack to its end (which waits for the last one); "
    "its median against that of the clones just before. Attackers, probe, clones and node share the machine's cores "
    "with other work (load average {load:.2f} as the section began), so a ratio is the node's and the machine's.")


def abuse_table(results: dict[str, Any]) -> list[str]:
    """The node while each hostile client's attack runs (bench/abuse.py)."""
    ab = results.get("abuse")
    if not ab or "error" in ab:
        return []
    t = ab["targets"]
    lines = [f"Hostile clients against a standalone node serving a {ab['repository_mib']:.0f} MiB public repository, "
             f"each attack {ab['seconds_per_attack']:.0f} s. Targets: `/status` p99 ≤ {t['status_p99_s'] * 1000:.0f}"
             f" ms, RSS growth ≤ {t['rss_mb']} MB, clone ≤ {t['clone_ratio']:.0f} times its time without attack.", "",
             "| attack (its length) | `/status` p50 / p99 / max | RSS growth | clone during / without attack | "
             "load average (1 min), before → after | missed |", "|---|---|---|---|---|---|"]
    for a in ab["attacks"]:
        st, clone = a["status"], a["clone"]
        unanswered = f" ({st['failed']} unanswered)" if st["failed"] else ""
        cloned = "none succeeded" if clone["during"] is None else (
            f"{_value(clone['during'], 's')} / {_value(clone['baseline'], 's')} = **{clone['ratio']:.1f}x**")
        if clone["failed"]:
            cloned += f", {clone['failed']} of {clone['count']} failed"
        lines.append(f"| {a['label']} ({a['seconds']:.0f} s) | {_value(st['p50'], 's')} / "
                     f"**{_value(st['p99'], 's')}** / {_value(st['max'], 's')}{unanswered} | "
                     f"+{a['rss']['growth_mib']:.1f} MiB | {cloned} | {a['load_before'][0]:.2f} → "
                     f"{a['load_after'][0]:.2f} | {', '.join(k for k, ok in a['met'].items() if not ok) or '—'} |")
    return [*lines, "", *[f"- {a['label']}: {_happened(a)}." for a in ab["attacks"]], "",
            ABUSE_READING.format(addresses=len(ab["attacker_addresses"]), load=ab["load_at_start"][0]), ""]


def abuse_markdown(report: dict[str, Any]) -> str:
    abuse, m = report["results"].get("abuse", {}), report["machine"]
    return "\n".join([f"# Bulwark under hostile clients, {report['profile']} run, {report['finished_at']}", "",
                      f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']} "
                      f"({m['os']}); Python {m['python']}, {m['git']}.", "", *abuse_table(report["results"]),
                      *([f"- abuse failed: {abuse['error']}", ""] if "error" in abuse else []),
                      f"Run: `{report['command']}` ({abuse.get('seconds', report['seconds']) / 60:.1f} minutes "
                      "for this section).", ""])


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
        *ssh_table(report["results"]),
        *modes_table(report["results"]),
        "",
        *abuse_table(report["results"]),
        *(["## Scale", "", *scale.markdown(report["results"]["scale"])] if "scale" in report["results"] else []),
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


def plot_abuse(abuse: dict[str, Any], path: Path) -> bool:
    attacks = abuse.get("attacks", [])
    if not attacks:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for a in attacks:
        top.plot([t for t, _ in a["status"]["timeline"]], [s * 1000 for _, s in a["status"]["timeline"]],
                 linewidth=0.8, label=a["label"])
        bottom.plot([t for t, _ in a["rss"]["timeline"]], [m for _, m in a["rss"]["timeline"]], linewidth=0.8)
    top.axhline(abuse["targets"]["status_p99_s"] * 1000, color="red", linestyle="--", linewidth=1)
    top.set_yscale("log")
    top.set_ylabel("/status, ms (red: p99 target)")
    top.legend(fontsize=7, loc="upper right")
    bottom.set_ylabel("node RSS growth, MiB")
    bottom.set_xlabel("seconds into the attack")
    top.set_title("Bulwark under hostile clients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _write_alone(report: dict[str, Any], out: Path, key: str, render: Callable[[dict[str, Any]], str],
                 draw: Callable[[dict[str, Any], Path], bool]) -> list[Path]:
    """One section's figures on their own: KEY.json, KEY.md and KEY.png."""
    figures = report["results"].get(key)
    if not figures:
        return []
    own = {**report, "sections": [key], "results": {key: figures}}
    (out / f"{key}.json").write_text(json.dumps(own, indent=1) + "\n")
    (out / f"{key}.md").write_text(render(own))
    if "error" not in figures and draw(figures, out / f"{key}.png"):
        return [out / f"{key}.json", out / f"{key}.md", out / f"{key}.png"]
    (out / f"{key}.png").unlink(missing_ok=True)  # an earlier run's plot would not match
    return [out / f"{key}.json", out / f"{key}.md"]


def scale_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Scale — {report['finished_at']}", "", machine_line(report["machine"]), "",
             f"Command: `{report['command']}`", "", *scale.markdown(report["results"]["scale"])]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    abuse = (_write_alone(report, out, "abuse", abuse_markdown, plot_abuse)
             + _write_alone(report, out, "scale", scale_markdown, scale.plot)
             + _write_alone(report, out, "ssh", ssh_markdown, lambda _figures, _path: False))
    if report["sections"] in (["abuse"], ["scale"], ["ssh"]):
        return abuse  # alone, they leave the full run's latest.* as they are
    written = [out / "latest.json", out / "latest.md", *abuse]
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
