"""The SQLite change log: capture of every replicated row change, and a replica
that follows it (incrementally, from a snapshot, across restarts) to the same state."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import pathlib
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bulwark.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from bulwark.models import AccountType, MaintenanceState, OrgRole, Permission, Scope, SshKey, Visibility
from bulwark.store.changes import Change, ChangeLog, ChangeOp, Snapshot
from bulwark.store.sqlite import MIGRATIONS, REPLICATED_TABLES, SQLiteStore
from bulwark.webhooks.models import ContentType, DeliveryState
from bulwark.webhooks.store_sqlite import SQLiteHooks

pytestmark = pytest.mark.timeout(60)

WHEN = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def primary(tmp_path: pathlib.Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "primary.db")
    yield s
    s.close()


@pytest.fixture
def replica(tmp_path: pathlib.Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "replica.db")
    yield s
    s.close()


def over_the_wire(changes: list[Change]) -> list[Change]:
    """The changes as a replica receives them: through JSON text."""
    return [Change.from_json(json.loads(json.dumps(change.to_json()))) for change in changes]


def ship(primary: SQLiteStore, replica: SQLiteStore, sizes: tuple[int, ...] = (1, 3, 7, 2, 11)) -> int:
    """Pull everything new from ``primary`` into ``replica`` in batches of cycling sizes."""
    batches = 0
    while True:
        size = sizes[batches % len(sizes)]
        batch = primary.changes_since(replica.replication_position(), limit=size)
        if not batch:
            return batches
        assert len(batch) <= size
        assert replica.apply_changes(over_the_wire(batch)) == batch[-1].seq
        batches += 1


def state(store: SQLiteStore) -> dict[str, Any]:
    """Everything replicated, read through the Store interface."""
    accounts = store.list_accounts()
    repos = store.list_repos()
    users = [a for a in accounts if a.type is AccountType.USER]
    orgs = [a for a in accounts if a.type is AccountType.ORGANIZATION]
    return {
        "accounts": accounts,
        "passwords": {u.id: store.get_password_hash(u.id) for u in users},
        "tokens": {u.id: store.list_tokens(u.id) for u in users},
        "members": {o.id: store.list_members(o.id) for o in orgs},
        "memberships": {u.id: store.list_memberships_of(u.id) for u in users},
        "repos": repos,
        "by_name": {(r.owner_id, r.name.upper()): store.get_repo(r.owner_id, r.name.upper()) for r in repos},
        "collaborators": {r.id: store.list_collaborators(r.id) for r in repos},
        "collaborations": {u.id: store.list_collaborations_of(u.id) for u in users},
        "ssh_keys": {u.id: store.list_ssh_keys(user_id=u.id) for u in users},
        "deploy_keys": {r.id: store.list_ssh_keys(repo_id=r.id) for r in repos},
        "host_keys": store.get_ssh_host_keys(),
    }


def fingerprint(seed: str) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode().rstrip("=")


def ssh_key(store: SQLiteStore, seed: str, **owner: Any) -> SshKey:
    return store.create_ssh_key(fingerprint=fingerprint(seed), algorithm="ssh-ed25519", key=f"ssh-ed25519 {seed}",
                                title=seed, **owner)


def populate(store: SQLiteStore) -> dict[str, int]:
    """A varied history on ``store``; returns a few ids for later steps."""
    alice = store.create_user("alice", name="Alice", email="a@example.com", site_admin=True, password_hash="h-a")
    bob = store.create_user("Bob", password_hash="h-b")
    carol = store.create_user("carol")
    acme = store.create_org("acme", owner_id=alice.id, name="Acme")
    store.set_membership(acme.id, bob.id, OrgRole.MEMBER)
    store.set_membership(acme.id, bob.id, OrgRole.OWNER)  # an upsert that updates
    store.set_membership(acme.id, carol.id, OrgRole.MEMBER)
    store.remove_membership(acme.id, carol.id)
    tok_a = store.create_token(
        alice.id, token_hash="hash-a", token_prefix="bwk_a", scopes={Scope.REPO, Scope.USER}, note="laptop"
    )
    tok_b = store.create_token(
        bob.id, token_hash="hash-b", token_prefix="bwk_b", scopes={Scope.REPO}, expires_at=WHEN + timedelta(days=9)
    )
    tok_gone = store.create_token(bob.id, token_hash="hash-gone", token_prefix="bwk_g", scopes=())
    store.touch_token(tok_a.id, WHEN)
    store.touch_token(tok_a.id, WHEN - timedelta(hours=1))  # older: changes nothing
    store.touch_token(tok_b.id, WHEN)
    store.delete_token(tok_gone.id)
    store.set_setting("epoch", "7")
    store.set_maintenance(MaintenanceState(enabled=True, message="upgrading", since=WHEN))
    one = store.create_repo(alice.id, "one", storage_id="s1", description="first")
    site = store.create_repo(acme.id, "site", storage_id="s2", visibility=Visibility.PRIVATE)
    tools = store.create_repo(bob.id, "tools", storage_id="s3", default_branch="trunk")
    store.record_event("push", {"storage_id": "s1", "checksum": "c1"})
    store.set_collaborator(one.id, bob.id, Permission.PUSH)
    store.set_collaborator(one.id, bob.id, Permission.ADMIN)
    store.set_collaborator(site.id, carol.id, Permission.PULL)
    store.set_collaborator(tools.id, carol.id, Permission.PUSH)
    store.save_repo(dataclasses.replace(one, name="Uno", description="renamed", allow_force_push=False))
    store.save_repo(dataclasses.replace(tools, owner_id=acme.id, pushed_at=WHEN))  # a transfer
    # Saving a parent row must not remove its children on the replica.
    store.save_account(dataclasses.replace(alice, name="Alice A.", suspended=True))
    store.set_password_hash(bob.id, "h-b2")
    store.set_password_hash(alice.id, None)
    alice_key = ssh_key(store, "alice-laptop", user_id=alice.id)
    ssh_key(store, "bob-desk", user_id=bob.id)
    store.touch_ssh_key(alice_key.id, WHEN)
    store.delete_ssh_key(ssh_key(store, "bob-old", user_id=bob.id).id)
    ssh_key(store, "one-deploy", repo_id=one.id, read_only=True)
    ssh_key(store, "site-deploy", repo_id=site.id)
    store.add_ssh_host_key("ssh-ed25519", "ed25519 private key")
    store.add_ssh_host_key("ssh-ed25519", "another node's key")  # the first stays
    store.add_ssh_host_key("rsa-sha2-512", "rsa private key")
    store.delete_repo(site.id)  # takes carol's collaboration and its deploy key on it along
    dave = store.create_user("dave", password_hash="h-d")
    store.create_token(dave.id, token_hash="hash-d", token_prefix="bwk_d", scopes={Scope.REPO})
    store.set_membership(acme.id, dave.id, OrgRole.MEMBER)
    store.set_collaborator(one.id, dave.id, Permission.PULL)
    dave_repo = store.create_repo(dave.id, "mine", storage_id="s4")
    store.set_collaborator(dave_repo.id, carol.id, Permission.PUSH)
    ssh_key(store, "dave-key", user_id=dave.id)
    ssh_key(store, "dave-deploy", repo_id=dave_repo.id)
    store.record_event("push", {"storage_id": "s4", "checksum": "c4"})
    store.delete_account(dave.id)
    store.remove_collaborator(tools.id, carol.id)
    # Webhooks: a repository's hook and an organization's, deliveries with an attempt, and one
    # hook deleted with its deliveries.
    hooks = SQLiteHooks(store)
    hook = hooks.create_hook(repo_id=one.id, org_id=None, url="https://ci.example.com/hook",
                             content_type=ContentType.JSON, secret="s3cret", insecure_ssl=False, events=("push",),
                             active=True)
    org_hook = hooks.create_hook(repo_id=None, org_id=acme.id, url="https://chat.example.com/", insecure_ssl=True,
                                 content_type=ContentType.FORM, secret="", events=("*",), active=True)
    delivery = hooks.enqueue(hook.id, one.id, "push", None, '{"ref": "refs/heads/main"}')
    assert delivery is not None
    hooks.record_attempt(delivery, at=WHEN, status_code=500, duration_ms=12, request_headers={"X-GitHub-Event": "push"},
                         response_headers={"Content-Type": "text/plain"}, response_body="oops", error="",
                         state=DeliveryState.PENDING, next_at=WHEN + timedelta(seconds=10))
    hooks.enqueue(org_hook.id, tools.id, "repository", "renamed", "{}")
    hooks.save_hook(dataclasses.replace(hook, events=("push", "create")))
    gone = hooks.create_hook(repo_id=tools.id, org_id=None, url="https://x.example.com/", secret="",
                             content_type=ContentType.JSON, insecure_ssl=False, events=("push",), active=False)
    hooks.enqueue(gone.id, tools.id, "ping", None, "{}")
    hooks.delete_hook(gone.id)
    # The refs last announced: noted by pushes, and a repository marked unknown (as the migration
    # marks those older than it) whose refs are then read.
    hooks.note_refs(one.id, [("0" * 40, "a" * 40, "refs/heads/main"), ("0" * 40, "a" * 40, "refs/tags/v1")])
    hooks.note_refs(one.id, [("a" * 40, "b" * 40, "refs/heads/main"), ("a" * 40, "0" * 40, "refs/tags/v1")])
    with store.writing() as conn:
        conn.execute("INSERT INTO hook_refs_unknown (repo_id) VALUES (?)", (tools.id,))
    hooks.adopt_refs(tools.id, {"refs/heads/trunk": "c" * 40})
    with store.writing() as conn:
        conn.execute("INSERT INTO hook_refs_unknown (repo_id) VALUES (?)", (one.id,))
    return {"alice": alice.id, "bob": bob.id, "carol": carol.id, "acme": acme.id, "one": one.id, "tools": tools.id}


def tables(store: SQLiteStore) -> dict[str, list[dict[str, Any]]]:
    return store.snapshot().tables


# -- capture ------------------------------------------------------------------------


def test_the_sqlite_store_is_a_change_log(primary: SQLiteStore) -> None:
    log: ChangeLog = primary
    assert log.last_seq() == 0
    assert log.oldest_seq() == 0
    assert log.changes_since(0) == []
    assert log.replication_position() == 0


def test_every_row_change_is_captured_in_order_without_gaps(primary: SQLiteStore) -> None:
    alice = primary.create_user("alice")
    acme = primary.create_org("acme", owner_id=alice.id)
    primary.set_membership(acme.id, alice.id, OrgRole.MEMBER)
    changes = primary.changes_since(0)
    assert [(c.seq, c.table, c.op, c.key) for c in changes] == [
        (1, "accounts", ChangeOp.UPSERT, {"id": alice.id}),
        (2, "accounts", ChangeOp.UPSERT, {"id": acme.id}),
        (3, "memberships", ChangeOp.UPSERT, {"org_id": acme.id, "user_id": alice.id}),
        (4, "memberships", ChangeOp.UPSERT, {"org_id": acme.id, "user_id": alice.id}),
    ]
    assert changes[2].row == {"org_id": acme.id, "user_id": alice.id, "role": "admin"}
    assert changes[3].row == {"org_id": acme.id, "user_id": alice.id, "role": "member"}
    assert changes[0].row is not None and changes[0].row["login"] == "alice"
    assert all(c.at.tzinfo is not None and abs(datetime.now(UTC) - c.at) < timedelta(minutes=1) for c in changes)
    assert primary.last_seq() == 4
    assert primary.oldest_seq() == 1


def test_captured_rows_name_every_column(primary: SQLiteStore) -> None:
    populate(primary)
    snapshot = primary.snapshot()
    captured: dict[str, set[str]] = {}
    for change in primary.changes_since(0, limit=10_000):
        if change.op is ChangeOp.UPSERT:
            assert change.row is not None
            captured.setdefault(change.table, set()).update(change.row)
    assert set(captured) == set(REPLICATED_TABLES)
    with sqlite3.connect(primary._path) as conn:
        for table in REPLICATED_TABLES:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            assert captured[table] == columns, table
            assert set(snapshot.tables[table][0]) == columns, table


def test_cascaded_deletes_are_captured(primary: SQLiteStore) -> None:
    dave = primary.create_user("dave")
    erin = primary.create_user("erin")
    org = primary.create_org("guild", owner_id=erin.id)
    token = primary.create_token(dave.id, token_hash="h", token_prefix="p", scopes=())
    primary.set_membership(org.id, dave.id, OrgRole.MEMBER)
    repo = primary.create_repo(dave.id, "r", storage_id="s")
    primary.set_collaborator(repo.id, erin.id, Permission.PUSH)
    other = primary.create_repo(erin.id, "o", storage_id="t")
    primary.set_collaborator(other.id, dave.id, Permission.PULL)
    user_key = ssh_key(primary, "dave", user_id=dave.id)
    deploy_key = ssh_key(primary, "dave-r", repo_id=repo.id)
    ssh_key(primary, "erin", user_id=erin.id)
    before = primary.last_seq()

    primary.delete_account(dave.id)

    deleted = {(c.table, tuple(c.key.values())) for c in primary.changes_since(before) if c.op is ChangeOp.DELETE}
    assert deleted == {
        ("accounts", (dave.id,)),
        ("tokens", (token.id,)),
        ("memberships", (org.id, dave.id)),
        ("repositories", (repo.id,)),
        ("collaborators", (repo.id, erin.id)),
        ("collaborators", (other.id, dave.id)),
        ("ssh_keys", (user_key.id,)),
        ("ssh_keys", (deploy_key.id,)),
    }
    assert all(c.row is None for c in primary.changes_since(before))


def test_a_replace_that_removes_a_conflicting_row_is_captured(primary: SQLiteStore) -> None:
    first = primary.create_user("alice")
    before = primary.last_seq()
    with primary._write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO accounts (id, login, type, created_at, updated_at)"
            " VALUES (99, 'ALICE', 'User', 'x', 'x')"
        )
    changes = primary.changes_since(before)
    assert [(c.op, c.key) for c in changes] == [(ChangeOp.DELETE, {"id": first.id}), (ChangeOp.UPSERT, {"id": 99})]


def test_node_local_state_never_enters_the_stream(primary: SQLiteStore) -> None:
    primary.create_user("alice")
    seq = primary.last_seq()
    primary.set_setting("epoch", "2")
    primary.set_setting("epoch", "3")
    primary.set_setting("epoch", None)
    primary.set_maintenance(MaintenanceState(enabled=True, message="m", since=WHEN))
    primary.set_maintenance(MaintenanceState(enabled=False))
    assert primary.last_seq() == seq
    assert {c.table for c in primary.changes_since(0)} == {"accounts"}
    assert set(primary.snapshot().tables) == set(REPLICATED_TABLES)


def test_failed_transactions_leave_no_gap(primary: SQLiteStore) -> None:
    alice = primary.create_user("alice")
    with pytest.raises(AlreadyExists):
        primary.create_user("ALICE")
    with pytest.raises(AlreadyExists):
        primary.create_org("alice", owner_id=alice.id)
    with pytest.raises(NotFound):
        primary.create_org("acme", owner_id=12345)
    repo = primary.create_repo(alice.id, "r", storage_id="s")
    with pytest.raises(AlreadyExists):
        primary.save_repo(dataclasses.replace(primary.create_repo(alice.id, "q", storage_id="t"), name="R"))
    with pytest.raises(AlreadyExists), primary._write() as conn:
        # A transaction that wrote a captured row and then failed.
        conn.execute("UPDATE repositories SET description = 'x' WHERE id = ?", (repo.id,))
        raise AlreadyExists("changed my mind")
    primary.create_user("bob")
    seqs = [c.seq for c in primary.changes_since(0)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == 4
    stored = primary.get_repo_by_id(repo.id)
    assert stored is not None and stored.description == ""


def test_concurrent_writers_produce_a_gap_free_log_that_replays_to_the_same_state(
    primary: SQLiteStore, replica: SQLiteStore
) -> None:
    owner = primary.create_user("owner")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                repo = primary.create_repo(owner.id, f"r{n}-{i}", storage_id=f"s{n}x{i}")
                primary.save_repo(dataclasses.replace(repo, description=f"d{i}"))
                if i % 3 == 0:
                    primary.delete_repo(repo.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = [c.seq for c in primary.changes_since(0, limit=10_000)]
    assert seqs == list(range(1, primary.last_seq() + 1))
    ship(primary, replica, sizes=(17,))
    assert tables(replica) == tables(primary)


# -- replication --------------------------------------------------------------------


def test_a_replica_fed_in_batches_ends_equal_to_the_primary(primary: SQLiteStore, replica: SQLiteStore) -> None:
    populate(primary)
    assert ship(primary, replica) > 5
    expected = state(primary)
    assert expected["accounts"] and expected["tokens"] and expected["collaborators"] and expected["members"]
    assert state(replica) == expected
    assert tables(replica) == tables(primary)
    assert replica.last_seq() == primary.last_seq() == replica.replication_position()
    # The replica's log is the primary's, seq for seq, so it can serve it after a promotion.
    assert replica.changes_since(0, limit=10_000) == primary.changes_since(0, limit=10_000)
    # Node-local state stayed on the primary.
    assert replica.get_setting("epoch") is None
    assert replica.get_maintenance().enabled is False


def password_hashes(store: SQLiteStore) -> dict[int, list[tuple[int, str]]]:
    """Per account id, the (seq, hash) of every change in the log that still holds a password hash."""
    found: dict[int, list[tuple[int, str]]] = {}
    for change in store.changes_since(0, limit=10_000):
        if change.table == "accounts" and change.row is not None and change.row.get("password_hash"):
            found.setdefault(change.key["id"], []).append((change.seq, change.row["password_hash"]))
    return found


def newest_account_changes(store: SQLiteStore) -> dict[int, int]:
    newest: dict[int, int] = {}
    for change in store.changes_since(0, limit=10_000):
        if change.table == "accounts":
            newest[change.key["id"]] = change.seq
    return newest


def test_superseded_password_hashes_leave_the_log(primary: SQLiteStore, replica: SQLiteStore) -> None:
    """A password change left every older hash of the account in the log, for anyone who reads it."""
    ids = populate(primary)
    for store in (primary, replica):
        kept = password_hashes(store)
        # Only the newest change of an account carries its hash: bob's new one, nobody's old one.
        assert kept == {ids["bob"]: [(newest_account_changes(store)[ids["bob"]], "h-b2")]}, kept
        if store is primary:
            ship(primary, replica, sizes=(1, 2, 5))
    assert state(replica) == state(primary)
    assert replica.get_password_hash(ids["bob"]) == "h-b2"
    assert replica.changes_since(0, limit=10_000) == primary.changes_since(0, limit=10_000)


def test_a_replica_that_copied_a_hash_forgets_it_when_it_is_superseded(
    primary: SQLiteStore, replica: SQLiteStore
) -> None:
    bob = primary.create_user("bob", password_hash="h-1")
    ship(primary, replica)
    assert password_hashes(replica) == {bob.id: [(1, "h-1")]}
    primary.set_password_hash(bob.id, "h-2")
    primary.save_account(dataclasses.replace(bob, name="Bob"))  # carries h-2 again; the copy before goes
    ship(primary, replica)
    for store in (primary, replica):
        assert password_hashes(store) == {bob.id: [(3, "h-2")]}
    renamed = replica.get_account("bob")
    assert replica.get_password_hash(bob.id) == "h-2" and renamed is not None and renamed.name == "Bob"
    # A replica that was behind applies the scrubbed changes and still ends with the newest hash.
    late = SQLiteStore(pathlib.Path(str(replica._path) + ".late"))
    try:
        ship(primary, late, sizes=(1,))
        assert late.get_password_hash(bob.id) == "h-2" and state(late) == state(primary)
    finally:
        late.close()


def test_replica_keeps_following_as_the_primary_changes(primary: SQLiteStore, replica: SQLiteStore) -> None:
    ids = populate(primary)
    ship(primary, replica, sizes=(5,))
    primary.delete_account(ids["acme"])
    primary.create_token(ids["bob"], token_hash="late", token_prefix="l", scopes={Scope.USER})
    event = primary.record_event("push", {"storage_id": "s1"})
    ship(primary, replica, sizes=(2,))
    assert state(replica) == state(primary)
    assert replica.changes_since(event.seq - 1) == [event]


def test_a_log_out_reaches_the_replica_with_its_token(primary: SQLiteStore, replica: SQLiteStore) -> None:
    ids = populate(primary)
    token = primary.create_token(ids["bob"], token_hash="laptop", token_prefix="l", scopes={Scope.SITE_ADMIN})
    ship(primary, replica)
    primary.end_token_sessions(token.id, WHEN)
    primary.end_token_sessions(token.id, WHEN - timedelta(hours=1))  # an older one, arriving late, keeps the later
    ship(primary, replica)
    [copied] = [t for t in replica.list_tokens(ids["bob"]) if t.id == token.id]
    assert copied.sessions_ended_at == WHEN
    assert state(replica) == state(primary)


def test_a_log_out_kept_as_a_setting_moves_into_its_token(tmp_path: pathlib.Path) -> None:
    """Before the token had a column for it, a log-out was a node-local setting."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version, step in enumerate(MIGRATIONS[:4]):  # up to the step that gave tokens the column
        conn.executescript(step)
        conn.execute(f"PRAGMA user_version = {version + 1}")
    now = "2030-01-02T03:04:05.000000+00:00"
    conn.execute("INSERT INTO accounts (login, type, created_at, updated_at) VALUES ('bob', 'User', ?, ?)", (now, now))
    conn.execute("INSERT INTO tokens (user_id, token_hash, token_prefix, scopes, created_at)"
                 " VALUES (1, 'h', 'p', 'site_admin', ?)", (now,))
    conn.execute("INSERT INTO settings (key, value) VALUES ('status-sessions-ended:1', ?)",
                 (str(int(WHEN.timestamp() * 1000)),))
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        [token] = store.list_tokens(1)
        assert token.sessions_ended_at == WHEN.replace(microsecond=678000)
        assert store.get_setting("status-sessions-ended:1") is None
    finally:
        store.close()


