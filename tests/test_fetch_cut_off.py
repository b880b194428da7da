"""A fetch between nodes cut off mid-pack (the node it fetched from died) leaves nothing behind.

Git keeps the part of a pack it received as ``objects/pack/tmp_pack_*`` when the stream ends
early. An HA replica promoted without a restart would keep it for good, and so would a cluster
replica whose next repair worked within seconds; fsck would call the repository unclean. These
fetches are real: git against git's own HTTP server, cut off part-way.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bulwark.clock import SystemClock
from bulwark.cluster import state
from bulwark.cluster.repair import repair
from bulwark.cluster.replicated_git import ClusterGit
from bulwark.cluster.runtime import ClusterRuntime
from bulwark.cluster.state import Placement
from bulwark.errors import GitError
from bulwark.git.runner import GitRunner
from bulwark.ha.client import PrimaryClient
from bulwark.ha.replicator import Replicator
from bulwark.store.changes import ChangeLog
from bulwark.store.sqlite import SQLiteStore
from tests.support.cut_pack import CutPackServer, big_repository
from tests.support.fake_etcd import FakeEtcd

STORAGE_ID = "abc123"
CUT = 500_000


class Primary:
    """The two things a replica's fetch asks of its primary's client: where, and how."""

    def __init__(self, url: str) -> None:
        self.url = url

    def git_url(self, storage_id: str) -> str:
        return f"{self.url}/internal/replication/git/{storage_id}"

    def git_config(self) -> dict[str, str]:
        return {}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return big_repository(tmp_path / "source.git")


@pytest.fixture
def replicator(tmp_path: Path) -> Iterator[Replicator]:
    store = SQLiteStore(tmp_path / "metadata.db")
    git = GitRunner(tmp_path / "repos")
    yield Replicator(store, cast(ChangeLog, store), git, SystemClock(),
                     client_for=lambda ha, node: cast(PrimaryClient, None))
    store.close()


def temp_packs(git: GitRunner) -> list[str]:
    return sorted(p.name for p in (git.path(STORAGE_ID) / "objects" / "pack").glob("tmp_*"))


# -- an HA replica's fetch from its primary ---------------------------------------------------


def test_a_replica_s_fetch_cut_off_leaves_no_temporary_pack(source: Path, replicator: Replicator) -> None:
    with CutPackServer(source, cut=CUT) as server, pytest.raises(GitError):
        replicator.fetch(cast(PrimaryClient, Primary(server.url)), STORAGE_ID)
    assert server.cuts == 1  # the pack really was cut off
    assert temp_packs(replicator.git) == []
    assert replicator.untidy == set()


def test_what_a_busy_repository_kept_is_cleared_once_it_is_free(source: Path, replicator: Replicator) -> None:
    replicator.git.init_bare(STORAGE_ID, "main")
    # A live process in the repository (a clone being served, say) may own what is there.
    reader = subprocess.Popen(["sleep", "60"], cwd=replicator.git.path(STORAGE_ID))
    try:
        with CutPackServer(source, cut=CUT) as server, pytest.raises(GitError):
            replicator.fetch(cast(PrimaryClient, Primary(server.url)), STORAGE_ID)
        assert len(temp_packs(replicator.git)) == 1 and replicator.untidy == {STORAGE_ID}
        assert replicator.tidy() is None  # still busy: left alone
    finally:
        reader.kill()
        reader.wait()
    said = replicator.tidy()
    assert said is not None and "stale temporary pack file" in said
    assert temp_packs(replicator.git) == [] and replicator.untidy == set()


def test_a_whole_fetch_leaves_nothing_to_tidy(source: Path, replicator: Replicator) -> None:
    with CutPackServer(source, cut=10**9) as server:
        replicator.fetch(cast(PrimaryClient, Primary(server.url)), STORAGE_ID)
    assert server.cuts == 0
    assert replicator.git.ref_checksum(STORAGE_ID)
    assert temp_packs(replicator.git) == [] and replicator.untidy == set()


# -- a cluster replica's repair from another node -----------------------------------------------


class Runtime:
    """What a repair asks of the cluster runtime: the nodes, the repository's lock and placement,
    and the source's HEAD. The placement is in a fake etcd; the fetch is real."""

    name = "n2"
    url = "http://n2.invalid"

    def __init__(self, source_url: str) -> None:
        self.etcd = FakeEtcd()
        self.source_url = source_url
        self.locks = self
        self.peers = self

    def urls(self) -> dict[str, str]:
        return {"n1": self.source_url, "n2": self.url}

    def git_source_config(self) -> dict[str, str]:
        return {}

    @contextlib.contextmanager
    def held(self, storage_id: str) -> Iterator[None]:
        yield

    def head(self, url: str, storage_id: str) -> str:
        return "main"


def test_a_repair_cut_off_leaves_no_temporary_pack(source: Path, tmp_path: Path) -> None:
    git = ClusterGit(tmp_path / "n2")
    with CutPackServer(source, cut=CUT) as server, pytest.raises(GitError):
        rt = Runtime(server.url)
        state.create_placement(rt.etcd, Placement(STORAGE_ID, {"n1": 1, "n2": 0}))
        repair(cast(ClusterRuntime, rt), git, STORAGE_ID, server.url)
    assert server.cuts == 1
    assert temp_packs(git) == []
