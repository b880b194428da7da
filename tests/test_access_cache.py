"""Kept authorization decisions on the etcd store: reused only while etcd confirms that no key
they were made from has changed, whichever node changed it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bulwark.errors import BulwarkError, NotFound, Unauthenticated
from bulwark.etcd import Etcd
from bulwark.git.runner import GitRunner
from bulwark.models import MaintenanceState, Permission, Scope, Visibility
from bulwark.security import PasswordHasher
from bulwark.services.access_cache import AccessCache, cache_key
from bulwark.services.accounts import AccountService
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess, RepositoryService
from bulwark.store.etcd import EtcdStore
from tests.support.etcd_helpers import BACKENDS, any_etcd
from tests.support.helpers import FakeClock

pytestmark = pytest.mark.timeout(60)

# The fake etcd in the fast tier, a real one in the system tier.
etcd = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd")


@dataclasses.dataclass
class NodeView:
    """What one cluster node sees: its own store object on the shared etcd, and its services."""

    store: EtcdStore
    accounts: AccountService
    repos: RepositoryService


@pytest.fixture
def two_nodes(etcd: Etcd, tmp_path: Path) -> Iterator[tuple[NodeView, NodeView, FakeClock]]:
    prefix = f"/test/{uuid.uuid4().hex}/"
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    views = []
    for i in range(2):
        store = EtcdStore(etcd, prefix=prefix, clock=clock)
        views.append(NodeView(store, AccountService(store, PasswordHasher(), clock),
                              RepositoryService(store, GitRunner(tmp_path / f"n{i}"), clock)))
    yield views[0], views[1], clock
    etcd.delete(prefix, prefix=True)
    for view in views:
        view.store.close()


def decider(view: NodeView, secret: str, owner: str, name: str, calls: list[int]):  # type: ignore[no-untyped-def]
    """What a git request's authorization does: maintenance flag, token, repository, permission."""
    def decide() -> tuple[tuple[Principal, RepoAccess], object]:
        calls.append(1)
        if view.store.get_maintenance().enabled:
            raise NotFound("maintenance")  # stands in for the 503
        principal = view.accounts.authenticate_token(secret)
        access = view.repos.find(principal, owner, name)
        view.repos.require(access, Permission.PULL)
        return (principal, access), principal.recheck_at
    return decide


def seed(view: NodeView, clock: FakeClock, expires_in: timedelta | None = None) -> tuple[str, int]:
    user = view.accounts.create_user("alice")
    token, secret = view.accounts.issue_token(user, [Scope.REPO], expires_at=clock.now() + expires_in
                                              if expires_in else None)
    # One authentication records "last used", which is a write: the decisions after it are keepable.
    view.accounts.authenticate_token(secret)
    view.store.create_repo(user.id, "proj", storage_id=uuid.uuid4().hex, visibility=Visibility.PRIVATE)
    return secret, token.id


def test_a_decision_is_reused_until_another_node_revokes_the_token(
    two_nodes: tuple[NodeView, NodeView, FakeClock]
) -> None:
    a, b, clock = two_nodes
    secret, token_id = seed(b, clock)
    cache: AccessCache[tuple[Principal, RepoAccess]] = AccessCache(a.store, clock)
    key = cache_key(["git", f"token {secret}", "alice", "proj", "upload-pack"])
    calls: list[int] = []
    decide = decider(a, secret, "alice", "proj", calls)
    (_, access), kept = cache.get(key, decide)
    assert not kept and access.repo.name == "proj"
    for _ in range(3):
        (_, again), kept = cache.get(key, decide)
        assert kept and again.repo.id == access.repo.id
    assert len(calls) == 1
    assert b.store.delete_token(token_id)  # through the other node
    with pytest.raises(Unauthenticated):
        cache.get(key, decide)
    assert len(calls) == 2


@pytest.mark.parametrize("change", ["maintenance", "visibility", "rename", "suspend"])
def test_any_change_to_what_was_read_is_seen(two_nodes: tuple[NodeView, NodeView, FakeClock], change: str) -> None:
    a, b, clock = two_nodes
    secret, _ = seed(b, clock)
    cache: AccessCache[tuple[Principal, RepoAccess]] = AccessCache(a.store, clock)
    key = cache_key(["git", secret, "alice", "proj", "upload-pack"])
    calls: list[int] = []
    decide = decider(a, secret, "alice", "proj", calls)
    cache.get(key, decide)
    assert cache.get(key, decide)[1]
    owner = b.store.get_account("alice")
    assert owner is not None
    repo = b.store.get_repo(owner.id, "proj")
    assert repo is not None
    if change == "maintenance":
        b.store.set_maintenance(MaintenanceState(enabled=True, message="upgrade", since=clock.now()))
    elif change == "visibility":
        b.store.save_repo(dataclasses.replace(repo, visibility=Visibility.PUBLIC))
    elif change == "rename":
        b.store.save_repo(dataclasses.replace(repo, name="renamed"))
    else:
        user = b.store.get_account("alice")
        assert user is not None
        b.store.save_account(dataclasses.replace(user, suspended=True))
    try:
        _, kept = cache.get(key, decide)
    except BulwarkError:  # the fresh decision may well refuse; what matters is that it was made afresh
        kept = False
    assert not kept
    assert len(calls) == 2


def test_an_expired_token_is_not_reused(two_nodes: tuple[NodeView, NodeView, FakeClock]) -> None:
    a, b, clock = two_nodes
    secret, _ = seed(b, clock, expires_in=timedelta(minutes=5))
    cache: AccessCache[tuple[Principal, RepoAccess]] = AccessCache(a.store, clock)
    key = cache_key(["git", secret, "alice", "proj", "upload-pack"])
    decide = decider(a, secret, "alice", "proj", [])
    cache.get(key, decide)
    assert cache.get(key, decide)[1]
    clock.current += timedelta(minutes=6)
    with pytest.raises(Unauthenticated, match="expired"):
        cache.get(key, decide)


def test_decisions_that_wrote_or_listed_are_not_kept(two_nodes: tuple[NodeView, NodeView, FakeClock]) -> None:
    a, b, clock = two_nodes
    seed(b, clock)
    cache: AccessCache[int] = AccessCache(a.store, clock)
    calls: list[int] = []

    def lists() -> tuple[int, None]:
        calls.append(1)
        return len(a.store.list_repos()), None

    for _ in range(2):
        assert cache.get(b"k", lists) == (1, False)
    assert len(calls) == 2


def test_a_kept_decision_is_made_afresh_when_the_tokens_last_use_is_due(
    two_nodes: tuple[NodeView, NodeView, FakeClock]
) -> None:
    """Kept decisions skip the token's "last used" write; it must still be recorded every minute."""
    a, b, clock = two_nodes
    secret, token_id = seed(b, clock)
    cache: AccessCache[tuple[Principal, RepoAccess]] = AccessCache(a.store, clock)
    key = cache_key(["git", secret, "alice", "proj", "upload-pack"])
    decide = decider(a, secret, "alice", "proj", [])
    cache.get(key, decide)
    assert cache.get(key, decide)[1]
    clock.current += timedelta(seconds=61)
    assert not cache.get(key, decide)[1]
    user = b.store.get_account("alice")
    assert user is not None
    token = next(t for t in b.store.list_tokens(user.id) if t.id == token_id)
    assert token.last_used_at == clock.now()