def test_ssh_keys_and_host_keys_reach_the_replica(primary: SQLiteStore, replica: SQLiteStore) -> None:
    alice = primary.create_user("alice")
    repo = primary.create_repo(alice.id, "r", storage_id="s")
    mine = ssh_key(primary, "alice", user_id=alice.id)
    deploy = ssh_key(primary, "deploy", repo_id=repo.id, read_only=True)
    host = primary.add_ssh_host_key("ssh-ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n...")
    ship(primary, replica)
    assert replica.get_ssh_key_by_fingerprint(mine.fingerprint) == mine
    assert replica.list_ssh_keys(repo_id=repo.id) == [deploy]
    assert replica.get_ssh_host_keys() == [host]
    # A use, a removal and a cascade follow.
    primary.touch_ssh_key(mine.id, WHEN)
    primary.delete_ssh_key(deploy.id)
    second = ssh_key(primary, "deploy-2", repo_id=repo.id)
    ship(primary, replica)
    used = replica.get_ssh_key(mine.id)
    assert used is not None and used.last_used_at == WHEN
    assert replica.list_ssh_keys(repo_id=repo.id) == [second]
    primary.delete_repo(repo.id)
    ship(primary, replica)
    assert replica.get_ssh_key_by_fingerprint(second.fingerprint) is None
    assert state(replica) == state(primary) and tables(replica) == tables(primary)
    # A replica started from a snapshot has them too, and hands out no id twice after a promotion.
    late = SQLiteStore(pathlib.Path(str(replica._path) + ".late"))
    try:
        late.load_snapshot(primary.snapshot())
        assert state(late) == state(primary)
        assert ssh_key(late, "after-promotion", user_id=alice.id).id > second.id
    finally:
        late.close()


