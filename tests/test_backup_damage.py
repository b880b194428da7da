"""Damage in one snapshot never reaches the next: a damaged copy of the previous snapshot is
fetched afresh instead of linked, the command says so, and the damaged snapshot stays as it was.

Real processes throughout: `bulwark serve`, the `bulwark backup` command line and the real git.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bulwark.backup import objects
from bulwark.backup.client import InstanceClient
from bulwark.backup.create import InstanceSource, Step, create_backup
from bulwark.backup.snapshots import BackupDir
from bulwark.backup.verify import verify
from bulwark.errors import InvalidInput
from tests.support.backup_helpers import backup, create, listing, manifest, refs_of, seed, take
from tests.support.helpers import BULWARK, Server, bulwark, git

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "source").start()
    try:
        yield srv
    finally:
        srv.stop()


def copy_of(backups: Path, snapshot: str, storage_id: str) -> Path:
    return backups / "snapshots" / snapshot / "repositories" / f"{storage_id}.git"


def storage_ids(backups: Path, snapshot: str = "current") -> dict[str, str]:
    return {f"{r['owner']}/{r['name']}": r["storage_id"] for r in manifest(backups, snapshot)["repositories"]}


def only_pack(repo: Path) -> Path:
    packs = list((repo / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 1, packs
    return packs[0]


def inodes(root: Path) -> set[tuple[int, int]]:
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            found.add((st.st_dev, st.st_ino))
    return found


def loose_objects(repo: Path) -> list[Path]:
    return sorted(f for d in (repo / "objects").iterdir() if len(d.name) == 2 for f in d.iterdir())


def explode(repo: Path, genv: dict[str, str]) -> dict[str, Any]:
    """Turn a copy's packs into loose objects (as a snapshot holding loose objects would be);
    the object record its manifest would then hold."""
    pack_dir = repo / "objects" / "pack"
    packed = []
    for pack in sorted(pack_dir.glob("*.pack")):
        packed.append(pack.read_bytes())
        for name in pack_dir.glob(f"{pack.stem}.*"):
            name.unlink()
    for data in packed:
        subprocess.run(["git", "unpack-objects", "-q"], input=data, env={**genv, "GIT_DIR": str(repo)}, check=True)
    loose = loose_objects(repo)
    assert loose
    return {"packs": {}, "loose_count": len(loose), "loose_bytes": sum(f.stat().st_size for f in loose)}


def edit_manifest(backups: Path, snapshot: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = backups / "snapshots" / snapshot / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


def restore_and_compare(backups: Path, source: Server, tmp_path: Path, token: str, genv: dict[str, str]) -> None:
    """Restore ``current`` into a new node: it serves every repository with exactly the snapshot's refs."""
    snap = {f"{r['owner']}/{r['name']}": r["refs"] for r in manifest(backups)["repositories"]}
    target = tmp_path / "restored"
    r = backup("restore", str(backups), "current", "--data-dir", str(target), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    restored = Server(data_dir=target, token=source.token).start()
    try:
        for full_name, refs in snap.items():
            owner, name = full_name.split("/")
            assert refs_of(restored.remote(owner, name, token=token), genv) == refs, full_name
            assert refs_of(source.remote(owner, name, token=token), genv) == refs, full_name
        fsck = bulwark("fsck", env=restored.env())
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        restored.stop()


# -- the command line against a running instance -------------------------------------------


@pytest.mark.system
def test_damaged_copies_are_fetched_afresh_and_the_damage_stays_put(
    source: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    seeded = seed(source, genv, tmp_path, repos=5)
    alice = seeded.tokens["alice"]
    backups = tmp_path / "backups"
    first = take(source, backups)
    ids = storage_ids(backups, first)
    copy = {name: copy_of(backups, first, sid) for name, sid in ids.items()}

    # alice/r4's copy holds loose objects, as its manifest records.
    record = explode(copy["alice/r4"], genv)
    edit_manifest(backups, first, lambda m: next(
        r for r in m["repositories"] if r["storage_id"] == ids["alice/r4"]).update(objects=record))
    assert verify(BackupDir.open(backups).resolve(first)).ok

    # Five kinds of damage, one repository each; acme/site and alice/empty stay intact.
    only_pack(copy["alice/r0"]).unlink()
    pack = only_pack(copy["alice/r1"])
    os.truncate(pack, pack.stat().st_size // 2)
    pack = only_pack(copy["alice/r2"])
    with open(pack, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    only_pack(copy["alice/r3"]).with_suffix(".idx").unlink()
    for loose in loose_objects(copy["alice/r4"])[::2]:
        loose.unlink()
    # One damaged repository also changed on the instance since.
    work = tmp_path / "change"
    git("clone", "-q", source.remote("alice", "r2", token=alice), str(work), env=genv)
    (work / "more").write_text("more\n")
    git("add", "more", cwd=work, env=genv)
    git("commit", "-qm", "more", cwd=work, env=genv)
    git("push", "-q", "origin", "main", cwd=work, env=genv)

    damaged = listing(backups / "snapshots" / first)
    first_inodes = inodes(backups / "snapshots" / first)
    r = backup("create", "--from", source.url, "--to", str(backups), "--token", source.token, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout)
    repaired = {x["repository"]: x["problem"] for x in summary["repaired"]}
    assert sorted(repaired) == [f"alice/r{i}" for i in range(5)], repaired
    assert repaired["alice/r0"].startswith("missing pack-") and repaired["alice/r0"].endswith(".pack")
    assert "bytes, not" in repaired["alice/r1"]
    assert "does not end with its checksum" in repaired["alice/r2"]
    assert repaired["alice/r3"].startswith("missing pack-") and ".idx" in repaired["alice/r3"]
    assert "loose objects" in repaired["alice/r4"]
    assert "Repaired 5 damaged copies" in r.stderr and all(name in r.stderr for name in repaired), r.stderr
    assert summary["fetched"] == 5  # the damaged ones; acme/site came from its linked copy

    # The damaged snapshot is as it was: removing the links touched none of its files.
    assert listing(backups / "snapshots" / first) == damaged
    second = summary["snapshot"]
    later = storage_ids(backups, second)
    assert later == ids
    for name in repaired:
        assert not inodes(copy_of(backups, second, ids[name])) & first_inodes, f"{name} shares a damaged file"
    # ... while the intact one is still linked, so the check above could fail.
    assert inodes(copy_of(backups, second, ids["acme/site"])) & first_inodes
    entries = {f"{e['owner']}/{e['name']}": e for e in manifest(backups)["repositories"]}
    assert {n for n, e in entries.items() if e.get("repaired")} == set(repaired)
    assert all(e["objects"]["packs"] for n, e in entries.items() if n != "alice/empty")

    r = backup("verify", str(backups), "current")
    assert r.returncode == 0, r.stdout + r.stderr
    r = backup("list", str(backups))
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()[:3]
    assert header.split("\t")[-2:] == ["verified", "repaired"]
    assert rows[1].split("\t")[0] == second and rows[1].split("\t")[-1] == "5"
    assert rows[1].split("\t")[-2].startswith("OK ") and rows[0].split("\t")[-2] == "-"
    listed = json.loads(backup("list", str(backups), "--json").stdout)
    assert [(s["repaired"], s["verified_ok"]) for s in listed] == [(0, None), (5, True)]

    restore_and_compare(backups, source, tmp_path, alice, genv)

    # Repairs are not sticky: the next snapshot links the fresh copies and repairs nothing.
    third = create(source, backups)
    assert third["repaired"] == [] and third["fetched"] == 0


@pytest.mark.system
def test_damage_that_verify_found_is_not_linked_from_a_snapshot_sharing_it(
    source: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    seed(source, genv, tmp_path, repos=2, password=False)
    backups = tmp_path / "backups"
    first = take(source, backups)
    second = take(source, backups)
    sid = storage_ids(backups)["alice/r1"]
    pack = only_pack(copy_of(backups, second, sid))
    assert pack.stat().st_ino == only_pack(copy_of(backups, first, sid)).stat().st_ino

    # A flipped byte inside the pack: its size and checksum trailer stay, so only fsck sees it,
    # and the second snapshot, sharing the file, holds the same damage.
    with open(only_pack(copy_of(backups, first, sid)), "r+b") as f:
        f.seek(pack.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = backup("verify", str(backups), first)
    assert r.returncode == 1 and "alice/r1" in r.stdout, r.stdout + r.stderr

    r = backup("create", "--from", source.url, "--to", str(backups), "--token", source.token)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Repaired 1 damaged copy" in r.stdout and "alice/r1" in r.stdout, r.stdout
    assert f"found it damaged in snapshot {first}" in r.stdout, r.stdout
    third = BackupDir.open(backups).current_id()
    assert third is not None
    assert not inodes(copy_of(backups, third, sid)) & inodes(copy_of(backups, first, sid))
    assert backup("verify", str(backups), "current").returncode == 0
    listed = {s["id"]: s for s in json.loads(backup("list", str(backups), "--json").stdout)}
    assert listed[first]["verified_ok"] is False and listed[third]["verified_ok"] is True
    assert listed[third]["repaired"] == 1 and listed[second]["verified_ok"] is None

    # The failed verify of the first snapshot no longer concerns the third one's fresh copy.
    fourth = create(source, backups)
    assert fourth["repaired"] == [] and fourth["fetched"] == 0


@pytest.mark.system
def test_a_manifest_without_object_records_is_checked_with_git(
    source: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    seed(source, genv, tmp_path, repos=2, password=False)
    backups = tmp_path / "backups"
    first = take(source, backups)
    ids = storage_ids(backups)
    explode(copy_of(backups, first, ids["alice/r1"]), genv)

    def as_older_bulwark_wrote_it(m: dict[str, Any]) -> None:
        for r in m["repositories"]:
            del r["objects"]
        del m["totals"]["repaired"]

    edit_manifest(backups, first, as_older_bulwark_wrote_it)
    r = backup("verify", str(backups), first)
    assert r.returncode == 0, r.stdout + r.stderr

    # Half of alice/r1's loose objects gone (only git can tell), and acme/site's pack.
    for loose in loose_objects(copy_of(backups, first, ids["alice/r1"]))[::2]:
        loose.unlink()
    only_pack(copy_of(backups, first, ids["acme/site"])).unlink()
    r = backup("create", "--from", source.url, "--to", str(backups), "--token", source.token)
    assert r.returncode == 0, r.stdout + r.stderr
    repaired_line = next(line for line in r.stdout.splitlines() if line.startswith("Repaired"))
    assert repaired_line.startswith("Repaired 2 damaged copies"), r.stdout
    assert "alice/r1 (git fsck" in repaired_line and "acme/site (missing pack-" in repaired_line, repaired_line
    entries = {f"{e['owner']}/{e['name']}": e for e in manifest(backups)["repositories"]}
    assert {n for n, e in entries.items() if e["fetched"]} == {"alice/r1", "acme/site"}
    assert all("objects" in e for e in entries.values())  # records from now on
    second = BackupDir.open(backups).current_id()
    assert second is not None
    kept = only_pack(copy_of(backups, second, ids["alice/r0"]))
    assert kept.stat().st_ino == only_pack(copy_of(backups, first, ids["alice/r0"])).stat().st_ino
    assert backup("verify", str(backups), "current").returncode == 0


@pytest.mark.system
def test_a_create_interrupted_while_repairing_leaves_the_damage_and_the_next_one_repairs(
    source: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    seed(source, genv, tmp_path, repos=4, password=False)
    backups = tmp_path / "backups"
    first = take(source, backups)
    ids = storage_ids(backups)
    for name in ("alice/r0", "alice/r1", "alice/r2", "alice/r3"):
        only_pack(copy_of(backups, first, ids[name])).unlink()
    damaged = listing(backups / "snapshots" / first)

    def interrupt(step: Step) -> None:
        if step.done == 1:
            raise KeyboardInterrupt  # Ctrl-C once the first repository is copied
    with InstanceClient(source.url, source.token) as client, pytest.raises(KeyboardInterrupt):
        create_backup(InstanceSource(client), backups, progress=interrupt, jobs=1)
    cut = [s for s in BackupDir.open(backups).snapshots() if s.id != first]
    assert len(cut) == 1 and not cut[0].complete and BackupDir.open(backups).current_id() == first
    assert listing(backups / "snapshots" / first) == damaged

    # The next one builds on the last complete snapshot, not the cut one, and repairs what it holds.
    r = backup("create", "--from", source.url, "--to", str(backups), "--token", source.token, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(x["repository"] for x in json.loads(r.stdout)["repaired"]) == [f"alice/r{i}" for i in range(4)]
    assert listing(backups / "snapshots" / first) == damaged
    pruned = json.loads(backup("prune", str(backups), "--keep", "1", "--json").stdout)
    assert pruned["deleted"] == [first, cut[0].id]
    assert backup("verify", str(backups), "current").returncode == 0


@pytest.mark.system
def test_a_damaged_previous_manifest_means_copying_everything_afresh(
    source: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    seed(source, genv, tmp_path, repos=1, password=False)
    backups = tmp_path / "backups"
    first = take(source, backups)
    ids = storage_ids(backups)
    path = backups / "snapshots" / first / "manifest.json"
    path.write_text(path.read_text()[:100])
    r = backup("create", "--from", source.url, "--to", str(backups), "--token", source.token)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Repaired 3 damaged copies" in r.stdout, r.stdout
    assert f"the manifest of snapshot {first} cannot be read" in r.stdout, r.stdout
    second = BackupDir.open(backups).current_id()
    assert second is not None and second != first
    for sid in ids.values():
        assert not inodes(copy_of(backups, second, sid)) & inodes(copy_of(backups, first, sid))
    assert backup("verify", str(backups), "current").returncode == 0
    listed = backup("list", str(backups))
    assert f"{first}: the manifest of snapshot {first} cannot be read" in listed.stdout, listed.stdout


@pytest.mark.system
def test_prune_keeps_the_newest_verified_snapshot(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seed(source, genv, tmp_path, repos=1, password=False)
    backups = tmp_path / "backups"
    s1, s2, s3 = (take(source, backups) for _ in range(3))
    assert backup("verify", str(backups), s1).returncode == 0

    def prune_json() -> dict[str, Any]:
        r = backup("prune", str(backups), "--keep", "1", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return dict(json.loads(r.stdout))

    r = backup("prune", str(backups), "--keep", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"deleted {s2}" in r.stdout and f"Kept {s1} beyond --keep 1" in r.stdout, r.stdout
    assert [s["id"] for s in json.loads(backup("list", str(backups), "--json").stdout)] == [s1, s3]
    assert prune_json() == {"deleted": [], "kept": [s1, s3], "newest_verified": s1, "kept_beyond_keep": [s1]}

    # A newer snapshot that fails verify does not count.
    sid = storage_ids(backups)["alice/r0"]
    only_pack(copy_of(backups, s3, sid)).unlink()
    assert backup("verify", str(backups), s3).returncode == 1
    s4 = take(source, backups)
    assert prune_json() == {"deleted": [s3], "kept": [s1, s4], "newest_verified": s1, "kept_beyond_keep": [s1]}
    # The snapshot kept for having verified is still whole: its objects were not the pruned ones.
    assert backup("verify", str(backups), s1).returncode == 0

    assert backup("verify", str(backups), s4).returncode == 0
    assert prune_json() == {"deleted": [s1], "kept": [s4], "newest_verified": s4, "kept_beyond_keep": []}
    # A record that is not one counts as no verify: listed as never verified, and prune says so.
    (backups / "snapshots" / s4 / "verified.json").write_text('{"verified_at": "now", "ok"')
    r = backup("prune", str(backups), "--keep", "1")
    assert r.returncode == 0 and "No snapshot here has passed" in r.stdout, r.stdout + r.stderr
    assert json.loads(backup("list", str(backups), "--json").stdout)[0]["verified_ok"] is None


@pytest.mark.system
def test_commands_wait_for_the_lock_or_name_its_holder(source: Server, genv: dict[str, str], tmp_path: Path) -> None:
    seed(source, genv, tmp_path, repos=1, password=False)
    backups = tmp_path / "backups"
    only = take(source, backups)
    target = tmp_path / "restored"
    holder = f"pid {os.getpid()}, bulwark backup create"
    with BackupDir.open(backups).locked("create"):
        before = listing(backups)
        cases = [
            ("verify", str(backups), "current"),
            ("restore", str(backups), "current", "--data-dir", str(target), "--yes"),
            ("prune", str(backups), "--keep", "1"),
            ("create", "--from", source.url, "--to", str(backups), "--token", source.token),
        ]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda args: backup(*args), cases))
        for args, r in zip(cases, results, strict=True):
            assert r.returncode == 1, (args, r.stdout)
            assert f"another backup command ({holder}) is using {backups}" in r.stderr, (args, r.stderr)
            assert "--wait SECONDS" in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = backup("prune", str(backups), "--keep", "1", "--wait", "0.5")
        assert r.returncode == 1 and f"({holder}) held {backups} for all of the 0.5s waited" in r.stderr, r.stderr
        assert listing(backups) == before and not target.exists()

        # Started while the lock is held, they say whom they wait for, then go on once it is free.
        waiting = [
            subprocess.Popen([*BULWARK, "backup", *args, "--wait", "120"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for args in (("verify", str(backups), only), cases[1], cases[3])
        ]
        for proc in waiting:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert line.startswith(f"Waiting up to 120s for another backup command ({holder})"), line
    outputs = [proc.communicate(timeout=120) for proc in waiting]
    assert [proc.returncode for proc in waiting] == [0, 0, 0], outputs
    assert "OK" in outputs[0][0] and f"Restored snapshot {only}" in outputs[1][0], outputs
    newer = BackupDir.open(backups).current_id()
    assert newer is not None and newer != only and f"Snapshot {newer} " in outputs[2][0], outputs
    assert [s.id for s in BackupDir.open(backups).snapshots()] == [only, newer]
    assert (backups / "snapshots" / only / "verified.json").is_file()
    assert (target / "metadata.db").is_file()


# -- the cheap check itself, on a real repository ------------------------------------------------


@pytest.fixture
def packed(tmp_path: Path, genv: dict[str, str]) -> Path:
    """A repository with one pack (and its index) and two loose objects."""
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    for n in range(3):
        (work / f"f{n}").write_text(f"{n}\n" * 100)
        git("add", ".", cwd=work, env=genv)
        git("commit", "-qm", f"c{n}", cwd=work, env=genv)
    git("repack", "-a", "-d", "-q", cwd=work, env=genv)
    (work / "loose").write_text("loose\n")
    git("add", "loose", cwd=work, env=genv)  # a blob
    git("commit", "-qm", "loose", cwd=work, env=genv)
    return work / ".git"


def _no_change(_repo: Path) -> None:
    return None


def _delete_pack(repo: Path) -> None:
    only_pack(repo).unlink()


def _truncate_pack(repo: Path) -> None:
    os.truncate(only_pack(repo), 100)


def _overwrite_tail(repo: Path) -> None:
    with open(only_pack(repo), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))


def _remove_index(repo: Path) -> None:
    only_pack(repo).with_suffix(".idx").unlink()


def _delete_loose(repo: Path) -> None:
    loose_objects(repo)[0].unlink()


@pytest.mark.parametrize(
    ("damage", "against_record", "without_record"),
    [
        (_no_change, [], []),
        (_delete_pack, ["missing {pack}.pack"], ["missing {pack}.pack"]),
        (_truncate_pack, ["{pack}.pack is 100 bytes, not {size}"], ["{pack}.pack does not match its index"]),
        (_overwrite_tail, ["{pack}.pack does not end with its checksum"], ["{pack}.pack does not match its index"]),
        (_remove_index, ["missing {pack}.idx"], ["{pack}.pack has no index"]),
        # only git can tell that a loose object is missing without a record
        (_delete_loose, ["{loose_after} loose objects of {after_bytes} bytes, not {loose} of {loose_bytes} bytes"], []),
    ],
)
def test_the_cheap_check_names_the_damage(
    packed: Path, damage: Callable[[Path], None], against_record: list[str], without_record: list[str]
) -> None:
    record = objects.ObjectFiles.from_json(objects.scan(packed).to_json(), "test")
    pack = only_pack(packed).stem
    size = only_pack(packed).stat().st_size
    loose, loose_bytes = record.loose_count, record.loose_bytes
    assert loose >= 2 and set(record.packs) >= {f"{pack}.pack", f"{pack}.idx"}
    damage(packed)
    found = objects.scan(packed)
    words = dict(pack=pack, size=size, loose=loose, loose_bytes=loose_bytes, loose_after=found.loose_count,
                 after_bytes=found.loose_bytes)
    assert objects.damage(record, found) == [w.format(**words) for w in against_record]
    assert objects.inconsistencies(found) == [w.format(**words) for w in without_record]


def test_an_index_written_for_another_pack_is_damage(packed: Path, tmp_path: Path, genv: dict[str, str]) -> None:
    record = objects.scan(packed)
    pack = only_pack(packed)
    # Another repository's index, under this pack's name.
    other = tmp_path / "other"
    git("init", "-q", str(other), env=genv)
    (other / "x").write_text("x\n")
    git("add", "x", cwd=other, env=genv)
    git("commit", "-qm", "x", cwd=other, env=genv)
    git("repack", "-a", "-d", "-q", cwd=other, env=genv)
    index = pack.with_suffix(".idx")
    index.unlink()
    index.write_bytes(only_pack(other / ".git").with_suffix(".idx").read_bytes())
    problems = objects.damage(record, objects.scan(packed))
    assert f"{pack.stem}.idx names another pack's checksum" in problems
    assert objects.inconsistencies(objects.scan(packed)) == [f"{pack.stem}.pack does not match its index"]


def test_object_records_that_are_not_ones_are_refused() -> None:
    good = {"packs": {"pack-" + "a" * 40 + ".pack": {"size": 3, "trailer": "b" * 40}}, "loose_count": 0,
            "loose_bytes": 0}
    assert objects.ObjectFiles.from_json(good, "x").to_json() == good
    bad: object
    for bad in ({"packs": {"../escape": {"size": 1, "trailer": "b" * 40}}, "loose_count": 0, "loose_bytes": 0},
                {"packs": {}, "loose_count": "many", "loose_bytes": 0}, {"packs": []}, None):
        with pytest.raises(InvalidInput):
            objects.ObjectFiles.from_json(bad, "x")
