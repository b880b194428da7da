"""Standalone mode under the nemesis: one ``bulwark serve``, killed with SIGKILL in the middle of pushes.

After each kill the node is started again on the same data dir and port, ``bulwark fsck`` must
be clean and the first push on every branch must be acknowledged (what the killed git
processes left behind is cleared by the node itself).
"""

from __future__ import annotations

import signal
from pathlib import Path

from bulwark.git.runner import GitRunner
from bulwark.store.sqlite import SQLiteStore
from chaos.checker import FinalState, RepoFinal
from chaos.faults import FaultKind, Mode, Planned
from chaos.history import Clock
from chaos.system import Injected, System, fsck_report, run, signal_group
from tests.support.helpers import BULWARK, Server

NODE = "node"


class StandaloneSystem(System):
    mode = Mode.STANDALONE

    def __init__(self, workdir: Path, clock: Clock, repos: int) -> None:
        super().__init__(workdir, clock, repos)
        self.server = Server(data_dir=workdir / NODE)
        self.token = ""

    def start(self) -> None:
        self.server.start()
        self.token = self.server.create_user("alice")
        for repo in self.repo_names:
            self.server.create_repo(self.token, repo)

    def stop(self) -> None:
        self.server.stop()

    def url(self, repo: str) -> str:
        return self.server.remote("alice", repo, token=self.token)

    def targets(self) -> dict[FaultKind, list[str]]:
        return {FaultKind.KILL: [NODE]}

    def logs(self) -> list[Path]:
        return [self.server.log_path]

    def restore(self) -> None:
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.server.start()

    def _inject(self, planned: Planned, got: Injected) -> None:
        if planned.kind is not FaultKind.KILL:
            raise ValueError(f"{planned.kind} is not a standalone fault")
        assert self.server.proc is not None
        # The node and every git process it started: a crash of the whole service.
        with self.disrupting(got):
            signal_group(self.server.proc.pid, signal.SIGKILL)
            self.server.proc.wait(10)
        self.hold(planned)
        self.server.start()
        got.detail["back_at"] = got.detail["current_at"] = self.clock.now()
        got.detail["node"] = NODE
        fsck = self.fsck()
        got.detail["fsck_ok"] = fsck is None
        if fsck is not None:
            got.detail["fsck"] = fsck

    def fsck(self) -> str | None:
        """None when ``bulwark fsck`` is clean, else what it said."""
        return fsck_report(run([*BULWARK, "fsck", "--json", "--data-dir", str(self.server.data_dir)],
                               env=self.server.env()))

    def converged(self) -> bool:
        return True  # one copy of everything

    def final_state(self, tips: dict[str, dict[str, str]], converged_after: float | None,
                    bound: float) -> FinalState:
        store = SQLiteStore(self.server.data_dir / "metadata.db")
        try:
            ids = {r.name: r.storage_id for r in store.list_repos()}
        finally:
            store.close()
        disk = GitRunner(self.server.data_dir / "repositories")
        repos = {}
        for repo in self.repo_names:
            refs = {r.name.removeprefix("refs/heads/"): r.oid for r in disk.refs(ids[repo], "refs/heads/")}
            repos[repo] = RepoFinal(tips=tips.get(repo, {}), replicas={NODE: refs})
        fsck = self.fsck()
        return FinalState(repos=repos, converged_after=converged_after, bound=bound,
                          fsck={NODE: fsck} if fsck is not None else {})