def test_applying_an_account_update_keeps_its_children(primary: SQLiteStore, replica: SQLiteStore) -> None:
    alice = primary.create_user("alice")
    primary.create_token(alice.id, token_hash="h", token_prefix="p", scopes=())
    org = primary.create_org("acme", owner_id=alice.id)
    repo = primary.create_repo(alice.id, "r", storage_id="s")
    primary.set_collaborator(repo.id, alice.id, Permission.ADMIN)
    ship(primary, replica)
    primary.save_account(dataclasses.replace(alice, name="A"))
    primary.save_repo(dataclasses.replace(repo, description="d"))
    ship(primary, replica)
    assert len(replica.list_tokens(alice.id)) == 1
    assert replica.get_membership(org.id, alice.id) is not None
    assert replica.list_collaborators(repo.id) != []
    assert state(replica) == state(primary)


def test_a_replay_is_refused_and_changes_nothing(primary: SQLiteStore, replica: SQLiteStore) -> None:
    populate(primary)
    ship(primary, replica)
    before, position = tables(replica), replica.replication_position()
    batch = over_the_wire(primary.changes_since(position - 5, limit=5))
    with pytest.raises(Conflict, match=f"expected {position + 1}, got {position - 4}"):
        replica.apply_changes(batch)
    with pytest.raises(Conflict):
        replica.apply_changes(over_the_wire(primary.changes_since(0, limit=3)))
    assert tables(replica) == before
    assert replica.replication_position() == position == replica.last_seq()


