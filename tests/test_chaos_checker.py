"""The chaos checker on hand-made histories: each invariant holds on a good one and catches a bad one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from chaos import checker, metrics
from chaos.checker import RULES, FinalState, Problem, RepoFinal
from chaos.failures import Failure, classify, reason
from chaos.faults import MODE_FAULTS, FaultKind, Mode, plan_each, plan_random
from chaos.graph import Graph
from chaos.history import History, Kind, Op, Result, Role
from chaos.history import load as load_history

ROOT, A, B, C, D = "r" * 40, "a" * 40, "b" * 40, "c" * 40, "d" * 40


class Builder:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, **values: Any) -> Op:
        values.setdefault("result", Result.OK)
        values.setdefault("process", "w0")
        op = Op(index=len(self.ops), **values)
        self.ops.append(op)
        return op

    def push(self, sha: str, parent: str | None, start: float, end: float, *, ok: bool = True,
             branch: str = "w0", role: Role = Role.SINGLE, error: str = "", result: Result | None = None,
             **extra: Any) -> Op:
        return self.add(kind=Kind.PUSH, repo="r0", branch=branch, role=role, sha=sha,
                        parents=(parent,) if parent else (), start=start, end=end,
                        result=result or (Result.OK if ok else Result.FAIL), error=error, **extra)

    def read(self, refs: dict[str, str], start: float, end: float, how: str = "ls-remote") -> Op:
        if how != "fetch":
            refs = {"race": ROOT, **refs}  # what a full read also sees: the racers' branch, never pushed here
        return self.add(kind=Kind.READ, process="read0", repo="r0", refs=refs, how=how, start=start, end=end)

    def fault(self, kind: FaultKind, start: float, end: float, **detail: Any) -> Op:
        return self.add(kind=Kind.FAULT, process="nemesis", fault=kind.value, target="node2", start=start, end=end,
                        detail=detail)


def final(tips: dict[str, str], replicas: dict[str, dict[str, str]] | None = None, **kw: Any) -> FinalState:
    """The final state with ``tips`` (every branch not named is still at its seed commit)."""
    tips = {"w0": ROOT, "race": ROOT, **tips}
    if replicas is not None:
        replicas = {node: {"w0": ROOT, "race": ROOT, **refs} for node, refs in replicas.items()}
    repo = RepoFinal(tips=tips, replicas=replicas if replicas is not None else {"node1": tips, "node2": tips}, **kw)
    return FinalState(repos={"r0": repo}, converged_after=1.0, bound=60.0)


def seeded() -> Builder:
    b = Builder()
    b.push(ROOT, None, 0.0, 0.1, role=Role.SEED)
    b.push(ROOT, None, 0.0, 0.1, role=Role.SEED, branch="race")
    return b


def problems(b: Builder, state: FinalState, mode: Mode = Mode.CLUSTER) -> list[Problem]:
    return [v.problem for v in checker.check(b.ops, state, RULES[mode]).violations]


def test_a_clean_history_is_valid() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.read({"w0": A}, 1.3, 1.4)
    b.push(B, A, 1.5, 1.7)
    verdict = checker.check(b.ops, final({"w0": B}), RULES[Mode.CLUSTER])
    assert verdict.valid, verdict.violations


def test_an_acknowledged_push_missing_from_the_final_tip_is_lost() -> None:
    b = seeded()
    lost = b.push(A, ROOT, 1.0, 1.2, branch="race", role=Role.RACE)
    b.push(B, ROOT, 1.1, 1.3, branch="race", role=Role.RACE)  # both acknowledged, neither contains the other
    verdict = checker.check(b.ops, final({"race": B}), RULES[Mode.CLUSTER])
    assert [v.problem for v in verdict.violations] == [Problem.LOST]
    assert verdict.violations[0].ops == (lost.index,)


def test_a_rejected_racer_is_not_lost() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2, branch="race", role=Role.RACE)
    b.push(B, ROOT, 1.1, 1.3, branch="race", role=Role.RACE, ok=False,
           error=" ! [rejected]        HEAD -> race (fetch first)\nerror: failed to push some refs")
    assert problems(b, final({"race": A})) == []


def test_single_writer_tip_must_be_its_last_acknowledged_push() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.push(B, A, 1.3, 1.5)
    # The tip went back to an older acknowledged push: the newer one is lost and the tip is wrong.
    assert problems(b, final({"w0": A})) == [Problem.LOST, Problem.WRONG_TIP]


def test_a_later_unacknowledged_push_may_have_taken_effect() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.push(B, A, 1.3, 61.3, ok=False, error="fatal: the remote end hung up unexpectedly")
    b.fault(FaultKind.KILL, 1.4, 3.0, disruptions=[1.4], back_at=2.5)
    assert problems(b, final({"w0": B})) == []


def test_a_read_older_than_an_acknowledged_push_is_stale() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.read({"w0": A}, 1.1, 1.5)  # began before the acknowledgement: either answer is fine
    newer = b.push(B, A, 1.3, 1.5)
    stale = b.read({"w0": A}, 1.6, 1.7)
    verdict = checker.check(b.ops, final({"w0": B}), RULES[Mode.CLUSTER])
    assert [v.problem for v in verdict.violations] == [Problem.STALE_READ]
    assert verdict.violations[0].ops == (stale.index, newer.index)


def test_a_read_missing_the_branch_or_showing_an_unknown_commit_is_stale() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.read({}, 2.0, 2.1)
    b.read({"w0": D}, 2.2, 2.3)
    b.read({"main": ROOT}, 2.4, 2.5, how="fetch")  # a fetch of another branch says nothing about w0
    assert problems(b, final({"w0": A})) == [Problem.STALE_READ, Problem.STALE_READ]


def test_stale_reads_look_at_the_latest_pushes_only_but_catch_any() -> None:
    b = seeded()
    prev = ROOT
    for i, sha in enumerate((A, B, C)):
        b.push(sha, prev, 1.0 + i, 1.5 + i)
        prev = sha
    b.read({"w0": C}, 5.0, 5.1)
    b.read({"w0": B}, 5.2, 5.3)  # misses C, acknowledged at 3.5
    assert problems(b, final({"w0": C})) == [Problem.STALE_READ]
    assert Graph(b.ops).contains(C, ROOT) and not Graph(b.ops).contains(A, C)


def test_replicas_must_agree_and_be_current() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    assert problems(b, final({"w0": A}, {"node1": {"w0": A}, "node2": {"w0": ROOT}})) == [Problem.DIVERGED]
    # The replicas agree with each other, not with what clients read.
    assert problems(b, final({"w0": A}, {"node1": {"w0": ROOT}, "node2": {"w0": ROOT}})) == [Problem.DIVERGED]
    assert problems(b, final({"w0": A}, outdated=("node3",), under_replicated=True)) == [
        Problem.NOT_CONVERGED, Problem.NOT_CONVERGED]
    late = FinalState(repos=final({"w0": A}).repos, converged_after=None, bound=60.0)
    assert problems(b, late) == [Problem.NOT_CONVERGED]


def test_failures_must_read_as_git_refusals_unless_a_process_died_under_them() -> None:
    b = seeded()
    b.fault(FaultKind.KILL, 2.0, 4.0, disruptions=[2.0], back_at=3.0)
    refused = (" ! [remote rejected] HEAD -> w0 (only 1 of the 3 replicas of this repository are reachable)\n"
               "error: failed to push some refs to 'http://lb/alice/r0.git'")
    hung = "error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502\n" \
           "fatal: the remote end hung up unexpectedly"
    b.push(A, ROOT, 1.0, 1.1, ok=False, error=refused)
    b.push(B, ROOT, 1.9, 2.2, ok=False, error=hung)  # in flight at the kill
    bad = b.push(C, ROOT, 2.5, 2.6, ok=False, error=hung)  # began after it: must have been answered in words
    verdict = checker.check(b.ops, final({"w0": ROOT}), RULES[Mode.CLUSTER])
    assert [v.problem for v in verdict.violations] == [Problem.BAD_FAILURE]
    assert verdict.violations[0].ops == (bad.index,)


def test_documented_outages_allow_an_unreachable_node() -> None:
    b = seeded()
    b.fault(FaultKind.KILL, 2.0, 4.0, disruptions=[2.0], back_at=3.0)
    refused = "fatal: unable to access 'http://n/alice/r0.git/': Failed to connect to 127.0.0.1 port 1: " \
              "Connection refused"
    b.push(A, ROOT, 2.5, 2.6, ok=False, error=refused)
    assert problems(b, final({"w0": ROOT}), Mode.STANDALONE) == []
    assert problems(b, final({"w0": ROOT}), Mode.CLUSTER) == [Problem.BAD_FAILURE]  # a cluster stays up
    b.push(B, ROOT, 9.0, 9.1, ok=False, error=refused)
    # Long after it came back: a failure in no words, and the branch was not writable at once.
    assert problems(b, final({"w0": ROOT}), Mode.STANDALONE) == [Problem.BAD_FAILURE, Problem.NOT_WRITABLE]


def test_a_timeout_outside_every_fault_is_a_stall() -> None:
    b = seeded()
    b.fault(FaultKind.PAUSE, 2.0, 4.0, disruptions=[2.0], back_at=4.0)
    b.push(A, ROOT, 1.5, 61.5, result=Result.TIMEOUT)  # overlapped the pause: reported, not a violation
    b.push(B, ROOT, 70.0, 130.0, result=Result.TIMEOUT)
    assert problems(b, final({"w0": ROOT})) == [Problem.STALLED]


def test_standalone_branches_writable_at_once_after_a_restart() -> None:
    b = seeded()
    kill = b.fault(FaultKind.KILL, 2.0, 3.0, disruptions=[2.0], back_at=3.0, fsck_ok=True)
    b.push(A, ROOT, 3.1, 3.2, ok=False, error="remote: cannot lock ref 'refs/heads/w0'")
    b.push(B, ROOT, 3.3, 3.4)
    assert problems(b, final({"w0": B}), Mode.STANDALONE) == [Problem.NOT_WRITABLE]
    b.ops[kill.index] = dataclasses.replace(kill, detail={"back_at": 3.0, "fsck_ok": False, "fsck": "1 failed"})
    assert problems(b, final({"w0": B}), Mode.STANDALONE) == [Problem.NOT_WRITABLE, Problem.FSCK]


def test_final_writes_must_be_acknowledged() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.push(B, A, 5.0, 5.1, ok=False, phase="final", error=" ! [remote rejected] HEAD -> w0 (no majority)")
    assert problems(b, final({"w0": A})) == [Problem.NOT_WRITABLE]


def test_faults_that_fail_or_never_heal_are_violations() -> None:
    b = seeded()
    b.add(kind=Kind.FAULT, process="nemesis", fault="kill", target="node1", start=1.0, end=2.0,
          result=Result.FAIL, error="node1 did not start")
    b.fault(FaultKind.PAUSE, 3.0, 4.0, back_at=4.0, current_at=None, heal_bound=60.0)
    assert problems(b, final({})) == [Problem.FAULT_FAILED, Problem.UNHEALED]


def test_ha_pushes_the_replica_had_not_taken_may_be_lost() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    kill = b.fault(FaultKind.KILL_PRIMARY, 1.3, 5.0, disruptions=[1.3], back_at=4.0,
                   unreplicated=[["r0", "w0", A]])
    b.read({"w0": ROOT}, 6.0, 6.1)
    b.push(B, ROOT, 6.2, 6.3)  # built on what the new primary has
    assert problems(b, final({"w0": B}), Mode.HA) == []
    assert problems(b, final({"w0": B}), Mode.CLUSTER) == [Problem.LOST, Problem.STALE_READ]
    # One the replica's position said it held is no documented loss.
    b.ops[kill.index] = dataclasses.replace(kill, detail={**kill.detail, "claimed": [["r0", "w0", A]]})
    assert problems(b, final({"w0": B}), Mode.HA) == [Problem.LOST, Problem.STALE_READ]


def test_failure_kinds_and_reasons() -> None:
    assert classify(" ! [remote rejected] main -> main (this repository is busy)") is Failure.REFUSED
    assert classify("remote: this node no longer takes writes\nfatal: unable to access 'x': The requested URL "
                    "returned error: 503") is Failure.REFUSED
    assert classify("fatal: unable to access 'x': The requested URL returned error: 503") is Failure.BARE_5XX
    assert classify("error: RPC failed; curl 52 Empty reply from server") is Failure.HUNG_UP
    assert classify(" ! [rejected]        HEAD -> race (non-fast-forward)") is Failure.REJECTED
    assert classify("fatal: unable to access 'x': The requested URL returned error: 404") is Failure.CLIENT_ERROR
    assert classify("", timed_out=True) is Failure.TIMEOUT
    assert reason(" ! [remote rejected] HEAD -> w0 (only 1 of the 3 replicas are up)") == \
        "only N of the N replicas are up"


def test_figures_outages_and_recoveries() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    b.fault(FaultKind.KILL, 1.5, 3.0, disruptions=[1.5], back_at=2.5, current_at=4.0, heal_bound=60.0)
    b.push(B, A, 1.4, 3.2, ok=False, error="fatal: the remote end hung up unexpectedly")
    b.push(C, A, 3.3, 3.5)
    figures = metrics.figures(b.ops)
    assert figures.acknowledged == 4 and figures.failures == {"hung up": 1}
    [outage] = figures.outages
    assert round(outage.seconds, 2) == 2.3 and outage.began == 1.2
    [kill] = figures.rounds
    assert kill.kill_to_ack == {"r0": 2.0} and kill.every_repo == 2.0 and kill.heal == 1.5


def test_plans_are_reproducible_and_cover_every_fault() -> None:
    kinds = MODE_FAULTS[Mode.CLUSTER]
    targets = {k: ["node1", "node2", "node3"] for k in kinds}
    assert plan_random(kinds, targets, 20, seed=7) == plan_random(kinds, targets, 20, seed=7)
    assert plan_random(kinds, targets, 20, seed=7) != plan_random(kinds, targets, 20, seed=8)
    each = plan_each(kinds, targets, 2)
    assert [p.kind for p in each] == list(kinds) * 2 and [p.round for p in each] == list(range(12))


def test_history_lines_round_trip(tmp_path: Path) -> None:
    from chaos.history import Clock

    history = History(Clock(), tmp_path / "h.jsonl")
    history.record(process="w0", kind=Kind.PUSH, start=0.0, end=0.5, result=Result.OK, repo="r0", branch="w0",
                   role=Role.SINGLE, sha=A, parents=(ROOT,))
    history.record(process="read0", kind=Kind.READ, start=0.6, end=0.7, result=Result.OK, repo="r0",
                   refs={"w0": A}, how="ls-remote")
    history.close()
    assert load_history(tmp_path / "h.jsonl") == history.ops


def test_commits_of_pushes_still_in_flight_count_in_the_graph() -> None:
    b = seeded()
    b.push(A, ROOT, 1.0, 1.2)
    graph = Graph(b.ops, made={B: (A,)})  # B's push has not ended yet
    assert graph.contains(B, ROOT) and graph.contains(B, A) and not Graph(b.ops).contains(B, A)


def test_a_disruption_lasts_until_its_signal_took_effect() -> None:
    b = seeded()
    b.fault(FaultKind.KILL, 2.0, 4.0, disruptions=[[2.0, 2.05]], back_at=3.0)
    reset = "fatal: unable to access 'http://n/alice/r0.git/': Recv failure: Connection reset by peer"
    b.push(A, ROOT, 2.01, 2.1, ok=False, error=reset)  # began while the node was being killed
    late = b.push(B, ROOT, 2.1, 2.2, ok=False, error=reset)
    verdict = checker.check(b.ops, final({}), RULES[Mode.CLUSTER])
    assert [v.ops for v in verdict.violations] == [(late.index,)]
