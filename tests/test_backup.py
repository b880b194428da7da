"""Backups with real processes: `bulwark serve`, the `bulwark backup` command line and the real git."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bulwark.backup.retention import Retention, decide_retention
from bulwark.backup.snapshots import BackupDir
from bulwark.backup.verify import verify
from bulwark.cluster.dev import DevCluster
from bulwark.errors import InvalidInput
from tests.support.backup_helpers import Alternator, backup, create, disk_bytes, listing, manifest, refs_of, seed, take
from tests.support.ha_helpers import setup_replica, wait_for
from tests.support.helpers import Server, bulwark, free_port, git

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "source").start()
    try:
        yield srv
    finally:
        srv.stop()


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _branch_numbers(refs: dict[str, str]) -> list[int]:
    return sorted(int(name.removeprefix("refs/heads/b")) for name in refs if name.startswith("refs/heads/b"))


@pytest.mark.system
def test_backup_under_pushes_restores_to_a_new_node(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seeded = seed(source, genv, tmp_path, repos=6)
    alice = seeded.tokens["alice"]
    pushed = [("alice", "r1"), ("alice", "r2"), ("acme", "site")]
    pusher = Alternator(source, alice, pushed, tmp_path, genv).start()
    try:
        deadline = time.monotonic() + 30
        while len(pusher.acked) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        began = time.monotonic()
        summary = create(source, tmp_path / "backups")
        ended = time.monotonic()
        time.sleep(0.3)
    finally:
        pusher.stop()
    assert not pusher.errors, pusher.errors
    assert any(began < t < ended for t, _, _ in pusher.acked), "no push landed while the backup ran"
    assert summary["repositories"] == len(seeded.repos) and summary["mode"] == "standalone"

    # The snapshot is one consistent point: the strict push sequence is cut at one place.
    snap = manifest(tmp_path / "backups")
    by_name = {f"{r['owner']}/{r['name']}": r for r in snap["repositories"]}
    counts = [_branch_numbers(by_name[f"{o}/{n}"]["refs"]) for o, n in pushed]
    for numbers in counts:
        assert numbers == list(range(1, len(numbers) + 1)), numbers
    lengths = [len(c) for c in counts]
    assert lengths[0] - lengths[-1] in (0, 1) and lengths == sorted(lengths, reverse=True), lengths
    assert by_name["alice/empty"]["refs"] == {}
    assert "refs/tags/v1" in by_name["alice/r0"]["refs"]
    # Pushes went on after the point: the instance moved past the snapshot, which did not follow.
    now = refs_of(source.remote("alice", "r1", token=alice), genv)
    assert now != by_name["alice/r1"]["refs"]

    r = backup("verify", str(tmp_path / "backups"), "current")
    assert r.returncode == 0, r.stdout + r.stderr

    # Restore into a new data dir and start a node on it: accounts, tokens, passwords, permissions, data.
    restored_dir = tmp_path / "restored"
    r = backup("restore", str(tmp_path / "backups"), "current", "--data-dir", str(restored_dir), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bulwark serve --data-dir" in r.stdout
    restored = Server(data_dir=restored_dir, token=source.token).start()
    try:
        assert restored.api("GET", "/user", token=alice).json()["login"] == "alice"
        assert restored.api("GET", "/user", token=seeded.tokens["bob"]).json()["login"] == "bob"
        assert restored.api("GET", "/user").json()["login"] == "admin"  # the old admin token
        by_password = httpx.get(f"{restored.url}/api/v3/user", auth=("bob", "bob-password-1"), timeout=30)
        assert by_password.status_code == 200 and by_password.json()["login"] == "bob"
        members = restored.api("GET", "/orgs/acme/members", token=alice).json()
        assert sorted(m["login"] for m in members) == ["alice", "bob"]
        perm = restored.api("GET", "/repos/alice/r0/collaborators/bob/permission", token=alice)
        assert perm.status_code == 200 and perm.json()["permission"] == "write"
        assert restored.api("GET", "/repos/alice/r0").json()["private"] is True
        for owner, name in seeded.repos:
            got = refs_of(restored.remote(owner, name, token=alice), genv)
            assert got == by_name[f"{owner}/{name}"]["refs"], f"{owner}/{name}"
        assert restored.api("GET", "/repos/alice/r1").json()["default_branch"] == "main"
        fsck = bulwark("fsck", env=restored.env())
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        # The restored node takes pushes.
        work = tmp_path / "after"
        git("clone", "-q", restored.remote("alice", "r3", token=alice), str(work), env=genv)
        (work / "more").write_text("more\n")
        git("add", "more", cwd=work, env=genv)
        git("commit", "-qm", "after restore", cwd=work, env=genv)
        git("push", "-q", "origin", "main", cwd=work, env=genv)
    finally:
        restored.stop()


@pytest.mark.system
def test_restore_into_a_running_instance(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seeded = seed(source, genv, tmp_path, repos=2)
    create(source, tmp_path / "backups")
    snap = manifest(tmp_path / "backups")
    target = Server(data_dir=tmp_path / "target", token="bwk_" + "e" * 40).start()
    try:
        # The target's own admin token works for the restore; afterwards admin is the snapshot's admin.
        r = backup("restore", str(tmp_path / "backups"), "current", "--to", target.url, "--token", target.token,
                   "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert httpx.get(f"{target.url}/status").status_code == 200, "left in maintenance mode"
        assert target.api("GET", "/user", token=seeded.tokens["alice"]).json()["login"] == "alice"
        for entry in snap["repositories"]:
            got = refs_of(target.remote(entry["owner"], entry["name"], token=seeded.tokens["alice"]), genv)
            assert got == entry["refs"], entry["name"]
        # A second restore into what is now a full instance is refused, and maintenance is left as it was.
        r = backup("restore", str(tmp_path / "backups"), "current", "--to", target.url, "--token", source.token,
                   "--yes")
        assert r.returncode == 1 and "already holds data" in r.stderr, r.stderr
        assert httpx.get(f"{target.url}/status").status_code == 200
    finally:
        target.stop()

    # A target already in maintenance mode stays in it, and the restore says so.
    waiting = Server(data_dir=tmp_path / "waiting").start()
    try:
        answer = httpx.post(f"{waiting.url}/manage/v1/maintenance", json={"message": "moving"},
                            headers={"Authorization": f"token {waiting.token}"})
        assert answer.status_code == 200, answer.text
        r = backup("restore", str(tmp_path / "backups"), "current", "--to", waiting.url, "--token", waiting.token,
                   "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "stays in it" in r.stdout
        assert httpx.get(f"{waiting.url}/status").status_code == 503
    finally:
        waiting.stop()


@pytest.mark.system
def test_second_backup_costs_only_the_change(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seeded = seed(source, genv, tmp_path, repos=5, blob_kib=1024)
    backups = tmp_path / "backups"
    first = create(source, backups)
    after_first, du_first = disk_bytes(backups), du(backups)
    assert first["fetched"] == 6 and first["bytes_written"] > 5 * 1024 * 1024

    work = tmp_path / "change"
    git("clone", "-q", source.remote("alice", "r2", token=seeded.tokens["alice"]), str(work), env=genv)
    (work / "small").write_text("a small change\n")
    git("add", "small", cwd=work, env=genv)
    git("commit", "-qm", "small", cwd=work, env=genv)
    git("push", "-q", "origin", "main", cwd=work, env=genv)

    second = create(source, backups)
    assert second["fetched"] == 1  # only the changed repository touched the network
    assert second["size"] >= first["size"]
    assert second["bytes_written"] < first["bytes_written"] * 0.05, (first, second)
    grown = disk_bytes(backups) - after_first
    assert grown < after_first * 0.05, (after_first, grown)
    # du counts each hard-linked file once too, but whole blocks: every small file and folder costs one.
    assert du(backups) - du_first < du_first * 0.15, (du_first, du(backups))
    entries = {r["name"]: r for r in manifest(backups)["repositories"]}
    assert [n for n, e in entries.items() if e["fetched"]] == ["r2"]
    assert backup("verify", str(backups), "current").returncode == 0


@pytest.mark.system
def test_unchanged_copies_are_checked_without_git_and_mended(
    source: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    seeded = seed(source, genv, tmp_path, repos=3)
    backups = tmp_path / "backups"
    first = take(source, backups)
    # Damage one repository's refs in the first snapshot: the next one links from it, must notice
    # that the copy no longer holds the point's refs, and set them with git again.
    entries = {r["name"]: r for r in manifest(backups, first)["repositories"]}
    damaged = backups / "snapshots" / first / "repositories" / f"{entries['r1']['storage_id']}.git"
    packed = damaged / "packed-refs"
    good = packed.read_text()
    oid = next(iter(entries["r1"]["refs"].values()))
    packed.write_text(good.replace(oid, "0" * 40))
    second = take(source, backups)
    assert second != first
    copy = backups / "snapshots" / second / "repositories" / f"{entries['r1']['storage_id']}.git"
    assert oid in (copy / "packed-refs").read_text()
    assert backup("verify", str(backups), second).returncode == 0
    url = source.remote("alice", "r1", token=seeded.tokens["alice"])
    second_entries = {r["name"]: r for r in manifest(backups, second)["repositories"]}
    assert refs_of(url, genv) == second_entries["r1"]["refs"]


@pytest.mark.system
def test_verify_names_every_problem(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seed(source, genv, tmp_path, repos=3)
    backups = tmp_path / "backups"
    first = take(source, backups)
    second = take(source, backups)
    snap = backups / "snapshots" / second
    ids = {r["name"]: r["storage_id"] for r in manifest(backups)["repositories"]}

    # Corrupt a pack of r0 in the second snapshot only: break the hard link, then flip bytes.
    pack = next((snap / "repositories" / f"{ids['r0']}.git" / "objects" / "pack").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.unlink()
    pack.write_bytes(bytes(data))
    shutil.rmtree(snap / "repositories" / f"{ids['r1']}.git")
    metadata = json.loads((snap / "metadata.json").read_text())
    metadata["accounts"][0]["email"] = "someone-else@example.com"
    (snap / "metadata.json").write_text(json.dumps(metadata))

    r = backup("verify", str(backups), second)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    problems = [line for line in r.stdout.splitlines() if line.startswith("PROBLEM")]
    assert any("alice/r0" in p and "fsck" in p for p in problems), r.stdout
    assert any("alice/r1" in p and "missing" in p for p in problems), r.stdout
    assert any("metadata.json" in p and "sha256" in p for p in problems), r.stdout
    report = json.loads(backup("verify", str(backups), second, "--json").stdout)
    assert not report["ok"] and len(report["problems"]) == 3
    # The damage stayed in its snapshot: the first one shares objects and is intact.
    r = backup("verify", str(backups), first)
    assert r.returncode == 0, r.stdout + r.stderr
    # A restore refuses the edited metadata.
    r = backup("restore", str(backups), second, "--data-dir", str(tmp_path / "nope"), "--yes")
    assert r.returncode == 1 and "metadata.json" in r.stderr
    assert not (tmp_path / "nope" / "metadata.db").exists()
    # A full snapshot shares nothing with the damaged one.
    fresh = create(source, backups, "--full")
    assert fresh["fetched"] == 4 and verify(BackupDir.open(backups).resolve("current")).ok


@pytest.mark.system
def test_prune_keeps_the_newest_complete_snapshots(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seed(source, genv, tmp_path, repos=2)
    backups = tmp_path / "backups"
    made = [take(source, backups) for _ in range(3)]
    # An old failed backup, left incomplete.
    stale = backups / "snapshots" / "20000101T000000Z"
    (stale / "repositories").mkdir(parents=True)
    (stale / "INCOMPLETE").write_text("failed\n")

    r = backup("prune", str(backups), "--keep", "2", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert sorted(result["deleted"]) == sorted(["20000101T000000Z", made[0]])
    listed = json.loads(backup("list", str(backups), "--json").stdout)
    assert [s["id"] for s in listed] == made[1:]
    assert all(s["state"] == "complete" for s in listed) and listed[-1]["current"]
    r = backup("verify", str(backups), "current")
    assert r.returncode == 0 and made[-1] in r.stdout, r.stdout + r.stderr
    assert backup("verify", str(backups), made[1]).returncode == 0  # its shared objects survived


@pytest.mark.system
def test_bad_input_is_refused_and_changes_nothing(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seed(source, genv, tmp_path, repos=1, password=False)
    backups = tmp_path / "backups"
    snapshot = take(source, backups)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    missing = str(tmp_path / "missing")
    carol = source.create_user("carol")
    wrong = "bwk_" + "0" * 40

    def refused(*cases: tuple[tuple[str, ...], str]) -> None:
        """Run the commands (at the same time: each is slow to start) and check each was refused
        with its message, while nothing changed on disk."""
        before = listing(backups) + listing(foreign)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda case: backup(*case[0]), cases))
        for (args, says), r in zip(cases, results, strict=True):
            assert r.returncode != 0, (args, r.stdout)
            assert says in r.stderr, (args, r.stderr)
            assert "Traceback" not in r.stderr, r.stderr
        assert listing(backups) + listing(foreign) == before
        assert not any((tmp_path / name).exists() for name in ("missing", "no", "fresh", "r"))

    def make(to: Path | str, token: str = source.token, url: str = source.url) -> tuple[str, ...]:
        return ("create", "--from", url, "--to", str(to), "--token", token)

    refused(
        (("list", missing), "does not exist"),
        (make(tmp_path / "no" / "such"), "does not exist"),
        (make(foreign), "is not a Bulwark backup directory"),
        (("verify", str(backups), "20990101T000000Z"), "no snapshot"),
        (make(backups, wrong), "refused the token"),
        (make(tmp_path / "fresh", wrong), "refused the token"),  # and creates no directory
        (make(backups, carol), "site admin"),
        (make(backups, url=f"http://127.0.0.1:{free_port()}"), "cannot reach"),
        (("restore", str(backups), "current", "--data-dir", str(source.data_dir), "--yes"), "not empty"),
    )

    # One backup at a time per directory: the second names the holder.
    with open(backups / "lock", "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        refused((make(backups), f"pid {os.getpid()}"))
        held.truncate(0)

    # A snapshot written by a newer Bulwark.
    path = backups / "snapshots" / snapshot / "manifest.json"
    data = json.loads(path.read_text())
    data["format"] = 99
    path.write_text(json.dumps(data))
    refused(
        (("verify", str(backups), "current"), "newer than this Bulwark reads"),
        (("restore", str(backups), snapshot, "--data-dir", str(tmp_path / "r"), "--yes"),
         "newer than this Bulwark reads"),
    )


@pytest.mark.system
def test_an_ha_replica_needs_allow_replica(tmp_path: Path, genv: dict[str, str]) -> None:
    primary = Server(data_dir=tmp_path / "primary").start()
    replica = Server(data_dir=tmp_path / "replica").start()
    try:
        setup_replica(replica, primary)
        backups = tmp_path / "backups"
        r = backup("create", "--from", replica.url, "--to", str(backups), "--token", primary.token)
        assert r.returncode == 1 and "replica" in r.stderr and "--allow-replica" in r.stderr, r.stderr
        assert not backups.exists()
        summary = create(replica, backups, "--allow-replica")
        assert summary["mode"] == "ha-replica"
    finally:
        replica.stop()
        primary.stop()


@pytest.mark.system
def test_standalone_to_cluster_and_back(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seeded = seed(source, genv, tmp_path, repos=2, password=False)
    backups = tmp_path / "backups"
    take(source, backups)
    snap = manifest(backups)
    alice = seeded.tokens["alice"]
    with DevCluster(tmp_path / "cluster", nodes=3, admin_token="bwk_" + "c" * 40) as cluster:
        # Through one node: the load balancer sends nothing anywhere while the cluster is in maintenance.
        r = backup("restore", str(backups), "current", "--to", cluster.node_url("node2"),
                   "--token", cluster.admin_token, "--yes", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        for entry in snap["repositories"]:
            url = f"{cluster.lb_url.replace('://', f'://x:{alice}@')}/{entry['owner']}/{entry['name']}.git"
            # The load balancer takes the nodes back within a health check or two.
            wait_for(lambda u=url: refs_of(u, genv) is not None, what="the load balancer serving again")
            assert refs_of(url, genv) == entry["refs"], entry["name"]
        # And back: a backup of the cluster through its load balancer, restored into a standalone data dir.
        again = tmp_path / "from-cluster"
        r = backup("create", "--from", cluster.lb_url, "--to", str(again), "--token", source.token, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["mode"] == "cluster-member"
    back = manifest(again)
    assert {e["storage_id"]: e["refs"] for e in back["repositories"]} == {
        e["storage_id"]: e["refs"] for e in snap["repositories"]
    }
    r = backup("restore", str(again), "current", "--data-dir", str(tmp_path / "standalone"), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr


# -- which snapshots prune keeps -------------------------------------------------------------

_A, _B, _C, _D, _E = (f"2025010{n}T000000Z" for n in range(1, 6))


@pytest.mark.parametrize(
    ("ids", "incomplete", "keep", "current", "verified", "doomed", "beyond"),
    [
        # nothing verified: the newest `keep` complete ones stay
        ([_A, _B, _C], set(), 2, _C, None, [_A], False),
        ([_A, _B, _C], set(), 5, _C, None, [], False),
        # the newest verified one stays, however old, and is named as kept beyond --keep
        ([_A, _B, _C, _D], set(), 1, _D, _A, [_B, _C], True),
        ([_A, _B, _C, _D], set(), 2, _D, _C, [_A, _B], False),  # within --keep anyway
        ([_A, _B, _C], set(), 1, _C, _C, [_A, _B], False),
        # current stays even when it is not among the newest (a newer snapshot was made elsewhere)
        ([_A, _B, _C], set(), 1, _A, None, [_B], False),
        ([_A, _B, _C], set(), 1, _A, _A, [_B], False),  # current anyway: not "beyond"
        # incomplete: older than the newest complete one goes, a newer one may still be written
        ([_A, _B, _C, _D], {_B, _D}, 1, _C, None, [_A, _B], False),
        ([_A, _B, _C, _D, _E], {_A, _E}, 2, _D, _B, [_A], True),
        ([_A, _B], {_A, _B}, 1, None, None, [], False),  # no complete snapshot: nothing to measure by
        ([], set(), 1, None, None, [], False),
    ],
)
def test_decide_retention(
    ids: list[str], incomplete: set[str], keep: int, current: str | None, verified: str | None,
    doomed: list[str], beyond: bool,
) -> None:
    complete = set(ids) - incomplete
    decided = decide_retention(ids, complete, keep, current, verified)
    assert decided == Retention(doomed, verified, beyond)
    # What it keeps never includes fewer than `keep` complete ones, current, or the verified one.
    kept = [i for i in ids if i not in decided.doomed]
    assert current is None or current in kept
    assert verified is None or verified in kept
    assert [i for i in ids if i in complete][-keep:] == [i for i in kept if i in complete][-keep:]


def test_decide_retention_needs_one_kept() -> None:
    with pytest.raises(InvalidInput, match="at least 1"):
        decide_retention([_A], {_A}, 0, _A, None)
