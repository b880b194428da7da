"""A short fault-injection campaign in each mode, with a fixed plan: every fault of the mode in turn,
a few times, under real git load; the checker's verdict must be clean.

The figures (outages, recovery and heal times) are printed, never asserted. A failure lists the
violations with the history lines that show them; the report (history, summary, logs) is kept in
the test's temporary directory, and ``python -m chaos --mode MODE --each N`` replays the same plan.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chaos import report
from chaos.campaign import CampaignResult, CampaignSpec, run
from chaos.faults import Mode

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(any(shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()
                           for t in ("git", "etcd", "haproxy")), reason="needs git, etcd and haproxy"),
    pytest.mark.system,
]


def campaign(mode: Mode, each: int, tmp_path: Path) -> CampaignResult:
    spec = CampaignSpec(mode=mode, each=each, seed=1, warmup=1.0)
    out = tmp_path / "report"
    result = run(spec, tmp_path / "work", out, say=lambda line: print(line, flush=True))
    report.write(result, out)
    print(report.markdown(result))
    return result


def verdict(result: CampaignResult) -> str:
    listed = "\n".join(f"- {v.problem}: {v.message} (history lines {list(v.ops)})"
                       for v in result.verdict.violations[:20])
    return f"{len(result.verdict.violations)} violations; replay with `{result.spec.command()}`:\n{listed}"


def test_standalone_kill_9_during_pushes(tmp_path: Path) -> None:
    result = campaign(Mode.STANDALONE, 3, tmp_path)
    assert len(result.plan) == 3 and all(op.ok for op in result.ops if op.kind == "fault")
    assert result.figures.acknowledged > 0
    assert result.verdict.valid, verdict(result)


def test_ha_failover_and_replica_restart(tmp_path: Path) -> None:
    result = campaign(Mode.HA, 2, tmp_path)
    assert [p.kind for p in result.plan] == ["kill-primary", "kill-replica"] * 2
    assert result.figures.acknowledged > 0
    assert result.verdict.valid, verdict(result)


# Known to fail, not hidden: the campaign finds open cluster bugs (a repository left locked after a
# partition, HAProxy with no node while etcd elects a leader, 502s around a node's graceful restart),
# each with a reproduction in chaos/README.md and docs/ROADMAP.md. It runs, and reports XPASS once they
# are fixed; then this mark goes.
def test_cluster_every_fault(tmp_path: Path) -> None:
    result = campaign(Mode.CLUSTER, 2, tmp_path)
    assert len(result.plan) == 2 * (6 - len(result.skipped))
    assert result.figures.acknowledged > 0
    assert result.verdict.valid, verdict(result)
