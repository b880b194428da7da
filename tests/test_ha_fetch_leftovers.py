"""A replica's fetch cut off mid-pack (its primary died) leaves nothing in the repository.

Git keeps the part of a pack it received as ``objects/pack/tmp_pack_*`` when the stream ends
early. A replica that is then promoted, and not restarted, would keep it for good, and fsck
would call the repository unclean. These fetches are real: git against git's own HTTP server,
cut off part-way.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bulwark.clock import SystemClock
from bulwark.errors import GitError
from bulwark.git.runner import GitRunner
from bulwark.ha.client import PrimaryClient
from bulwark.ha.replicator import Replicator
from bulwark.store.changes import ChangeLog
from bulwark.store.sqlite import SQLiteStore
from tests.support.cut_pack import CutPackServer

STORAGE_ID = "abc123"


class Primary:
    """The two things a fetch asks of the primary's client: where to fetch from, and how."""

    def __init__(self, url: str) -> None:
        self.url = url

    def git_url(self, storage_id: str) -> str:
        return f"{self.url}/source.git"

    def git_config(self) -> dict[str, str]:
        return {}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A bare repository with one commit of a 3 MB blob that does not compress."""
    work, bare = tmp_path / "work", tmp_path / "served" / "source.git"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "blob").write_bytes(os.urandom(3_000_000))
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "blob"], check=True)
    subprocess.run([*git, "commit", "-qm", "blob"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


@pytest.fixture
def replicator(tmp_path: Path) -> Iterator[Replicator]:
    store = SQLiteStore(tmp_path / "metadata.db")
    git = GitRunner(tmp_path / "repos")
    yield Replicator(store, cast(ChangeLog, store), git, SystemClock(),
                     client_for=lambda ha, node: cast(PrimaryClient, None))
    store.close()


def temp_packs(replicator: Replicator) -> list[str]:
    return sorted(p.name for p in (replicator.git.path(STORAGE_ID) / "objects" / "pack").glob("tmp_*"))


def test_a_fetch_cut_off_mid_pack_leaves_no_temporary_pack(source: Path, replicator: Replicator) -> None:
    with CutPackServer(source.parent, cut=500_000) as server, pytest.raises(GitError):
        replicator.fetch(cast(PrimaryClient, Primary(server.url)), STORAGE_ID)
    assert server.cuts == 1  # the pack really was cut off
    assert temp_packs(replicator) == []
    assert replicator.untidy == set()


def test_what_a_busy_repository_kept_is_cleared_once_it_is_free(source: Path, replicator: Replicator) -> None:
    replicator.git.init_bare(STORAGE_ID, "main")
    # A live process in the repository (a clone being served, say) may own what is there.
    reader = subprocess.Popen(["sleep", "60"], cwd=replicator.git.path(STORAGE_ID))
    try:
        with CutPackServer(source.parent, cut=500_000) as server, pytest.raises(GitError):
            replicator.fetch(cast(PrimaryClient, Primary(server.url)), STORAGE_ID)
        assert len(temp_packs(replicator)) == 1 and replicator.untidy == {STORAGE_ID}
        assert replicator.tidy() is None  # still busy: left alone
    finally:
        reader.kill()
        reader.wait()
    said = replicator.tidy()
    assert said is not None and "stale temporary pack file" in said
    assert temp_packs(replicator) == [] and replicator.untidy == set()


def test_a_whole_fetch_leaves_nothing_to_tidy(source: Path, replicator: Replicator) -> None:
    with CutPackServer(source.parent, cut=10**9) as server:
        replicator.fetch(cast(PrimaryClient, Primary(server.url)), STORAGE_ID)
    assert server.cuts == 0
    assert replicator.git.ref_checksum(STORAGE_ID)
    assert temp_packs(replicator) == [] and replicator.untidy == set()
