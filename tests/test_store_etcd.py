"""The etcd store: the store contract, plus what only a shared store has (several nodes on one etcd,
races between them decided by etcd). Each test runs on the in-memory fake etcd (the fast tier) and on
a real etcd (the system tier)."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bulwark.errors import AlreadyExists, InvalidInput, NotFound, StoreError
from bulwark.etcd import Etcd
from bulwark.models import Account, AccountType, OrgRole, Permission, Scope
from bulwark.store.etcd import EtcdStore
from tests.support import helpers
from tests.support.etcd_helpers import BACKENDS, any_etcd, fresh_prefix
from tests.support.store_contract import KeyOwner, StoreContract, fingerprint

pytestmark = pytest.mark.timeout(60)

# One etcd for the whole module, fake or real; every test uses its own key prefix.
etcd = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd")
# A hung thread fails its test before the module's 60 s timeout does.
run_in_threads = functools.partial(helpers.run_in_threads, timeout=50)


prefix = pytest.fixture(fresh_prefix, name="prefix")


@pytest.fixture
def store(etcd: Etcd, prefix: str) -> Iterator[EtcdStore]:
    s = EtcdStore(etcd, prefix=prefix)
    yield s
    s.close()


@pytest.fixture
def nodes(etcd: Etcd, prefix: str) -> Iterator[list[EtcdStore]]:
    """Two stores on one etcd and prefix, standing in for two cluster nodes."""
    stores = [EtcdStore(etcd, prefix=prefix), EtcdStore(etcd, prefix=prefix)]
    yield stores
    for s in stores:
        s.close()


class TestEtcdStore(StoreContract):
    pass


# -- several nodes -------------------------------------------------------------------


def test_nodes_see_each_others_writes_at_once(nodes: list[EtcdStore]) -> None:
    a, b = nodes
    user = a.create_user("alice")
    assert b.get_account("ALICE") == user
    repo = b.create_repo(user.id, "r", storage_id="s")
    assert a.get_repo(user.id, "R") == repo
    a.set_collaborator(repo.id, user.id, Permission.PUSH)
    assert b.list_collaborations_of(user.id) != []
    b.delete_account(user.id)
    assert a.get_account_by_id(user.id) is None
    assert a.get_repo_by_id(repo.id) is None


def test_concurrent_creation_of_one_login_on_two_nodes_has_exactly_one_winner(nodes: list[EtcdStore]) -> None:
    for round_ in range(5):
        login = f"contested{round_}"

        def create(i: int, login: str = login) -> Account:
            # Half the contenders spell the login in upper case.
            return nodes[i % 2].create_user(login.upper() if i % 3 else login)

        results, errors = run_in_threads(8, create)
        assert len(results) == 1, errors
        assert len(errors) == 7
        assert all(isinstance(e, AlreadyExists) for e in errors), errors
        assert nodes[0].get_account(login) == results[0]
        assert nodes[1].get_account(login) == results[0]


def test_concurrent_creation_of_one_repo_name_has_exactly_one_winner(nodes: list[EtcdStore]) -> None:
    owner = nodes[0].create_user("owner")
    results, errors = run_in_threads(6, lambda i: nodes[i % 2].create_repo(owner.id, "same", storage_id=f"s{i}"))
    assert len(results) == 1
    assert len(errors) == 5 and all(isinstance(e, AlreadyExists) for e in errors), errors
    assert nodes[1].list_repos(owner.id) == results


def test_concurrent_creations_on_two_nodes_get_distinct_increasing_ids(nodes: list[EtcdStore]) -> None:
    def work(i: int) -> list[int]:
        return [nodes[i % 2].create_user(f"u{i}-{n}").id for n in range(5)]

    results, errors = run_in_threads(6, work)
    assert errors == []
    ids = [account_id for per_thread in results for account_id in per_thread]
    assert len(set(ids)) == 30
    # Each writer's own ids increase, and the listing comes back in id order.
    assert all(per_thread == sorted(per_thread) for per_thread in results)
    assert [a.id for a in nodes[1].list_accounts()] == sorted(ids)


def test_repositories_created_at_once_on_two_nodes_get_distinct_ids_from_blocks(nodes: list[EtcdStore]) -> None:
    """Each store hands out repository ids from a block it reserved: no create compares a shared
    counter, and no two repositories ever share an id."""
    owner = nodes[0].create_user("owner")

    def work(i: int) -> list[int]:
        return [nodes[i % 2].create_repo(owner.id, f"r{i}-{n}", storage_id=f"s{i}-{n}").id for n in range(20)]

    results, errors = run_in_threads(6, work)
    assert errors == []
    ids = [repo_id for per_thread in results for repo_id in per_thread]
    assert len(set(ids)) == 120
    assert all(per_thread == sorted(per_thread) for per_thread in results)
    assert sorted(r.id for r in nodes[1].list_repos()) == sorted(ids)
    assert all(nodes[0].get_repo_by_id(repo_id) is not None for repo_id in ids)


def test_concurrent_writers_lose_no_updates(nodes: list[EtcdStore]) -> None:
    owner = nodes[0].create_user("owner")
    org = nodes[0].create_org("acme", owner_id=owner.id)

    def work(i: int) -> None:
        node = nodes[i % 2]
        user = node.create_user(f"user-{i}")
        node.set_membership(org.id, user.id, OrgRole.MEMBER)
        for n in range(4):
            repo = node.create_repo(org.id, f"repo-{i}-{n}", storage_id=f"s-{i}-{n}")
            node.set_collaborator(repo.id, user.id, Permission.PUSH)

    _, errors = run_in_threads(6, work)
    assert errors == []
    repos = nodes[1].list_repos(org.id)
    assert len(repos) == 24 and len({r.id for r in repos}) == 24
    assert len(nodes[1].list_members(org.id)) == 7
    assert all(len(nodes[1].list_collaborators(r.id)) == 1 for r in repos)


def test_rename_racing_a_create_onto_the_same_login_has_one_winner(nodes: list[EtcdStore]) -> None:
    for round_ in range(5):
        user = nodes[0].create_user(f"old{round_}")
        wanted = f"new{round_}"

        def work(i: int, user: Account = user, wanted: str = wanted) -> Account:
            if i == 0:
                return nodes[0].save_account(dataclasses.replace(user, login=wanted))
            return nodes[1].create_user(wanted.upper())

        results, errors = run_in_threads(2, work)
        assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], AlreadyExists), errors
        assert nodes[1].get_account(wanted) == results[0]


def test_nothing_is_left_behind_when_dependents_race_a_delete_account(nodes: list[EtcdStore]) -> None:
    """Tokens, repositories, memberships, collaborations, SSH keys and deploy keys added while
    the account is being deleted either go with it or are refused; none survives it."""
    helper = nodes[0].create_user("helper")
    boss = nodes[0].create_user("boss")
    org = nodes[0].create_org("club", owner_id=boss.id)
    theirs = nodes[0].create_repo(helper.id, "theirs", storage_id="theirs")
    for round_ in range(5):
        victim = nodes[0].create_user(f"victim{round_}")

        victim_repo = nodes[0].create_repo(victim.id, "kept", storage_id=f"k{round_}")

        def work(i: int, victim_id: int = victim.id, repo_id: int = victim_repo.id, round_: int = round_) -> None:
            node = nodes[i % 2]
            if i == 0:
                node.delete_account(victim_id)
            elif i == 1:
                node.create_token(victim_id, token_hash=f"h{round_}", token_prefix="p", scopes=())
            elif i == 2:
                node.create_repo(victim_id, "r", storage_id=f"v{round_}")
            elif i == 3:
                node.set_membership(org.id, victim_id, OrgRole.MEMBER)
            elif i == 4:
                node.set_collaborator(theirs.id, victim_id, Permission.PULL)
            elif i == 5:
                node.create_ssh_key(fingerprint=fingerprint(f"u{round_}"), algorithm="a", key="k", title="",
                                    user_id=victim_id)
            else:
                # A deploy key of a repository the delete takes along.
                node.create_ssh_key(fingerprint=fingerprint(f"d{round_}"), algorithm="a", key="k", title="",
                                    repo_id=repo_id)

        _, errors = run_in_threads(7, work)
        # Only writes that came after the delete may fail, and only because the account is gone.
        assert all(isinstance(e, NotFound) for e in errors), errors
        reader = nodes[1]
        assert reader.get_account_by_id(victim.id) is None
        assert reader.list_tokens(victim.id) == []
        assert reader.get_token_by_hash(f"h{round_}") is None
        assert reader.list_repos(victim.id) == []
        assert reader.list_memberships_of(victim.id) == []
        assert reader.list_collaborations_of(victim.id) == []
        assert reader.list_ssh_keys(user_id=victim.id) == []
        assert reader.list_ssh_keys(repo_id=victim_repo.id) == []
        assert reader.get_ssh_key_by_fingerprint(fingerprint(f"u{round_}")) is None
        assert reader.get_ssh_key_by_fingerprint(fingerprint(f"d{round_}")) is None
        # The storage id of a refused or deleted repository is free again.
        assert reader.create_repo(helper.id, f"again{round_}", storage_id=f"v{round_}").storage_id == f"v{round_}"


def test_concurrent_creation_of_one_ssh_key_on_two_nodes_has_exactly_one_winner(nodes: list[EtcdStore]) -> None:
    ann = nodes[0].create_user("ann")
    ben = nodes[0].create_user("ben")
    repo = nodes[0].create_repo(ann.id, "r", storage_id="s")
    for round_ in range(5):
        fp = fingerprint(f"contested{round_}")

        def create(i: int, fp: str = fp) -> int:
            # Users' keys and deploy keys race for one fingerprint.
            owners: list[KeyOwner] = [{"user_id": ann.id}, {"user_id": ben.id}, {"repo_id": repo.id}]
            owner = owners[i % 3]
            key = nodes[i % 2].create_ssh_key(fingerprint=fp, algorithm="ssh-ed25519", key="k", title=str(i), **owner)
            return key.id

        results, errors = run_in_threads(6, create)
        assert len(results) == 1, errors
        assert len(errors) == 5 and all(isinstance(e, AlreadyExists) for e in errors), errors
        for node in nodes:
            found = node.get_ssh_key_by_fingerprint(fp)
            assert found is not None and found.id == results[0]
    listed = [*nodes[1].list_ssh_keys(user_id=ann.id), *nodes[1].list_ssh_keys(user_id=ben.id),
              *nodes[1].list_ssh_keys(repo_id=repo.id)]
    assert len(listed) == 5


def test_host_keys_added_at_once_on_two_nodes_end_as_one(nodes: list[EtcdStore]) -> None:
    results, errors = run_in_threads(6, lambda i: nodes[i % 2].add_ssh_host_key("ssh-ed25519", f"key of node {i}"))
    assert errors == []
    assert len(set(results)) == 1
    assert nodes[0].get_ssh_host_keys() == nodes[1].get_ssh_host_keys() == results[:1]


def test_nothing_is_left_behind_when_deploy_keys_race_a_delete_repo(etcd: Etcd, prefix: str,
                                                                    nodes: list[EtcdStore]) -> None:
    owner = nodes[0].create_user("owner")
    for round_ in range(5):
        repo = nodes[0].create_repo(owner.id, f"r{round_}", storage_id=f"s{round_}")

        def work(i: int, repo_id: int = repo.id, round_: int = round_) -> None:
            if i == 0:
                nodes[0].delete_repo(repo_id)
            else:
                nodes[i % 2].create_ssh_key(fingerprint=fingerprint(f"{round_}-{i}"), algorithm="a", key="k",
                                            title="", repo_id=repo_id)

        _, errors = run_in_threads(4, work)
        assert all(isinstance(e, NotFound) for e in errors), errors
        assert nodes[1].list_ssh_keys(repo_id=repo.id) == []
        assert all(nodes[1].get_ssh_key_by_fingerprint(fingerprint(f"{round_}-{i}")) is None for i in range(1, 4))
    for kind in ("ssh-keys/", "ssh-fingerprints/", "deploy-keys-of/", "repo-dependents/"):
        assert etcd.get_prefix(prefix + kind) == [], kind


# -- the keyspace and the client -------------------------------------------------------


def test_stores_with_different_prefixes_are_separate(etcd: Etcd, store: EtcdStore) -> None:
    other_prefix = f"/test/{uuid.uuid4().hex}/"
    other = EtcdStore(etcd, prefix=other_prefix)
    try:
        store.create_user("alice")
        assert other.get_account("alice") is None
        assert other.create_user("alice").login == "alice"
        assert len(store.list_accounts()) == 1
    finally:
        other.close()
        etcd.delete(other_prefix, prefix=True)


def test_unknown_keys_under_the_prefix_are_ignored(etcd: Etcd, prefix: str, store: EtcdStore) -> None:
    user = store.create_user("alice")
    repo = store.create_repo(user.id, "r", storage_id="s")
    # Keys that a later version might add next to the known ones.
    etcd.put(prefix + "future-kind/1", "{}")
    etcd.put(prefix + "accounts-archive/1", "not json")
    etcd.put(prefix + "repos-by-date/1", "x")
    assert store.list_accounts() == [user]
    assert store.list_repos() == [repo]
    assert store.get_account("alice") == user
    store.delete_account(user.id)
    assert store.list_accounts() == []
    assert etcd.get(prefix + "future-kind/1") is not None


def test_a_damaged_record_is_a_store_error(etcd: Etcd, prefix: str, store: EtcdStore) -> None:
    user = store.create_user("alice")
    [kv] = [kv for kv in etcd.get_prefix(prefix) if kv.value.startswith(b"{") and b'"login"' in kv.value]
    etcd.put(kv.key, "{broken")
    with pytest.raises(StoreError):
        store.get_account_by_id(user.id)
    with pytest.raises(StoreError):
        store.list_accounts()


def test_close_leaves_the_etcd_client_open(etcd: Etcd, prefix: str) -> None:
    s = EtcdStore(etcd, prefix=prefix)
    s.create_user("alice")
    s.close()
    with pytest.raises(StoreError):
        s.get_account("alice")
    with pytest.raises(StoreError):
        s.create_user("bob")
    assert etcd.get_prefix(prefix) != []
    assert EtcdStore(etcd, prefix=prefix).get_account("alice") is not None


def test_the_prefix_must_end_with_a_slash(etcd: Etcd) -> None:
    with pytest.raises(ValueError):
        EtcdStore(etcd, prefix="/bulwark/store")


def test_a_delete_too_large_for_one_transaction_changes_nothing(etcd: Etcd, prefix: str) -> None:
    s = EtcdStore(etcd, prefix=prefix, max_txn_ops=12)
    try:
        user = s.create_user("big")
        repos = [s.create_repo(user.id, f"r{n}", storage_id=f"s{n}") for n in range(3)]
        s.create_token(user.id, token_hash="h", token_prefix="p", scopes=())
        with pytest.raises(StoreError, match="max-txn-ops"):
            s.delete_account(user.id)
        assert s.get_account_by_id(user.id) == user
        assert s.list_repos(user.id) == repos
        assert s.get_token_by_hash("h") is not None
        # Removing the repositories first makes it fit.
        for repo in repos:
            assert s.delete_repo(repo.id)
        assert s.delete_account(user.id) == []
    finally:
        s.close()


# -- values ----------------------------------------------------------------------------


def test_times_come_from_the_clock(etcd: Etcd, prefix: str) -> None:
    start = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    clock = helpers.FakeClock(start)
    s = EtcdStore(etcd, prefix=prefix, clock=clock)
    try:
        user = s.create_user("timed")
        assert user.created_at == start and user.updated_at == start
        token = s.create_token(user.id, token_hash="h", token_prefix="p", scopes=())
        assert token.created_at == start
        repo = s.create_repo(user.id, "r", storage_id="s")
        assert repo.created_at == start and repo.updated_at == start

        clock.current = start + timedelta(hours=1)
        saved = s.save_account(user)
        assert saved.created_at == start and saved.updated_at == clock.current
        saved_repo = s.save_repo(repo)
        assert saved_repo.created_at == start and saved_repo.updated_at == clock.current
        assert s.get_repo_by_id(repo.id) == saved_repo
    finally:
        s.close()


def test_records_are_json_with_explicit_fields(etcd: Etcd, prefix: str, store: EtcdStore) -> None:
    user = store.create_user("stamp", password_hash="secret-hash")
    expires = datetime(2030, 1, 1, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    store.create_token(user.id, token_hash="h", token_prefix="p", scopes=[Scope.USER, Scope.REPO], expires_at=expires)
    values = [kv.text for kv in etcd.get_prefix(prefix)]
    assert any(
        '"scopes":["repo","user"]' in v and '"expires_at":"2030-01-01T14:00:00.000000+00:00"' in v for v in values
    )
    assert any('"type":"User"' in v and '"password_hash":"secret-hash"' in v for v in values)
    assert store.list_accounts(AccountType.USER) == [user]


def test_ssh_keys_are_kept_under_their_own_keys(etcd: Etcd, prefix: str, store: EtcdStore) -> None:
    user = store.create_user("kim")
    repo = store.create_repo(user.id, "r", storage_id="s")
    mine = store.create_ssh_key(fingerprint=fingerprint("mine"), algorithm="ssh-ed25519", key="ssh-ed25519 AAAA",
                                title="laptop", user_id=user.id)
    deploy = store.create_ssh_key(fingerprint=fingerprint("deploy"), algorithm="ssh-ed25519", key="ssh-ed25519 BBBB",
                                  title="ci", repo_id=repo.id, read_only=True)
    store.add_ssh_host_key("ssh-ed25519", "pem")
    found = {kv.key.removeprefix(prefix): kv.text for kv in etcd.get_prefix(prefix)
             if kv.key.removeprefix(prefix).startswith(("ssh", "deploy", "repo-dependents", "seq/ssh"))}
    assert set(found) == {
        f"ssh-keys/{mine.id:012d}",
        f"ssh-keys/{deploy.id:012d}",
        f"ssh-fingerprints/{mine.fingerprint}",
        f"ssh-fingerprints/{deploy.fingerprint}",
        f"ssh-keys-of/{user.id:012d}/{mine.id:012d}",
        f"deploy-keys-of/{repo.id:012d}/{deploy.id:012d}",
        f"repo-dependents/{repo.id:012d}",
        "ssh-host-keys/ssh-ed25519",
        "seq/ssh-keys",
    }
    assert found[f"ssh-fingerprints/{deploy.fingerprint}"] == str(deploy.id)
    assert '"read_only":true' in found[f"ssh-keys/{deploy.id:012d}"]
    assert '"private_key":"pem"' in found["ssh-host-keys/ssh-ed25519"]
    # Looking a key up by its fingerprint reads two keys, no range.
    with store.logging_reads() as log:
        assert store.get_ssh_key_by_fingerprint(mine.fingerprint) == mine
    assert log.usable and set(log.reads) == {prefix + f"ssh-fingerprints/{mine.fingerprint}",
                                             prefix + f"ssh-keys/{mine.id:012d}"}


def test_invalid_input_writes_nothing(etcd: Etcd, prefix: str, store: EtcdStore) -> None:
    user = store.create_user("val")
    before = [(kv.key, kv.mod_revision) for kv in etcd.get_prefix(prefix)]
    with pytest.raises(InvalidInput):
        store.create_token(user.id, token_hash="x", token_prefix="p", scopes=["nope"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        store.touch_token(1, datetime(2030, 1, 1))
    assert [(kv.key, kv.mod_revision) for kv in etcd.get_prefix(prefix)] == before


def test_memberships_and_collaborations_from_before_the_user_side_index_are_found(
    etcd: Etcd, prefix: str, store: EtcdStore
) -> None:
    """Data written before the index (by an older version) has no user-side keys: the first list
    writes them; a key left pointing at nothing is skipped."""
    user = store.create_user("ivy")
    org = store.create_org("guild", owner_id=store.create_user("boss").id)
    store.set_membership(org.id, user.id, OrgRole.MEMBER)
    repo = store.create_repo(org.id, "tools", storage_id="tools")
    store.set_collaborator(repo.id, user.id, Permission.PUSH)
    etcd.delete(f"{prefix}member-of/", prefix=True)
    etcd.delete(f"{prefix}collaborates/", prefix=True)
    etcd.delete(f"{prefix}indexes")
    older = EtcdStore(etcd, prefix=prefix)
    try:
        assert [m.org_id for m in older.list_memberships_of(user.id)] == [org.id]
        assert [c.repo_id for c in older.list_collaborations_of(user.id)] == [repo.id]
        assert etcd.get(f"{prefix}indexes") is not None
        # The records are the truth: an index key without its record is no membership.
        etcd.delete(f"{prefix}memberships/{org.id:012d}/{user.id:012d}")
        assert older.list_memberships_of(user.id) == []
        assert older.remove_collaborator(repo.id, user.id) and older.list_collaborations_of(user.id) == []
        assert etcd.get_prefix(f"{prefix}collaborates/") == []
    finally:
        older.close()


def test_tokens_from_before_their_user_index_are_found(etcd: Etcd, prefix: str, store: EtcdStore) -> None:
    """A user's tokens are read from their index, not from every token of the cluster; tokens written
    by a version without it (index version 1) are indexed by the first list."""
    user = store.create_user("tia")
    other = store.create_user("tom")
    mine = store.create_token(user.id, token_hash="mine", token_prefix="p", scopes=())
    theirs = store.create_token(other.id, token_hash="theirs", token_prefix="p", scopes=())
    etcd.delete(f"{prefix}tokens-of/", prefix=True)
    etcd.put(f"{prefix}indexes", "1")
    older = EtcdStore(etcd, prefix=prefix)
    try:
        assert older.list_tokens(user.id) == [mine]
        assert older.list_tokens(other.id) == [theirs]
        assert etcd.get(f"{prefix}indexes").text == "2"  # type: ignore[union-attr]
        assert older.delete_token(mine.id) and older.list_tokens(user.id) == []
        assert etcd.get_prefix(f"{prefix}tokens-of/{user.id:012d}/") == []
        older.delete_account(other.id)
        assert etcd.get_prefix(f"{prefix}tokens-of/") == []
    finally:
        older.close()
