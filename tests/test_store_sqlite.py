"""The SQLite store: the store contract, plus what only SQLite has (schema
migrations, WAL, per-thread connections, writers in several threads and processes)."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bulwark.errors import AlreadyExists, BulwarkError, StoreError
from bulwark.models import Permission, Scope, Visibility
from bulwark.store.sqlite import MIGRATIONS, SQLiteStore, schema
from bulwark.webhooks.store_sqlite import SQLiteHooks
from tests.support.helpers import FakeClock, run_in_threads
from tests.support.store_contract import StoreContract, fingerprint

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "meta.db"


@pytest.fixture
def store(db_path: pathlib.Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    yield s
    s.close()


class TestSQLiteStore(StoreContract):
    pass


@contextlib.contextmanager
def raw(path: pathlib.Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the database file, to inspect it from outside the store."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


# -- opening, schema and migrations --------------------------------------------------


def test_wal_mode_is_on(store: SQLiteStore, db_path: pathlib.Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_every_connection_enforces_foreign_keys_and_waits_when_busy(store: SQLiteStore) -> None:
    def pragmas(_: int) -> tuple[int, int]:
        conn = store._connection()
        return (
            conn.execute("PRAGMA foreign_keys").fetchone()[0],
            conn.execute("PRAGMA busy_timeout").fetchone()[0],
        )

    results, errors = run_in_threads(3, pragmas)
    assert errors == []
    assert results == [(1, 10_000)] * 3


def test_threads_get_their_own_connection(store: SQLiteStore) -> None:
    results, errors = run_in_threads(3, lambda _: store._connection())
    assert errors == []
    assert len({id(conn) for conn in results}) == 3
    assert store._connection() is store._connection()


def test_migrations_are_applied_and_recorded(store: SQLiteStore, db_path: pathlib.Path) -> None:
    assert store.schema_version() == len(MIGRATIONS) >= 1
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "tokens", "memberships", "repositories", "collaborators", "settings"} <= tables


def test_reopening_keeps_data_and_does_not_migrate_again(db_path: pathlib.Path) -> None:
    first = SQLiteStore(db_path)
    owner = first.create_user("Alice", password_hash="h")
    org = first.create_org("acme", owner_id=owner.id)
    repo = first.create_repo(org.id, "site", storage_id="s1", visibility=Visibility.PRIVATE)
    first.set_collaborator(repo.id, owner.id, Permission.ADMIN)
    first.set_setting("epoch", "3")
    first.close()

    # Re-running the first migration would fail on its CREATE TABLE statements.
    second = SQLiteStore(db_path)
    try:
        assert second.schema_version() == len(MIGRATIONS)
        assert second.get_account("alice") == owner
        assert second.get_password_hash(owner.id) == "h"
        assert second.get_membership(org.id, owner.id) is not None
        assert second.get_repo(org.id, "SITE") == repo
        assert second.get_collaborator(repo.id, owner.id) is not None
        assert second.get_setting("epoch") == "3"
    finally:
        second.close()


def test_only_new_migrations_run_on_an_existing_database(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SQLiteStore(db_path).close()
    extra = "CREATE TABLE extra (x INTEGER);\nINSERT INTO extra (x) VALUES (1);"
    monkeypatch.setattr(schema, "MIGRATIONS", [*MIGRATIONS, extra])
    for _ in range(2):
        s = SQLiteStore(db_path)
        assert s.schema_version() == len(MIGRATIONS) + 1
        s.close()
    with raw(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM extra").fetchone()[0] == 1


def test_the_migration_that_forgets_superseded_password_hashes_cleans_an_existing_log(db_path: pathlib.Path) -> None:
    with raw(db_path) as conn:  # the schema before the fix (a store cannot open it: tables are missing)
        for version, step in enumerate(MIGRATIONS[:2]):
            conn.executescript(step)
            conn.execute(f"PRAGMA user_version = {version + 1}")
    with raw(db_path) as conn:  # what that schema's store wrote for a password change
        conn.execute(
            "INSERT INTO accounts (login, type, password_hash, created_at, updated_at)"
            " VALUES ('bob', 'User', 'old-hash', '2030-01-01', '2030-01-01')"
        )
        conn.execute("UPDATE accounts SET password_hash = 'new-hash' WHERE login = 'bob'")
        assert conn.execute("SELECT count(*) FROM changes WHERE row_json LIKE '%old-hash%'").fetchone()[0] == 1
    store = SQLiteStore(db_path)
    try:
        rows = [c.row for c in store.changes_since(0) if c.row is not None]
        assert [r.get("password_hash") for r in rows] == [None, "new-hash"]
        bob = store.get_account("bob")
        assert bob is not None and store.get_password_hash(bob.id) == "new-hash"
    finally:
        store.close()


def test_a_database_from_before_ssh_keys_gets_their_tables(db_path: pathlib.Path) -> None:
    with raw(db_path) as conn:
        for version, step in enumerate(MIGRATIONS[:5]):
            conn.executescript(step)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        now = "2030-01-02T03:04:05.000000+00:00"
        conn.execute("INSERT INTO accounts (login, type, created_at, updated_at) VALUES ('bob', 'User', ?, ?)",
                     (now, now))
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        bob = store.get_account("bob")
        assert bob is not None
        key = store.create_ssh_key(fingerprint=fingerprint("bob"), algorithm="ssh-ed25519", key="k", title="t",
                                   user_id=bob.id)
        assert store.list_ssh_keys(user_id=bob.id) == [key]
        assert store.add_ssh_host_key("ssh-ed25519", "pem").private_key == "pem"
    finally:
        store.close()


def test_repositories_from_before_announced_refs_are_unknown_until_read(db_path: pathlib.Path) -> None:
    # Their refs were never noted as announced, so the node reads them first and says nothing.
    now = "2030-01-02T03:04:05.000000+00:00"
    with raw(db_path) as conn:
        for version, step in enumerate(MIGRATIONS[:7]):
            conn.executescript(step)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("INSERT INTO accounts (login, type, created_at, updated_at) VALUES ('ann', 'User', ?, ?)",
                     (now, now))
        conn.execute("INSERT INTO repositories (owner_id, name, storage_id, visibility, default_branch, created_at,"
                     " updated_at) SELECT id, 'old', 'old1', 'public', 'main', ?, ? FROM accounts", (now, now))
    store = SQLiteStore(db_path)
    hooks = SQLiteHooks(store)
    try:
        ann = store.get_account("ann")
        old = store.get_repo_by_storage_id("old1")
        assert ann is not None and old is not None
        new = store.create_repo(ann.id, "new", storage_id="new1")
        assert hooks.announced_refs(old.id) is None
        assert hooks.announced_refs(new.id) == {}
        hooks.adopt_refs(old.id, {"refs/heads/main": "a" * 40})
        hooks.note_refs(new.id, [("0" * 40, "b" * 40, "refs/heads/main")])
        assert hooks.announced_refs(old.id) == {"refs/heads/main": "a" * 40}
        # A move claimed against a stale reading loses to the one recorded since.
        assert not hooks.claim_ref(new.id, "refs/heads/main", None, "c" * 40)
        assert hooks.claim_ref(new.id, "refs/heads/main", "b" * 40, None)
        assert hooks.announced_refs(new.id) == {}
    finally:
        store.close()


def test_a_failing_migration_changes_nothing(db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SQLiteStore(db_path).close()
    steps = [*MIGRATIONS, "CREATE TABLE extra (x INTEGER);", "CREATE TABLE broken (x INTEGER REFERENCES;"]
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    with pytest.raises(StoreError, match="migrate"):
        SQLiteStore(db_path)
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0


def test_a_fresh_database_is_migrated_in_one_transaction(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", [*MIGRATIONS, "SELECT * FROM no_such_table;"])
    with pytest.raises(StoreError):
        SQLiteStore(db_path)
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_a_database_from_a_newer_bulwark_is_refused(db_path: pathlib.Path) -> None:
    SQLiteStore(db_path).close()
    newer = len(MIGRATIONS) + 5
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(StoreError, match=f"schema version {newer}.*upgrade Bulwark"):
        SQLiteStore(db_path)


def test_an_unopenable_path_is_a_store_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(tmp_path / "missing-dir" / "meta.db")


def test_several_stores_opening_a_fresh_database_at_once(db_path: pathlib.Path) -> None:
    def open_and_close(_: int) -> int:
        s = SQLiteStore(db_path)
        try:
            return s.schema_version()
        finally:
            s.close()

    results, errors = run_in_threads(6, open_and_close)
    assert errors == []
    assert results == [len(MIGRATIONS)] * 6


# -- lifecycle -----------------------------------------------------------------------


def test_close_closes_the_connections_of_every_thread(store: SQLiteStore, db_path: pathlib.Path) -> None:
    release = threading.Event()
    used = threading.Event()

    def worker() -> None:
        store.create_user("from-worker")
        used.set()
        release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert used.wait(10)
        store.create_user("from-main")
        assert db_path.with_name("meta.db-wal").exists()
        store.close()
        # SQLite removes the WAL file when the last connection to the database closes.
        assert not db_path.with_name("meta.db-wal").exists()
    finally:
        release.set()
        t.join(10)


def test_the_store_cannot_be_used_after_close(store: SQLiteStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_account("anyone")
    with pytest.raises(StoreError, match="closed"):
        store.create_user("anyone")
    store.close()


def test_connections_of_finished_threads_are_released(store: SQLiteStore) -> None:
    for i in range(5):
        t = threading.Thread(target=store.create_user, args=(f"user{i}",))
        t.start()
        t.join(10)
    # Each new connection closes those of threads that have ended: the main
    # thread's and the last worker's remain.
    assert len(store._connections) <= 2


# -- transactions and concurrency ----------------------------------------------------


def test_delete_account_is_all_or_nothing(store: SQLiteStore, db_path: pathlib.Path) -> None:
    owner = store.create_user("owner")
    helper = store.create_user("helper")
    repo = store.create_repo(owner.id, "r", storage_id="s")
    store.set_collaborator(repo.id, helper.id, Permission.PUSH)
    store.create_token(owner.id, token_hash="h", token_prefix="p", scopes=())
    # Make the last step of the cascade fail.
    with raw(db_path) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON collaborators BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(StoreError, match="refused"):
        store.delete_account(owner.id)
    assert store.get_account_by_id(owner.id) == owner
    assert store.get_repo_by_id(repo.id) == repo
    assert store.get_token_by_hash("h") is not None
    assert store.list_collaborators(repo.id) != []


def test_a_failed_write_leaves_the_connection_usable(store: SQLiteStore) -> None:
    store.create_user("dup")
    with pytest.raises(AlreadyExists):
        store.create_user("DUP")
    assert not store._connection().in_transaction
    assert store.create_user("next").login == "next"


def test_the_fingerprint_lookup_uses_its_unique_index(store: SQLiteStore, db_path: pathlib.Path) -> None:
    with raw(db_path) as conn:
        unique = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(ssh_keys)")}
        plan = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM ssh_keys WHERE fingerprint = ?", (fingerprint("x"),)
        ))
    assert unique == {"ssh_keys_fingerprint": 1, "ssh_keys_user": 0, "ssh_keys_repo": 0}
    assert "USING INDEX ssh_keys_fingerprint" in plan


def test_writers_in_separate_stores_share_one_database(db_path: pathlib.Path) -> None:
    # Two store objects on one file stand in for two processes of one node.
    stores = [SQLiteStore(db_path), SQLiteStore(db_path)]
    try:

        def work(i: int) -> None:
            s = stores[i % 2]
            for n in range(10):
                s.create_user(f"u{i}-{n}")

        _, errors = run_in_threads(6, work)
        assert errors == []
        assert len(stores[0].list_accounts()) == 60
        _, errors = run_in_threads(2, lambda i: stores[i].create_user("both"))
        assert len(errors) == 1 and isinstance(errors[0], AlreadyExists)
    finally:
        for s in stores:
            s.close()


# -- times ---------------------------------------------------------------------------


def test_times_come_from_the_clock(db_path: pathlib.Path) -> None:
    start = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    clock = FakeClock(start)
    s = SQLiteStore(db_path, clock=clock)
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
    finally:
        s.close()


def test_times_are_stored_as_utc_text(store: SQLiteStore, db_path: pathlib.Path) -> None:
    user = store.create_user("stamp")
    expires = datetime(2030, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    store.create_token(user.id, token_hash="h", token_prefix="p", scopes=[Scope.USER, Scope.REPO], expires_at=expires)
    with raw(db_path) as conn:
        stored_expiry, scopes = conn.execute("SELECT expires_at, scopes FROM tokens").fetchone()
    assert stored_expiry == "2030-01-01T12:00:00.000000+00:00"
    assert scopes == "repo user"


def test_errors_belong_to_the_bulwark_hierarchy(store: SQLiteStore) -> None:
    store.create_user("x")
    with pytest.raises(BulwarkError):
        store.create_user("X")