def test_a_gap_is_refused(primary: SQLiteStore, replica: SQLiteStore) -> None:
    for n in range(6):
        primary.create_user(f"u{n}")
    changes = primary.changes_since(0)
    replica.apply_changes(changes[:2])
    with pytest.raises(Conflict, match="expected 3, got 4"):
        replica.apply_changes(changes[3:])
    with pytest.raises(Conflict, match="expected 4, got 5"):
        replica.apply_changes([changes[2], changes[4]])  # not consecutive inside the batch
    assert replica.replication_position() == 2
    assert [a.login for a in replica.list_accounts()] == ["u0", "u1"]
    assert replica.apply_changes(changes[2:]) == 6
    assert state(replica) == state(primary)


def test_an_empty_batch_changes_nothing(replica: SQLiteStore) -> None:
    assert replica.apply_changes([]) == 0
    assert replica.last_seq() == 0


def _malformed(good: Change) -> list[Change]:
    row = dict(good.row or {})
    return [
        dataclasses.replace(good, table="settings"),
        dataclasses.replace(good, table="no_such_table"),
        dataclasses.replace(good, table="event"),
        dataclasses.replace(good, row={**row, "colour": "red"}),
        dataclasses.replace(good, row={k: v for k, v in row.items() if k != "id"}),
        dataclasses.replace(good, row=None),
        dataclasses.replace(good, key={"id": 999}),
        dataclasses.replace(good, key={"login": "x"}),
        dataclasses.replace(good, row={**row, "login": {"nested": 1}}),
        dataclasses.replace(good, row={**row, "type": "Robot"}),  # fails a CHECK
        dataclasses.replace(good, row={**row, "login": None}),  # NOT NULL
        dataclasses.replace(good, op="merge"),  # type: ignore[arg-type]
        dataclasses.replace(good, op=ChangeOp.DELETE, key={"id": "x", "other": 1}),
    ]


