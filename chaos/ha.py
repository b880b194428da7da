"""HA mode under the nemesis: a primary, its replica and HAProxy with the shipped HA config.

A kill of the primary is followed by what an administrator does: ``bulwark repl promote`` on
the replica after the hold, then the old primary is started again as it was (it must come back
fenced, and a push sent straight to it must be refused), and is made the new primary's replica
with ``bulwark repl setup --yes``. The two nodes swap roles at every such round.

Replication is asynchronous, so pushes acknowledged just before the primary died may be
missing after the promotion (the README says so). The nemesis reads the replica's branches
just before it promotes it (after that, a writer's next push brings back, as ancestors, commits
the promoted node lacked), records which acknowledged pushes it did not have, and which of those the old
primary's change log had recorded at or below the position the replica had reached (those the
replica claimed to hold: their loss is not the documented one).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx

from bulwark.store.sqlite import SQLiteStore
from chaos.checker import WRITES, FinalState, RepoFinal
from chaos.faults import FaultKind, Mode, Planned
from chaos.history import Clock, Kind
from chaos.load import Git, parse_refs
from chaos.system import Injected, System, fsck_report, run, signal_group, wait_until
from tests.support.ha_helpers import HAProxy, repl, setup_replica
from tests.support.helpers import BULWARK, Server

FAST_REPAIR = {"BULWARK_HA_RECONCILE_INTERVAL": "1"}


class HASystem(System):
    mode = Mode.HA

    def __init__(self, workdir: Path, clock: Clock, repos: int) -> None:
        super().__init__(workdir, clock, repos)
        self.servers = {name: Server(data_dir=workdir / name, extra_env=dict(FAST_REPAIR))
                        for name in ("node1", "node2")}
        self.primary, self.replica = "node1", "node2"
        self.lb: HAProxy | None = None
        self.token = ""
        self.git = Git(workdir / "home-nemesis")
        self.documented: set[tuple[str, str, str]] = set()  # losses recorded at an earlier promotion

    def start(self) -> None:
        for server in self.servers.values():
            server.start()
        primary, replica = self.servers[self.primary], self.servers[self.replica]
        setup_replica(replica, primary)
        self.token = primary.create_user("alice")
        for repo in self.repo_names:
            primary.create_repo(self.token, repo)
        self.lb = HAProxy(self.workdir, self.servers["node1"], self.servers["node2"])
        # HAProxy starts with both nodes up; two failed checks a second apart take the replica out.
        if not wait_until(lambda: self._lb_on(self.primary), 30):
            raise RuntimeError("HAProxy does not send to the primary alone")
        if not wait_until(self.converged, 60):
            raise RuntimeError("the replica did not take the new repositories")

    def _lb_on(self, name: str) -> bool:
        assert self.lb is not None
        stats = [httpx.get(f"{self.lb.url}/status", timeout=2).status_code for _ in range(4)]
        return stats == [200] * 4 and httpx.get(f"{self.servers[self.replica].url}/status").status_code == 503

    def stop(self) -> None:
        try:
            if self.lb is not None:
                self.lb.stop()
        finally:
            for server in self.servers.values():
                server.stop()

    def url(self, repo: str) -> str:
        assert self.lb is not None
        return f"http://x:{self.token}@127.0.0.1:{self.lb.port}/alice/{repo}.git"

    def node_url(self, name: str, repo: str) -> str:
        return self.servers[name].remote("alice", repo, token=self.token)

    def targets(self) -> dict[FaultKind, list[str]]:
        return {FaultKind.KILL_PRIMARY: ["primary"], FaultKind.KILL_REPLICA: ["replica"]}

    def logs(self) -> list[Path]:
        return [s.log_path for s in self.servers.values()] + [self.workdir / "haproxy.log"]

    def restore(self) -> None:
        for server in self.servers.values():
            if server.proc is None or server.proc.poll() is not None:
                server.start()

    # -- faults -----------------------------------------------------------------------------

    def _kill(self, name: str) -> None:
        server = self.servers[name]
        assert server.proc is not None
        signal_group(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)

    def _inject(self, planned: Planned, got: Injected) -> None:
        if planned.kind is FaultKind.KILL_REPLICA:
            name = self.replica
            got.detail["node"] = name
            self._kill(name)
            self.hold(planned)
            self.servers[name].start()
            self.measure_heal(got, self.catching_up(), name)
        elif planned.kind is FaultKind.KILL_PRIMARY:
            self._fail_over(planned, got)
        else:
            raise ValueError(f"{planned.kind} is not an HA fault")

    def _fail_over(self, planned: Planned, got: Injected) -> None:
        old, new = self.primary, self.replica
        got.detail["node"] = old
        killed = self.clock.now()
        with self.disrupting(got):
            self._kill(old)
        events = old_events(self.servers[old].data_dir / "metadata.db")
        self.hold(planned)  # the administrator's reaction time
        # What the replica holds as it is promoted: read now, since once promoted it takes the
        # writers' next pushes, which carry any commit it lacked as an ancestor.
        had = {repo: self.heads(new, repo) for repo in self.repo_names}
        promoted = repl(self.servers[new], "promote")
        got.detail["promote"] = (promoted.stdout + promoted.stderr).strip()[-600:]
        if promoted.returncode != 0:
            raise RuntimeError(f"repl promote failed: {got.detail['promote']}")
        got.detail["back_at"] = self.clock.now()
        self.primary, self.replica = new, old
        self._note_unreplicated(got, killed, events, had)
        # The old primary, started again as it was, must come back fenced and refuse writes.
        self.servers[old].start()
        got.detail["old_primary_status"] = httpx.get(f"{self.servers[old].url}/status", timeout=5).status_code
        repo = self.repo_names[0]
        assert self.load is not None
        got.detail["probe_taken"] = self.load.probe(self.node_url(old, repo), repo, f"probe-{planned.round}", old)
        setup = setup_replica(self.servers[old], self.servers[new], "--yes")
        got.detail["setup"] = setup.stdout.strip()[-300:]
        self.measure_heal(got, self.catching_up(), old)

    def _note_unreplicated(self, got: Injected, killed: float, events: list[tuple[int, str, str, str]],
                           have: dict[str, dict[str, str]]) -> None:
        """The acknowledged pushes begun before the kill that the promoted node lacked (``have``: its
        branches as it was promoted), and which of them the replica's position covered (the old
        primary had logged them at or below it)."""
        assert self.load is not None
        ops = self.load.history.ops
        graph = self.load.graph()
        store = SQLiteStore(self.servers[self.primary].data_dir / "metadata.db")
        try:
            position = store.replication_position()
            ids = {r.storage_id: r.name for r in store.list_repos()}
        finally:
            store.close()
        logged = {(ids.get(sid, sid), ref.removeprefix("refs/heads/"), new): seq for seq, sid, ref, new in events}
        unreplicated, claimed = [], []
        for op in ops:
            if op.kind is Kind.PUSH and op.ok and op.role in WRITES and op.start < killed:
                tip = have[op.repo].get(op.branch)
                if (tip is None or not graph.contains(tip, op.sha)) and \
                        (op.repo, op.branch, op.sha) not in self.documented:
                    self.documented.add((op.repo, op.branch, op.sha))
                    key = [op.repo, op.branch, op.sha]
                    unreplicated.append(key)
                    if logged.get((op.repo, op.branch, op.sha), position + 1) <= position:
                        claimed.append(key)
        got.detail.update(position=position, unreplicated=unreplicated, claimed=claimed)

    # -- state ------------------------------------------------------------------------------

    def heads(self, name: str, repo: str) -> dict[str, str]:
        done = self.git.run("ls-remote", self.node_url(name, repo), timeout=30)
        if not done.ok:
            raise RuntimeError(f"ls-remote of {repo} on {name} failed: {done.last_words()}")
        return parse_refs(done.out)

    def catching_up(self) -> Callable[[], bool]:
        """A check that the replica holds everything the primary holds now (the load goes on pushing
        meanwhile, so the two are rarely equal at one instant while it runs)."""
        wanted = {repo: self.heads(self.primary, repo) for repo in self.repo_names}

        def caught_up() -> bool:
            assert self.load is not None
            graph = self.load.graph()
            for repo, tips in wanted.items():
                have = self.heads(self.replica, repo)
                if any(b not in have or not graph.contains(have[b], tip) for b, tip in tips.items()):
                    return False
            return True

        return caught_up

    def converged(self) -> bool:
        return all(self.heads(self.primary, r) == self.heads(self.replica, r) for r in self.repo_names)

    def final_state(self, tips: dict[str, dict[str, str]], converged_after: float | None,
                    bound: float) -> FinalState:
        repos = {}
        for repo in self.repo_names:
            replicas = {}
            for name in self.servers:
                try:
                    replicas[name] = self.heads(name, repo)
                except RuntimeError:
                    replicas[name] = {}
            repos[repo] = RepoFinal(tips=tips.get(repo, {}), replicas=replicas)
        fsck = {}
        for name, server in self.servers.items():
            found = fsck_report(run([*BULWARK, "fsck", "--json"], env=server.env()))
            if found is not None:
                fsck[name] = found
        return FinalState(repos=repos, converged_after=converged_after, bound=bound, fsck=fsck)


def old_events(db: Path) -> list[tuple[int, str, str, str]]:
    """(seq, storage id, ref, new commit) of every push a (dead) primary's change log holds."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT seq, row_json FROM changes WHERE tbl = 'event' ORDER BY seq").fetchall()
    finally:
        conn.close()
    out = []
    for seq, row in rows:
        payload = json.loads(row)
        for _old, new, ref in payload.get("refs", []):
            out.append((int(seq), str(payload.get("storage_id", "")), str(ref), str(new)))
    return out