def test_a_malformed_change_is_refused_and_nothing_of_its_batch_is_applied(
    primary: SQLiteStore, replica: SQLiteStore
) -> None:
    alice = primary.create_user("alice")
    primary.create_token(alice.id, token_hash="h", token_prefix="p", scopes=())
    bob = primary.create_user("bob")
    first, token, second = primary.changes_since(0)
    replica.apply_changes([first])
    before = tables(replica)
    for bad in _malformed(second):
        with pytest.raises(InvalidInput):
            replica.apply_changes([token, bad])
        assert tables(replica) == before, bad
        assert replica.replication_position() == replica.last_seq() == 1
    # A token of a user the replica does not have breaks a foreign key.
    orphan = dataclasses.replace(token, row={**(token.row or {}), "user_id": 4242})
    with pytest.raises(InvalidInput, match="change 2"):
        replica.apply_changes([orphan, second])
    assert tables(replica) == before
    assert replica.apply_changes([token, second]) == 3
    assert replica.get_account_by_id(bob.id) == bob


def test_from_json_rejects_malformed_input() -> None:
    good = {"seq": 1, "table": "accounts", "op": "delete", "key": {"id": 1}, "row": None, "at": WHEN.isoformat()}
    assert Change.from_json(good).key == {"id": 1}
    for bad in (
        {**good, "seq": 0},
        {**good, "seq": "1"},
        {**good, "op": "merge"},
        {**good, "key": [1]},
        {**good, "at": "yesterday"},
        {k: v for k, v in good.items() if k != "key"},
    ):
        with pytest.raises((ValueError, KeyError, TypeError)):
            Change.from_json(bad)


def test_a_node_with_changes_of_its_own_refuses_a_primarys_changes(primary: SQLiteStore, replica: SQLiteStore) -> None:
    primary.create_user("alice")
    replica.create_user("local")
    with pytest.raises(Conflict, match="changes of its own"):
        replica.apply_changes(primary.changes_since(0))
    assert [a.login for a in replica.list_accounts()] == ["local"]


def test_the_position_survives_a_restart(primary: SQLiteStore, tmp_path: pathlib.Path) -> None:
    populate(primary)
    changes = primary.changes_since(0, limit=10_000)
    half = len(changes) // 2
    path = tmp_path / "restarting.db"
    first = SQLiteStore(path)
    first.apply_changes(over_the_wire(changes[:half]))
    first.close()

    second = SQLiteStore(path)
    try:
        assert second.replication_position() == half == second.last_seq()
        with pytest.raises(Conflict):
            second.apply_changes(over_the_wire(changes[half - 1 :]))
        ship(primary, second)
        assert state(second) == state(primary)
        assert second.replication_position() == primary.last_seq()
    finally:
        second.close()


# -- snapshots ----------------------------------------------------------------------


def test_a_snapshot_holds_every_replicated_row_and_its_seq(primary: SQLiteStore) -> None:
    ids = populate(primary)
    snapshot = primary.snapshot()
    assert snapshot.seq == primary.last_seq()
    assert set(snapshot.tables) == set(REPLICATED_TABLES)
    logins = [row["login"] for row in snapshot.tables["accounts"]]
    assert logins == ["alice", "Bob", "carol", "acme"]
    assert {row["id"] for row in snapshot.tables["repositories"]} == {ids["one"], ids["tools"]}
    assert snapshot.sequences["accounts"] == 5  # dave, deleted, had id 5


def test_load_snapshot_then_follow_incrementally(primary: SQLiteStore, replica: SQLiteStore) -> None:
    ids = populate(primary)
    # The replica had other data; the snapshot replaces it.
    stale = replica.create_user("stale")
    replica.create_repo(stale.id, "old", storage_id="old")
    replica.set_setting("node", "mine")
    snapshot = primary.snapshot()

    replica.load_snapshot(snapshot)

    assert state(replica) == state(primary)
    assert tables(replica) == snapshot.tables
    assert replica.replication_position() == replica.last_seq() == snapshot.seq
    assert replica.changes_since(0) == []  # loading is not a change of its own
    assert replica.oldest_seq() == 0
    assert replica.get_setting("node") == "mine"
    primary.set_collaborator(ids["tools"], ids["carol"], Permission.ADMIN)
    alice = primary.get_account_by_id(ids["alice"])
    assert alice is not None
    primary.save_account(dataclasses.replace(alice, suspended=False))
    primary.delete_account(ids["bob"])
    ship(primary, replica, sizes=(2, 1))
    assert state(replica) == state(primary)
    assert replica.changes_since(0) == primary.changes_since(snapshot.seq)


def test_a_loaded_snapshot_does_not_reuse_ids_of_deleted_rows(primary: SQLiteStore, replica: SQLiteStore) -> None:
    primary.create_user("alice")
    doomed = primary.create_user("doomed")
    primary.delete_account(doomed.id)
    replica.load_snapshot(primary.snapshot())
    assert replica.create_user("new").id == doomed.id + 1

    # Without the counters (a snapshot from elsewhere), ids continue above the rows present.
    other = primary.snapshot()
    replica.load_snapshot(Snapshot(seq=other.seq, tables=other.tables))
    assert replica.create_user("newer").id == doomed.id


def test_a_snapshot_is_read_in_one_transaction(primary: SQLiteStore) -> None:
    primary.create_user("alice")
    calls = 0
    real = primary._last_seq

    def write_meanwhile(conn: sqlite3.Connection) -> int:
        # Another writer commits between reading the seq and reading the rows.
        nonlocal calls
        calls += 1
        seq = real(conn)
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(primary.create_user(f"late{calls}").id))
        thread.start()
        thread.join()
        assert done
        return seq

    primary._last_seq = write_meanwhile  # type: ignore[method-assign]
    snapshot = primary.snapshot()
    del primary._last_seq
    assert [row["login"] for row in snapshot.tables["accounts"]] == ["alice"]
    assert snapshot.seq == 1
    assert primary.last_seq() == 2


def test_load_snapshot_refuses_bad_snapshots_and_changes_nothing(primary: SQLiteStore, replica: SQLiteStore) -> None:
    populate(primary)
    replica.create_user("keep")
    before = tables(replica)
    good = primary.snapshot()
    token_rows = good.tables["tokens"]
    for bad in (
        Snapshot(seq=good.seq, tables={**good.tables, "settings": []}),
        Snapshot(seq=good.seq, tables={**good.tables, "accounts": [{"login": "no-id"}]}),
        Snapshot(seq=good.seq, tables={**good.tables, "tokens": [{**token_rows[0], "user_id": 999}]}),
        Snapshot(seq=good.seq, tables={**good.tables, "tokens": [*token_rows, token_rows[0]]}),
        Snapshot(seq=-1, tables=good.tables),
        Snapshot(seq=good.seq, tables=good.tables, sequences={"accounts": "many"}),  # type: ignore[dict-item]
    ):
        with pytest.raises(InvalidInput):
            replica.load_snapshot(bad)
        assert tables(replica) == before
        assert replica.replication_position() == 0
    # A failed load leaves capture on.
    replica.create_user("after")
    assert replica.last_seq() == 2


# -- events and trimming ------------------------------------------------------------


def test_events_are_ordered_with_the_rows_they_follow(primary: SQLiteStore, replica: SQLiteStore) -> None:
    alice = primary.create_user("alice")
    repo = primary.create_repo(alice.id, "r", storage_id="s1")
    event = primary.record_event("push", {"storage_id": "s1", "refs": ["refs/heads/main"]})
    primary.delete_repo(repo.id)
    assert event.seq == 3
    assert event.table == "event" and event.op is ChangeOp.EVENT
    assert event.key == {"kind": "push"}
    assert event.row == {"storage_id": "s1", "refs": ["refs/heads/main"]}
    assert [c.table for c in primary.changes_since(0)] == ["accounts", "repositories", "event", "repositories"]
    assert primary.changes_since(2, limit=1) == [event]
    ship(primary, replica, sizes=(1,))
    assert replica.changes_since(0) == primary.changes_since(0)
    with pytest.raises(InvalidInput):
        primary.record_event("push", {"bad": object()})
    with pytest.raises(InvalidInput):
        primary.record_event("", {})
    assert primary.last_seq() == 4


def test_trim_drops_old_changes_but_never_rewinds_the_seq(primary: SQLiteStore) -> None:
    for n in range(5):
        primary.create_user(f"u{n}")
    assert primary.trim(2) == 2
    assert primary.oldest_seq() == 3
    assert [c.seq for c in primary.changes_since(0)] == [3, 4, 5]
    assert primary.trim(2) == 0
    assert primary.trim(100) == 3
    assert primary.oldest_seq() == 0
    assert primary.last_seq() == 5
    assert primary.record_event("ping", {}).seq == 6
    with pytest.raises(InvalidInput):
        primary.changes_since(0, limit=0)
