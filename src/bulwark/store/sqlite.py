"""The SQLite metadata store, for standalone nodes and SQLite-based HA.

One database file in WAL mode, so readers never block the single writer. The HTTP
layer calls the store from a thread pool, so every thread gets its own connection;
writes start with ``BEGIN IMMEDIATE`` so that concurrent writers (threads or
processes) queue on the write lock up front instead of failing when a read
transaction tries to upgrade.

Logins and repository names are compared with ``COLLATE NOCASE``, which folds
ASCII only; that is enough because :mod:`bulwark.names` admits ASCII names only.
"""

from __future__ import annotations

import contextlib
import enum
import json
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from bulwark.clock import Clock, SystemClock
from bulwark.errors import AlreadyExists, Conflict, InvalidInput, NotFound, StoreError
from bulwark.models import (
    Account,
    AccountType,
    Collaborator,
    HostKey,
    MaintenanceState,
    Membership,
    OrgRole,
    Permission,
    Repository,
    Scope,
    SshKey,
    Token,
    Visibility,
)
from bulwark.store.base import Store
from bulwark.store.changes import Change, ChangeLog, ChangeOp, Snapshot
from bulwark.store.times import dump_optional_time as _dump_optional_time
from bulwark.store.times import dump_time as _dump_time
from bulwark.store.times import load_optional_time, load_time

BUSY_TIMEOUT_SECONDS = 10.0

_E = TypeVar("_E", bound=enum.Enum)

# The replicated tables, parents before children: the order to insert a snapshot
# in (and, reversed, to delete one). Everything else is node-local.
REPLICATED_TABLES = (
    "accounts",
    "repositories",
    "tokens",
    "memberships",
    "collaborators",
    "ssh_keys",
    "ssh_host_keys",
    "hooks",
    "hook_deliveries",
    "hook_attempts",
    "hook_refs",
    "hook_refs_unknown",
)
EVENT_TABLE = "event"

# The current time as stored in the change log (UTC, ISO 8601, milliseconds).
_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"


def _capture_triggers(table: str, key: str, columns: str) -> str:
    """Triggers that log every row change of ``table`` to ``changes`` as it happens.

    ``key`` and ``columns`` are space-separated column names.

    Being part of the writing transaction, a change is logged exactly when the
    row change commits, and a rolled-back transaction takes its seqs with it, so
    the log has no gaps. Migration step 2 is generated from this function, so it
    must not change; a step that adds a column to a replicated table must drop and
    recreate that table's triggers (``json_object`` names every column).
    """

    def obj(ref: str, names: str) -> str:
        return "json_object(" + ", ".join(f"'{name}', {ref}.{name}" for name in names.split()) + ")"

    # Rows written on behalf of a primary or a snapshot are logged by their writer.
    when = "WHEN NOT EXISTS (SELECT 1 FROM replication_state WHERE capture_paused)"
    insert = "INSERT INTO changes (tbl, op, key_json, row_json, at)"
    key_moved = " OR ".join(f"OLD.{name} IS NOT NEW.{name}" for name in key.split())
    return f"""
    CREATE TRIGGER {table}_log_insert AFTER INSERT ON {table} {when} BEGIN
        {insert} VALUES ('{table}', 'upsert', {obj("NEW", key)}, {obj("NEW", columns)}, {_NOW_SQL});
    END;
    CREATE TRIGGER {table}_log_update AFTER UPDATE ON {table} {when} BEGIN
        {insert} SELECT '{table}', 'delete', {obj("OLD", key)}, NULL, {_NOW_SQL} WHERE {key_moved};
        {insert} VALUES ('{table}', 'upsert', {obj("NEW", key)}, {obj("NEW", columns)}, {_NOW_SQL});
    END;
    CREATE TRIGGER {table}_log_delete AFTER DELETE ON {table} {when} BEGIN
        {insert} VALUES ('{table}', 'delete', {obj("OLD", key)}, NULL, {_NOW_SQL});
    END;
    """


# The schema, one step per version: step N takes a database from version N to
# N + 1 (recorded in PRAGMA user_version). Steps are append-only; never edit one
# that has shipped. AUTOINCREMENT keeps ids of deleted records from being reused,
# so a stale id held elsewhere can never name a different account or repository.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE accounts (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        login         TEXT    NOT NULL COLLATE NOCASE UNIQUE,
        type          TEXT    NOT NULL CHECK (type IN ('User', 'Organization')),
        name          TEXT    NOT NULL DEFAULT '',
        email         TEXT    NOT NULL DEFAULT '',
        site_admin    INTEGER NOT NULL DEFAULT 0,
        suspended     INTEGER NOT NULL DEFAULT 0,
        password_hash TEXT,
        created_at    TEXT    NOT NULL,
        updated_at    TEXT    NOT NULL
    );

    CREATE TABLE tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id      INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        note         TEXT    NOT NULL DEFAULT '',
        token_hash   TEXT    NOT NULL UNIQUE,
        token_prefix TEXT    NOT NULL,
        scopes       TEXT    NOT NULL,
        created_at   TEXT    NOT NULL,
        expires_at   TEXT,
        last_used_at TEXT
    );
    CREATE INDEX tokens_user ON tokens (user_id);

    CREATE TABLE memberships (
        org_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        role    TEXT    NOT NULL,
        PRIMARY KEY (org_id, user_id)
    );
    CREATE INDEX memberships_user ON memberships (user_id);

    CREATE TABLE repositories (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        owner_id         INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        name             TEXT    NOT NULL COLLATE NOCASE,
        storage_id       TEXT    NOT NULL UNIQUE,
        visibility       TEXT    NOT NULL,
        description      TEXT    NOT NULL DEFAULT '',
        default_branch   TEXT    NOT NULL,
        allow_force_push INTEGER NOT NULL DEFAULT 1,
        created_at       TEXT    NOT NULL,
        updated_at       TEXT    NOT NULL,
        pushed_at        TEXT,
        UNIQUE (owner_id, name)
    );

    CREATE TABLE collaborators (
        repo_id    INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
        user_id    INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        permission INTEGER NOT NULL,
        PRIMARY KEY (repo_id, user_id)
    );
    CREATE INDEX collaborators_user ON collaborators (user_id);

    -- At most one row (id = 1); no row means maintenance was never set.
    CREATE TABLE maintenance (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        enabled INTEGER NOT NULL,
        message TEXT    NOT NULL,
        since   TEXT
    );

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # The change log that replicas follow (node-local itself). ``position`` is the
    # seq of the last change applied from a primary; ``capture_paused`` is set only
    # inside a transaction that writes rows which came from elsewhere.
    """
    CREATE TABLE changes (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        tbl      TEXT    NOT NULL,
        op       TEXT    NOT NULL CHECK (op IN ('upsert', 'delete', 'event')),
        key_json TEXT    NOT NULL,
        row_json TEXT,
        at       TEXT    NOT NULL
    );

    CREATE TABLE replication_state (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        position       INTEGER NOT NULL,
        capture_paused INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO replication_state (id, position) VALUES (1, 0);
    """
    + _capture_triggers(
        "accounts",
        "id",
        "id login type name email site_admin suspended password_hash created_at updated_at",
    )
    + _capture_triggers(
        "tokens",
        "id",
        "id user_id note token_hash token_prefix scopes created_at expires_at last_used_at",
    )
    + _capture_triggers("memberships", "org_id user_id", "org_id user_id role")
    + _capture_triggers(
        "repositories",
        "id",
        "id owner_id name storage_id visibility description default_branch allow_force_push"
        " created_at updated_at pushed_at",
    )
    + _capture_triggers("collaborators", "repo_id user_id", "repo_id user_id permission"),
    # A password hash stays in the change log only in the newest change of its account: an older
    # one is superseded (by a new password, or by any later change, which carries the hash again),
    # and a replica that applies it without the column keeps its hash until the newer change
    # arrives. The log of existing databases is cleaned once here.
    """
    CREATE INDEX changes_by_account ON changes (json_extract(key_json, '$.id')) WHERE tbl = 'accounts';

    CREATE TRIGGER changes_forget_superseded_passwords AFTER INSERT ON changes
    WHEN NEW.tbl = 'accounts' BEGIN
        UPDATE changes SET row_json = json_remove(row_json, '$.password_hash')
        WHERE tbl = 'accounts' AND json_extract(key_json, '$.id') = json_extract(NEW.key_json, '$.id')
            AND seq < NEW.seq AND json_type(row_json, '$.password_hash') = 'text';
    END;

    UPDATE changes SET row_json = json_remove(row_json, '$.password_hash')
    WHERE tbl = 'accounts' AND json_type(row_json, '$.password_hash') = 'text'
        AND EXISTS (
            SELECT 1 FROM changes AS later
            WHERE later.tbl = 'accounts' AND later.seq > changes.seq
                AND json_extract(later.key_json, '$.id') = json_extract(changes.key_json, '$.id')
        );
    """,
    # Whether a user shows their email address to everyone (GitHub's public email); the
    # accounts triggers name every column, so they are made again with the new one.
    """
    ALTER TABLE accounts ADD COLUMN email_public INTEGER NOT NULL DEFAULT 0;
    DROP TRIGGER accounts_log_insert;
    DROP TRIGGER accounts_log_update;
    DROP TRIGGER accounts_log_delete;
    """
    + _capture_triggers(
        "accounts",
        "id",
        "id login type name email site_admin suspended password_hash created_at updated_at email_public",
    ),
    # A token's status-page log-out, in its row so that it replicates with it (it was a node-local
    # setting, lost on an HA peer); the settings it was kept in are moved over.
    """
    DROP TRIGGER tokens_log_insert;
    DROP TRIGGER tokens_log_update;
    DROP TRIGGER tokens_log_delete;
    ALTER TABLE tokens ADD COLUMN sessions_ended_at TEXT;
    UPDATE tokens SET sessions_ended_at = (
        SELECT strftime('%Y-%m-%dT%H:%M:%f', CAST(value AS INTEGER) / 1000.0, 'unixepoch') || '000+00:00'
        FROM settings WHERE key = 'status-sessions-ended:' || tokens.id
    ) WHERE EXISTS (SELECT 1 FROM settings WHERE key = 'status-sessions-ended:' || tokens.id);
    DELETE FROM settings WHERE key LIKE 'status-sessions-ended:%';
    """
    + _capture_triggers(
        "tokens",
        "id",
        "id user_id note token_hash token_prefix scopes created_at expires_at last_used_at sessions_ended_at",
    ),
    # SSH keys: a user's (user_id) or a repository's deploy key (repo_id), never both, going with
    # their account or repository; a fingerprint is unique across the site. Host keys are the
    # server's own, one per algorithm, the same on every node, so both tables replicate.
    """
    CREATE TABLE ssh_keys (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint  TEXT    NOT NULL,
        algorithm    TEXT    NOT NULL,
        public_key   TEXT    NOT NULL,
        title        TEXT    NOT NULL DEFAULT '',
        user_id      INTEGER REFERENCES accounts (id) ON DELETE CASCADE,
        repo_id      INTEGER REFERENCES repositories (id) ON DELETE CASCADE,
        read_only    INTEGER NOT NULL DEFAULT 0,
        created_at   TEXT    NOT NULL,
        last_used_at TEXT,
        CHECK ((user_id IS NULL) <> (repo_id IS NULL))
    );
    CREATE UNIQUE INDEX ssh_keys_fingerprint ON ssh_keys (fingerprint);
    CREATE INDEX ssh_keys_user ON ssh_keys (user_id);
    CREATE INDEX ssh_keys_repo ON ssh_keys (repo_id);

    CREATE TABLE ssh_host_keys (
        algorithm   TEXT PRIMARY KEY,
        private_key TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    """
    + _capture_triggers(
        "ssh_keys",
        "id",
        "id fingerprint algorithm public_key title user_id repo_id read_only created_at last_used_at",
    )
    + _capture_triggers("ssh_host_keys", "algorithm", "algorithm private_key created_at"),
    # Webhooks: the hooks, and the outbox of their deliveries with every attempt. Replicated, so
    # a promoted replica delivers what its primary had not (webhooks/deliverer.py).
    """
    CREATE TABLE hooks (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        repo_id      INTEGER REFERENCES repositories (id) ON DELETE CASCADE,
        org_id       INTEGER REFERENCES accounts (id) ON DELETE CASCADE,
        url          TEXT    NOT NULL,
        content_type TEXT    NOT NULL,
        secret       TEXT    NOT NULL DEFAULT '',
        insecure_ssl INTEGER NOT NULL DEFAULT 0,
        events       TEXT    NOT NULL,
        active       INTEGER NOT NULL DEFAULT 1,
        created_at   TEXT    NOT NULL,
        updated_at   TEXT    NOT NULL,
        CHECK ((repo_id IS NULL) <> (org_id IS NULL))
    );
    CREATE INDEX hooks_repo ON hooks (repo_id);
    CREATE INDEX hooks_org ON hooks (org_id);

    CREATE TABLE hook_deliveries (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        guid         TEXT    NOT NULL,
        hook_id      INTEGER NOT NULL REFERENCES hooks (id) ON DELETE CASCADE,
        repo_id      INTEGER,
        event        TEXT    NOT NULL,
        action       TEXT,
        payload      TEXT    NOT NULL,
        state        TEXT    NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        created_at   TEXT    NOT NULL,
        next_at      TEXT    NOT NULL,
        redelivery   INTEGER NOT NULL DEFAULT 0,
        delivered_at TEXT,
        status_code  INTEGER,
        duration_ms  INTEGER
    );
    CREATE INDEX hook_deliveries_hook ON hook_deliveries (hook_id, id);
    CREATE INDEX hook_deliveries_pending ON hook_deliveries (state, hook_id, repo_id, id);
    CREATE INDEX hook_deliveries_guid ON hook_deliveries (guid);

    CREATE TABLE hook_attempts (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id      INTEGER NOT NULL REFERENCES hook_deliveries (id) ON DELETE CASCADE,
        at               TEXT    NOT NULL,
        status_code      INTEGER,
        duration_ms      INTEGER NOT NULL,
        request_headers  TEXT    NOT NULL,
        response_headers TEXT    NOT NULL,
        response_body    TEXT    NOT NULL,
        error            TEXT    NOT NULL
    );
    CREATE INDEX hook_attempts_delivery ON hook_attempts (delivery_id, id);
    """
    + _capture_triggers(
        "hooks",
        "id",
        "id repo_id org_id url content_type secret insecure_ssl events active created_at updated_at",
    )
    + _capture_triggers(
        "hook_deliveries",
        "id",
        "id guid hook_id repo_id event action payload state attempts created_at next_at redelivery delivered_at"
        " status_code duration_ms",
    )
    + _capture_triggers(
        "hook_attempts",
        "id",
        "id delivery_id at status_code duration_ms request_headers response_headers response_body error",
    ),
    # The branches and tags each repository's webhooks were last told of, so a node that takes
    # writes can find ref moves git holds but no event announced (webhooks/catchup.py). The
    # repositories there before this step are marked unknown until their refs are first read.
    """
    CREATE TABLE hook_refs (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        repo_id INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
        ref     TEXT    NOT NULL,
        oid     TEXT    NOT NULL,
        UNIQUE (repo_id, ref)
    );
    CREATE TABLE hook_refs_unknown (
        repo_id INTEGER PRIMARY KEY REFERENCES repositories (id) ON DELETE CASCADE
    );
    INSERT INTO hook_refs_unknown (repo_id) SELECT id FROM repositories;
    """
    + _capture_triggers("hook_refs", "id", "id repo_id ref oid")
    + _capture_triggers("hook_refs_unknown", "repo_id", "repo_id"),
]

_ACCOUNT_COLUMNS = "id, login, type, name, email, email_public, site_admin, suspended, created_at, updated_at"
_TOKEN_COLUMNS = (
    "id, user_id, note, token_hash, token_prefix, scopes, created_at, expires_at, last_used_at, sessions_ended_at"
)
_REPO_COLUMNS = (
    "id, owner_id, name, storage_id, visibility, description, default_branch,"
    " allow_force_push, created_at, updated_at, pushed_at"
)
_SSH_KEY_COLUMNS = (
    "id, fingerprint, algorithm, public_key, title, user_id, repo_id, read_only, created_at, last_used_at"
)


# -- value conversion --------------------------------------------------------------


_load_time = load_time
_load_optional_time = load_optional_time


def _enum(kind: type[_E], value: object, field: str) -> _E:
    """``value`` as a member of ``kind``; a plain string from a caller is accepted."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(f"invalid {field} {value!r}", field=field) from None


def _dump_scopes(scopes: Iterable[Scope]) -> str:
    return " ".join(sorted(_enum(Scope, scope, "scope").value for scope in scopes))


def _load_scopes(text: str) -> frozenset[Scope]:
    return frozenset(Scope(part) for part in text.split())


def _account(row: sqlite3.Row) -> Account:
    return Account(
        id=row["id"],
        login=row["login"],
        type=AccountType(row["type"]),
        name=row["name"],
        email=row["email"],
        email_public=bool(row["email_public"]),
        site_admin=bool(row["site_admin"]),
        suspended=bool(row["suspended"]),
        created_at=_load_time(row["created_at"]),
        updated_at=_load_time(row["updated_at"]),
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        id=row["id"],
        user_id=row["user_id"],
        note=row["note"],
        token_hash=row["token_hash"],
        token_prefix=row["token_prefix"],
        scopes=_load_scopes(row["scopes"]),
        created_at=_load_time(row["created_at"]),
        expires_at=_load_optional_time(row["expires_at"]),
        last_used_at=_load_optional_time(row["last_used_at"]),
        sessions_ended_at=_load_optional_time(row["sessions_ended_at"]),
    )


def _membership(row: sqlite3.Row) -> Membership:
    return Membership(org_id=row["org_id"], user_id=row["user_id"], role=OrgRole(row["role"]))


def _repo(row: sqlite3.Row) -> Repository:
    return Repository(
        id=row["id"],
        owner_id=row["owner_id"],
        name=row["name"],
        storage_id=row["storage_id"],
        visibility=Visibility(row["visibility"]),
        description=row["description"],
        default_branch=row["default_branch"],
        allow_force_push=bool(row["allow_force_push"]),
        created_at=_load_time(row["created_at"]),
        updated_at=_load_time(row["updated_at"]),
        pushed_at=_load_optional_time(row["pushed_at"]),
    )


def _collaborator(row: sqlite3.Row) -> Collaborator:
    return Collaborator(repo_id=row["repo_id"], user_id=row["user_id"], permission=Permission(row["permission"]))


def _ssh_key(row: sqlite3.Row) -> SshKey:
    return SshKey(
        id=row["id"],
        fingerprint=row["fingerprint"],
        algorithm=row["algorithm"],
        key=row["public_key"],
        title=row["title"],
        user_id=row["user_id"],
        repo_id=row["repo_id"],
        read_only=bool(row["read_only"]),
        created_at=_load_time(row["created_at"]),
        last_used_at=_load_optional_time(row["last_used_at"]),
    )


def _host_key(row: sqlite3.Row) -> HostKey:
    return HostKey(
        algorithm=row["algorithm"], private_key=row["private_key"], created_at=_load_time(row["created_at"])
    )


def _page(limit: int | None, offset: int) -> tuple[int, int]:
    """LIMIT/OFFSET parameters; SQLite reads a negative LIMIT as "no limit"."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must not be negative, got {limit}", field="limit")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, got {offset}", field="offset")
    return (-1 if limit is None else limit), offset


def _is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return exc.sqlite_errorcode in (
        sqlite3.SQLITE_CONSTRAINT_UNIQUE,
        sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY,
    )


class _Shape(NamedTuple):
    """The columns of a replicated table and its primary key, read from the schema."""

    columns: tuple[str, ...]
    key: tuple[str, ...]
    autoincrement: bool


def _dump_json(value: Any, what: str) -> str:
    """Compact JSON, as ``json_object`` writes it."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None


def _change(row: sqlite3.Row) -> Change:
    return Change(
        seq=row["seq"],
        table=row["tbl"],
        op=ChangeOp(row["op"]),
        key=json.loads(row["key_json"]),
        row=None if row["row_json"] is None else json.loads(row["row_json"]),
        at=_load_time(row["at"]),
    )


def _checked_row(shape: _Shape, row: object, what: str) -> dict[str, Any]:
    """``row`` if it is an object of known columns with scalar values and a whole key."""
    if not isinstance(row, dict):
        raise InvalidInput(f"{what}: the row is not an object")
    unknown = sorted(set(row) - set(shape.columns))
    if unknown:
        raise InvalidInput(f"{what}: unknown columns {', '.join(map(str, unknown))}")
    missing = [name for name in shape.key if row.get(name) is None]
    if missing:
        raise InvalidInput(f"{what}: the key columns {', '.join(missing)} are missing")
    for name, value in row.items():
        if not (value is None or isinstance(value, str | int | float)):
            raise InvalidInput(f"{what}: column {name} is not a scalar")
    return row


def _split_script(script: str) -> list[str]:
    """The statements of a migration script.

    ``executescript`` would commit the migration transaction before running, so
    the statements are executed one by one inside it instead.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not pending.strip().startswith("--"):
        raise StoreError(f"incomplete statement in a migration: {pending.strip()!r}")
    return statements


# -- the store ---------------------------------------------------------------------


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """Turn on WAL, waiting out other connections doing the same.

    Changing the journal mode of a fresh file answers "database is locked" at once,
    without the busy handler, while another connection holds the file to change it.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteStore(Store, ChangeLog):
    """Bulwark metadata in one SQLite database file, with its change log."""

    def __init__(self, path: pathlib.Path | str, *, clock: Clock | None = None) -> None:
        self._path = str(path)
        self._clock: Clock = clock or SystemClock()
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every connection opened, with its thread, so close() can close them all
        # and connections of finished threads can be closed early.
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        try:
            conn = self._connection()
            self._migrate(conn)
            self._shapes = self._read_shapes(conn)
        except BaseException:
            self.close()
            raise

    # -- connections and transactions ------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: the module never opens transactions on its own;
            # every one is begun explicitly below. check_same_thread=False only so
            # that close() may close connections owned by other threads.
            conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open metadata database {self._path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Rows removed by REPLACE conflict resolution fire delete triggers only
            # with this on, and the change log must see them.
            conn.execute("PRAGMA recursive_triggers = ON")
            mode = _switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise StoreError(f"metadata database {self._path} cannot use WAL journal mode (got {mode})")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open metadata database {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the metadata store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._connect()
        with self._lock:
            if self._closed:
                conn.close()
                raise StoreError("the metadata store is closed")
            finished = [pair for pair in self._connections if not pair[0].is_alive()]
            for pair in finished:
                pair[1].close()
                self._connections.remove(pair)
            self._connections.append((threading.current_thread(), conn))
        self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for _, conn in connections:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction around several store calls of this thread: a change and the
        webhook deliveries it causes commit together or not at all."""
        with self._write():
            yield

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction for the store's companions on the same database (webhooks/store_sqlite.py)."""
        with self._write() as conn:
            yield conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._rows(sql, params)

    def now(self) -> str:
        return self._now()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back if the body raises. Inside another of this
        thread it joins that one, which commits or rolls back the whole."""
        conn = self._connection()
        if conn.in_transaction and getattr(self._local, "writing", False):
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._local.writing = True
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._local.writing = False
        except sqlite3.IntegrityError as exc:
            # Constraints the methods do not check themselves; a bug if it happens.
            raise StoreError(f"metadata store constraint failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"metadata store failure: {exc}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement in it sees the same snapshot."""
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"metadata store failure: {exc}") from exc

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read statement, which SQLite runs on a consistent snapshot."""
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"metadata store failure: {exc}") from exc

    def _row(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _now(self) -> str:
        return _dump_time(self._clock.now())

    # -- schema ----------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema up to date in one transaction.

        The version is read inside the write transaction, so two processes opening
        a fresh database at once apply the steps only once.
        """
        known = len(MIGRATIONS)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > known:
                    raise StoreError(
                        f"metadata database {self._path} has schema version {version}, but "
                        f"this Bulwark knows versions up to {known} only; upgrade Bulwark"
                    )
                for step in MIGRATIONS[version:]:
                    for statement in _split_script(step):
                        conn.execute(statement)
                if version < known:
                    conn.execute(f"PRAGMA user_version = {known}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot migrate metadata database {self._path}: {exc}") from exc

    @staticmethod
    def _read_shapes(conn: sqlite3.Connection) -> dict[str, _Shape]:
        shapes = {}
        for table in REPLICATED_TABLES:
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            key = sorted((row["pk"], row["name"]) for row in info if row["pk"])
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            shapes[table] = _Shape(
                columns=tuple(row["name"] for row in info),
                key=tuple(name for _, name in key),
                autoincrement="AUTOINCREMENT" in str(sql[0]).upper(),
            )
        return shapes

    def schema_version(self) -> int:
        """The schema version of the open database."""
        row = self._row("PRAGMA user_version")
        assert row is not None
        return int(row[0])

    # -- checks inside write transactions ----------------------------------------------

    @staticmethod
    def _require_account(conn: sqlite3.Connection, account_id: int, type: AccountType | None, role: str) -> None:
        """Raise unless ``account_id`` names an account (of ``type``, if given).

        Called inside a write transaction, which holds the write lock, so the answer
        stays true until commit.
        """
        row = conn.execute("SELECT type FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise NotFound(f"{role} {account_id} does not exist")
        if type is not None and row["type"] != type.value:
            article = "an organization" if type is AccountType.ORGANIZATION else "a user"
            raise InvalidInput(f"{role} {account_id} is not {article}")

    @staticmethod
    def _require_repo(conn: sqlite3.Connection, repo_id: int) -> None:
        if conn.execute("SELECT 1 FROM repositories WHERE id = ?", (repo_id,)).fetchone() is None:
            raise NotFound(f"repository {repo_id} does not exist")

    # -- accounts ----------------------------------------------------------------------

    def _insert_account(
        self,
        conn: sqlite3.Connection,
        login: str,
        type: AccountType,
        *,
        name: str,
        email: str,
        site_admin: bool = False,
        password_hash: str | None = None,
    ) -> int:
        now = self._now()
        try:
            cursor = conn.execute(
                "INSERT INTO accounts (login, type, name, email, site_admin, password_hash,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (login, type.value, name, email, int(site_admin), password_hash, now, now),
            )
        except sqlite3.IntegrityError as exc:
            if _is_unique_violation(exc):
                raise AlreadyExists(f"login {login!r} is already taken") from exc
            raise
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @staticmethod
    def _read_account(conn: sqlite3.Connection, account_id: int) -> Account:
        row = conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)).fetchone()
        assert row is not None
        return _account(row)

    def create_user(
        self,
        login: str,
        *,
        name: str = "",
        email: str = "",
        site_admin: bool = False,
        password_hash: str | None = None,
    ) -> Account:
        with self._write() as conn:
            user_id = self._insert_account(
                conn,
                login,
                AccountType.USER,
                name=name,
                email=email,
                site_admin=site_admin,
                password_hash=password_hash,
            )
            return self._read_account(conn, user_id)

    def create_org(self, login: str, *, owner_id: int, name: str = "", email: str = "") -> Account:
        with self._write() as conn:
            self._require_account(conn, owner_id, AccountType.USER, "owner")
            org_id = self._insert_account(conn, login, AccountType.ORGANIZATION, name=name, email=email)
            conn.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (?, ?, ?)",
                (org_id, owner_id, OrgRole.OWNER.value),
            )
            return self._read_account(conn, org_id)

    def get_account(self, login: str) -> Account | None:
        row = self._row(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE login = ?", (login,))
        return None if row is None else _account(row)

    def get_account_by_id(self, account_id: int) -> Account | None:
        row = self._row(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
        return None if row is None else _account(row)

    def list_accounts(
        self, type: AccountType | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Account]:
        page = _page(limit, offset)
        if type is None:
            rows = self._rows(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY id LIMIT ? OFFSET ?", page)
        else:
            rows = self._rows(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE type = ? ORDER BY id LIMIT ? OFFSET ?",
                (_enum(AccountType, type, "type").value, *page),
            )
        return [_account(row) for row in rows]

    def save_account(self, account: Account) -> Account:
        with self._write() as conn:
            try:
                cursor = conn.execute(
                    "UPDATE accounts SET login = ?, name = ?, email = ?, email_public = ?, site_admin = ?,"
                    " suspended = ?, updated_at = ? WHERE id = ?",
                    (
                        account.login,
                        account.name,
                        account.email,
                        int(account.email_public),
                        int(account.site_admin),
                        int(account.suspended),
                        self._now(),
                        account.id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise AlreadyExists(f"login {account.login!r} is already taken") from exc
                raise
            if cursor.rowcount == 0:
                raise NotFound(f"account {account.id} does not exist")
            return self._read_account(conn, account.id)

    def delete_account(self, account_id: int) -> list[Repository]:
        with self._write() as conn:
            repos = [
                _repo(row)
                for row in conn.execute(
                    f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? ORDER BY id",
                    (account_id,),
                )
            ]
            # ON DELETE CASCADE removes the tokens, SSH keys, memberships (on either side),
            # collaborations, repositories and their collaborators and deploy keys in this statement.
            cursor = conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            if cursor.rowcount == 0:
                raise NotFound(f"account {account_id} does not exist")
            return repos

    def get_password_hash(self, user_id: int) -> str | None:
        row = self._row(
            "SELECT password_hash FROM accounts WHERE id = ? AND type = ?",
            (user_id, AccountType.USER.value),
        )
        return None if row is None else row["password_hash"]

    def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        with self._write() as conn:
            self._require_account(conn, user_id, AccountType.USER, "user")
            conn.execute(
                "UPDATE accounts SET password_hash = ?, updated_at = ? WHERE id = ?",
                (password_hash, self._now(), user_id),
            )

    # -- tokens ------------------------------------------------------------------------

    def create_token(
        self,
        user_id: int,
        *,
        token_hash: str,
        token_prefix: str,
        scopes: Iterable[Scope],
        note: str = "",
        expires_at: datetime | None = None,
    ) -> Token:
        stored_scopes = _dump_scopes(scopes)
        stored_expiry = _dump_optional_time(expires_at)
        with self._write() as conn:
            self._require_account(conn, user_id, AccountType.USER, "user")
            try:
                cursor = conn.execute(
                    "INSERT INTO tokens (user_id, note, token_hash, token_prefix, scopes,"
                    " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        user_id,
                        note,
                        token_hash,
                        token_prefix,
                        stored_scopes,
                        self._now(),
                        stored_expiry,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise AlreadyExists("a token with this hash already exists") from exc
                raise
            row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _token(row)

    def get_token_by_hash(self, token_hash: str) -> Token | None:
        row = self._row(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return None if row is None else _token(row)

    def list_tokens(self, user_id: int) -> list[Token]:
        rows = self._rows(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_id = ? ORDER BY id", (user_id,))
        return [_token(row) for row in rows]

    def delete_token(self, token_id: int) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

    def touch_token(self, token_id: int, when: datetime) -> None:
        # Requests finish out of order, so keep the latest time rather than the last
        # written. A token deleted meanwhile is no error: the request was authorized.
        stamp = _dump_time(when)
        with self._write() as conn:
            conn.execute(
                "UPDATE tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                (stamp, token_id, stamp),
            )

    def end_token_sessions(self, token_id: int, when: datetime) -> None:
        stamp = _dump_time(when)
        with self._write() as conn:
            conn.execute(
                "UPDATE tokens SET sessions_ended_at = ? WHERE id = ?"
                " AND (sessions_ended_at IS NULL OR sessions_ended_at < ?)",
                (stamp, token_id, stamp),
            )

    # -- organization membership -------------------------------------------------------

    def set_membership(self, org_id: int, user_id: int, role: OrgRole) -> Membership:
        role = _enum(OrgRole, role, "role")
        with self._write() as conn:
            self._require_account(conn, org_id, AccountType.ORGANIZATION, "organization")
            self._require_account(conn, user_id, AccountType.USER, "user")
            conn.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (?, ?, ?)"
                " ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                (org_id, user_id, role.value),
            )
        return Membership(org_id=org_id, user_id=user_id, role=role)

    def remove_membership(self, org_id: int, user_id: int) -> bool:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM memberships WHERE org_id = ? AND user_id = ?", (org_id, user_id))
            return cursor.rowcount > 0

    def get_membership(self, org_id: int, user_id: int) -> Membership | None:
        row = self._row(
            "SELECT org_id, user_id, role FROM memberships WHERE org_id = ? AND user_id = ?",
            (org_id, user_id),
        )
        return None if row is None else _membership(row)

    def list_members(self, org_id: int, role: OrgRole | None = None) -> list[Membership]:
        if role is None:
            rows = self._rows(
                "SELECT org_id, user_id, role FROM memberships WHERE org_id = ? ORDER BY user_id",
                (org_id,),
            )
        else:
            rows = self._rows(
                "SELECT org_id, user_id, role FROM memberships WHERE org_id = ? AND role = ? ORDER BY user_id",
                (org_id, _enum(OrgRole, role, "role").value),
            )
        return [_membership(row) for row in rows]

    def list_memberships_of(self, user_id: int) -> list[Membership]:
        rows = self._rows(
            "SELECT org_id, user_id, role FROM memberships WHERE user_id = ? ORDER BY org_id",
            (user_id,),
        )
        return [_membership(row) for row in rows]

    # -- repositories ------------------------------------------------------------------

    @staticmethod
    def _repo_clash(exc: sqlite3.IntegrityError, name: str) -> Exception:
        """The error for a uniqueness violation on ``repositories``."""
        if "storage_id" in str(exc):
            return AlreadyExists("a repository with this storage id already exists")
        return AlreadyExists(f"repository {name!r} already exists for this owner")

    def create_repo(
        self,
        owner_id: int,
        name: str,
        *,
        storage_id: str,
        visibility: Visibility = Visibility.PUBLIC,
        description: str = "",
        default_branch: str = "main",
    ) -> Repository:
        with self._write() as conn:
            self._require_account(conn, owner_id, None, "owner")
            now = self._now()
            try:
                cursor = conn.execute(
                    "INSERT INTO repositories (owner_id, name, storage_id, visibility,"
                    " description, default_branch, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        owner_id,
                        name,
                        storage_id,
                        _enum(Visibility, visibility, "visibility").value,
                        description,
                        default_branch,
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise self._repo_clash(exc, name) from exc
                raise
            row = conn.execute(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _repo(row)

    def get_repo(self, owner_id: int, name: str) -> Repository | None:
        row = self._row(
            f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? AND name = ?",
            (owner_id, name),
        )
        return None if row is None else _repo(row)

    def get_repo_by_id(self, repo_id: int) -> Repository | None:
        row = self._row(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = ?", (repo_id,))
        return None if row is None else _repo(row)

    def get_repos(self, repo_ids: Sequence[int]) -> list[Repository]:
        found: dict[int, Repository] = {}
        unique = list(dict.fromkeys(repo_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._rows(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id IN ({','.join('?' * len(chunk))})",
                              tuple(chunk))
            found.update((repo.id, repo) for repo in map(_repo, rows))
        return [found[i] for i in repo_ids if i in found]

    def get_repo_by_storage_id(self, storage_id: str) -> Repository | None:
        row = self._row(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE storage_id = ?", (storage_id,))
        return None if row is None else _repo(row)

    def list_repos(
        self,
        owner_id: int | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        by_name: bool = False,
        after: str | None = None,
    ) -> list[Repository]:
        page = _page(limit, offset)
        if by_name and owner_id is None:
            raise InvalidInput("repositories are listed by name for one owner only")
        if after is not None and not by_name:
            raise InvalidInput("after is a name: it needs the list in name order")
        if owner_id is None:
            rows = self._rows(f"SELECT {_REPO_COLUMNS} FROM repositories ORDER BY id LIMIT ? OFFSET ?", page)
        elif by_name:
            # The name column is NOCASE (ASCII folding), as is its unique index, which serves the order
            # and the start after a name.
            rows = self._rows(
                f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? AND name > ?"
                " ORDER BY name LIMIT ? OFFSET ?",
                (owner_id, after or "", *page),
            )
        else:
            rows = self._rows(
                f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? ORDER BY id LIMIT ? OFFSET ?",
                (owner_id, *page),
            )
        return [_repo(row) for row in rows]

    def count_repos(self, owner_id: int) -> int:
        rows = self._rows("SELECT COUNT(*) FROM repositories WHERE owner_id = ?", (owner_id,))
        return int(rows[0][0])

    def save_repo(self, repo: Repository) -> Repository:
        pushed_at = _dump_optional_time(repo.pushed_at)
        with self._write() as conn:
            self._require_repo(conn, repo.id)
            self._require_account(conn, repo.owner_id, None, "owner")
            try:
                conn.execute(
                    "UPDATE repositories SET owner_id = ?, name = ?, visibility = ?,"
                    " description = ?, default_branch = ?, allow_force_push = ?,"
                    " pushed_at = ?, updated_at = ? WHERE id = ?",
                    (
                        repo.owner_id,
                        repo.name,
                        _enum(Visibility, repo.visibility, "visibility").value,
                        repo.description,
                        repo.default_branch,
                        int(repo.allow_force_push),
                        pushed_at,
                        self._now(),
                        repo.id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise self._repo_clash(exc, repo.name) from exc
                raise
            row = conn.execute(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = ?", (repo.id,)).fetchone()
            return _repo(row)

    def delete_repo(self, repo_id: int) -> bool:
        with self._write() as conn:
            # Collaborators and deploy keys go with the repository through ON DELETE CASCADE.
            return conn.execute("DELETE FROM repositories WHERE id = ?", (repo_id,)).rowcount > 0

    # -- collaborators -----------------------------------------------------------------

    def set_collaborator(self, repo_id: int, user_id: int, permission: Permission) -> Collaborator:
        permission = _enum(Permission, permission, "permission")
        with self._write() as conn:
            self._require_repo(conn, repo_id)
            self._require_account(conn, user_id, AccountType.USER, "user")
            conn.execute(
                "INSERT INTO collaborators (repo_id, user_id, permission) VALUES (?, ?, ?)"
                " ON CONFLICT (repo_id, user_id) DO UPDATE SET permission = excluded.permission",
                (repo_id, user_id, int(permission)),
            )
        return Collaborator(repo_id=repo_id, user_id=user_id, permission=permission)

    def remove_collaborator(self, repo_id: int, user_id: int) -> bool:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM collaborators WHERE repo_id = ? AND user_id = ?", (repo_id, user_id))
            return cursor.rowcount > 0

    def get_collaborator(self, repo_id: int, user_id: int) -> Collaborator | None:
        row = self._row(
            "SELECT repo_id, user_id, permission FROM collaborators WHERE repo_id = ? AND user_id = ?",
            (repo_id, user_id),
        )
        return None if row is None else _collaborator(row)

    def list_collaborators(self, repo_id: int) -> list[Collaborator]:
        rows = self._rows(
            "SELECT repo_id, user_id, permission FROM collaborators WHERE repo_id = ? ORDER BY user_id",
            (repo_id,),
        )
        return [_collaborator(row) for row in rows]

    def list_collaborations_of(self, user_id: int) -> list[Collaborator]:
        rows = self._rows(
            "SELECT repo_id, user_id, permission FROM collaborators WHERE user_id = ? ORDER BY repo_id",
            (user_id,),
        )
        return [_collaborator(row) for row in rows]

    # -- SSH keys ----------------------------------------------------------------------

    def create_ssh_key(
        self,
        *,
        fingerprint: str,
        algorithm: str,
        key: str,
        title: str,
        user_id: int | None = None,
        repo_id: int | None = None,
        read_only: bool = False,
    ) -> SshKey:
        if (user_id is None) == (repo_id is None):
            raise ValueError("an SSH key belongs to a user or to a repository: give exactly one of user_id, repo_id")
        with self._write() as conn:
            if user_id is not None:
                self._require_account(conn, user_id, AccountType.USER, "user")
                read_only = False
            else:
                assert repo_id is not None
                self._require_repo(conn, repo_id)
            try:
                cursor = conn.execute(
                    "INSERT INTO ssh_keys (fingerprint, algorithm, public_key, title, user_id, repo_id,"
                    " read_only, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (fingerprint, algorithm, key, title, user_id, repo_id, int(read_only), self._now()),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise AlreadyExists(f"the SSH key {fingerprint} is already in use") from exc
                raise
            row = conn.execute(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _ssh_key(row)

    def get_ssh_key(self, key_id: int) -> SshKey | None:
        row = self._row(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE id = ?", (key_id,))
        return None if row is None else _ssh_key(row)

    def get_ssh_key_by_fingerprint(self, fingerprint: str) -> SshKey | None:
        row = self._row(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE fingerprint = ?", (fingerprint,))
        return None if row is None else _ssh_key(row)

    def list_ssh_keys(self, *, user_id: int | None = None, repo_id: int | None = None) -> list[SshKey]:
        if (user_id is None) == (repo_id is None):
            raise ValueError("list the SSH keys of a user or of a repository: give exactly one of user_id, repo_id")
        column, owner = ("user_id", user_id) if user_id is not None else ("repo_id", repo_id)
        rows = self._rows(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE {column} = ? ORDER BY id", (owner,))
        return [_ssh_key(row) for row in rows]

    def delete_ssh_key(self, key_id: int) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM ssh_keys WHERE id = ?", (key_id,)).rowcount > 0

    def touch_ssh_key(self, key_id: int, when: datetime) -> None:
        # As for tokens: connections finish out of order, so keep the latest time, and a key
        # deleted meanwhile is no error.
        stamp = _dump_time(when)
        with self._write() as conn:
            conn.execute(
                "UPDATE ssh_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                (stamp, key_id, stamp),
            )

    # -- SSH host keys -----------------------------------------------------------------

    def get_ssh_host_keys(self) -> list[HostKey]:
        rows = self._rows("SELECT algorithm, private_key, created_at FROM ssh_host_keys ORDER BY algorithm")
        return [_host_key(row) for row in rows]

    def add_ssh_host_key(self, algorithm: str, private_key: str) -> HostKey:
        with self._write() as conn:
            # The first writer's key stays; a later one reads it back unchanged.
            conn.execute(
                "INSERT OR IGNORE INTO ssh_host_keys (algorithm, private_key, created_at) VALUES (?, ?, ?)",
                (algorithm, private_key, self._now()),
            )
            row = conn.execute(
                "SELECT algorithm, private_key, created_at FROM ssh_host_keys WHERE algorithm = ?", (algorithm,)
            ).fetchone()
            return _host_key(row)

    # -- node settings -----------------------------------------------------------------

    def get_maintenance(self) -> MaintenanceState:
        row = self._row("SELECT enabled, message, since FROM maintenance WHERE id = 1")
        if row is None:
            return MaintenanceState(enabled=False)
        return MaintenanceState(
            enabled=bool(row["enabled"]),
            message=row["message"],
            since=_load_optional_time(row["since"]),
        )

    def set_maintenance(self, state: MaintenanceState) -> None:
        since = _dump_optional_time(state.since)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO maintenance (id, enabled, message, since) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET enabled = excluded.enabled,"
                " message = excluded.message, since = excluded.since",
                (int(state.enabled), state.message, since),
            )

    def get_setting(self, key: str) -> str | None:
        row = self._row("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def set_setting(self, key: str, value: str | None) -> None:
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    # -- change log and replication ----------------------------------------------------

    @staticmethod
    def _last_seq(conn: sqlite3.Connection) -> int:
        # The AUTOINCREMENT counter survives trimming and is what a snapshot sets.
        row = conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0),"
            " coalesce((SELECT max(seq) FROM changes), 0))"
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _position(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT position FROM replication_state WHERE id = 1").fetchone()
        if row is None:
            raise StoreError("the replication state of the metadata database is missing")
        return int(row["position"])

    @staticmethod
    def _pause_capture(conn: sqlite3.Connection, paused: bool) -> None:
        # Only ever set inside a write transaction and cleared before it commits,
        # so no other transaction sees it set.
        conn.execute("UPDATE replication_state SET capture_paused = ? WHERE id = 1", (int(paused),))

    @staticmethod
    def _set_sequence(conn: sqlite3.Connection, table: str, value: int) -> None:
        """Make the next AUTOINCREMENT id of ``table`` be ``value + 1``."""
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))

    def last_seq(self) -> int:
        with self._read() as conn:
            return self._last_seq(conn)

    def oldest_seq(self) -> int:
        row = self._row("SELECT coalesce(min(seq), 0) FROM changes")
        assert row is not None
        return int(row[0])

    def changes_since(self, after: int, *, limit: int = 500) -> list[Change]:
        if limit < 1:
            raise InvalidInput(f"limit must be positive, got {limit}", field="limit")
        rows = self._rows(
            "SELECT seq, tbl, op, key_json, row_json, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [_change(row) for row in rows]

    def trim(self, keep_after: int) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM changes WHERE seq <= ?", (keep_after,)).rowcount

    def record_event(self, kind: str, payload: dict[str, Any]) -> Change:
        if not isinstance(kind, str) or not kind:
            raise InvalidInput("an event needs a kind", field="kind")
        if not isinstance(payload, dict):
            raise InvalidInput("an event's payload must be an object", field="payload")
        key_json = _dump_json({"kind": kind}, "the event kind")
        row_json = _dump_json(payload, "the event payload")
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO changes (tbl, op, key_json, row_json, at) VALUES (?, ?, ?, ?, {_NOW_SQL})",
                (EVENT_TABLE, ChangeOp.EVENT.value, key_json, row_json),
            )
            row = conn.execute(
                "SELECT seq, tbl, op, key_json, row_json, at FROM changes WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
            return _change(row)

    def snapshot(self) -> Snapshot:
        with self._read() as conn:
            seq = self._last_seq(conn)
            tables = {}
            for table in REPLICATED_TABLES:
                shape = self._shapes[table]
                rows = conn.execute(f"SELECT {', '.join(shape.columns)} FROM {table} ORDER BY {', '.join(shape.key)}")
                tables[table] = [dict(row) for row in rows]
            marks = conn.execute(
                f"SELECT name, seq FROM sqlite_sequence WHERE name IN ({', '.join('?' * len(REPLICATED_TABLES))})",
                REPLICATED_TABLES,
            )
            sequences = {row["name"]: int(row["seq"]) for row in marks}
        return Snapshot(seq=seq, tables=tables, sequences=sequences)

    def load_snapshot(self, snapshot: Snapshot) -> None:
        if not isinstance(snapshot.seq, int) or snapshot.seq < 0:
            raise InvalidInput(f"invalid snapshot seq {snapshot.seq!r}")
        unknown = sorted(set(snapshot.tables) - set(REPLICATED_TABLES))
        if unknown:
            raise InvalidInput(f"the snapshot has tables that are not replicated: {', '.join(unknown)}")
        if not all(isinstance(mark, int) and mark >= 0 for mark in snapshot.sequences.values()):
            raise InvalidInput("the snapshot's id counters must be non-negative integers")
        with self._write() as conn:
            self._pause_capture(conn, True)
            for table in reversed(REPLICATED_TABLES):
                conn.execute(f"DELETE FROM {table}")
            for table in REPLICATED_TABLES:
                shape = self._shapes[table]
                for row in snapshot.tables.get(table, []):
                    what = f"snapshot row of {table}"
                    checked = _checked_row(shape, row, what)
                    self._execute_row(
                        conn,
                        f"INSERT INTO {table} ({', '.join(checked)}) VALUES ({', '.join('?' * len(checked))})",
                        list(checked.values()),
                        what,
                    )
                if shape.autoincrement:
                    # Ids of rows deleted on the primary must not be handed out again
                    # after a failover, so continue above the primary's counter too.
                    highest = conn.execute(f"SELECT coalesce(max({shape.key[0]}), 0) FROM {table}").fetchone()[0]
                    self._set_sequence(conn, table, max(int(highest), snapshot.sequences.get(table, 0)))
            conn.execute("DELETE FROM changes")
            self._set_sequence(conn, "changes", snapshot.seq)
            conn.execute("UPDATE replication_state SET position = ? WHERE id = 1", (snapshot.seq,))
            self._pause_capture(conn, False)

    def replication_position(self) -> int:
        with self._read() as conn:
            return self._position(conn)

    def apply_changes(self, changes: list[Change]) -> int:
        with self._write() as conn:
            position = self._position(conn)
            if not changes:
                return position
            local = self._last_seq(conn)
            if local != position:
                # Its own writes took the seqs the primary's changes need.
                raise Conflict(
                    f"this node's change log reaches {local} but it has applied changes up to {position} only:"
                    " it has changes of its own; load a snapshot from the primary"
                )
            for expected, change in enumerate(changes, position + 1):
                if change.seq != expected:
                    raise Conflict(
                        f"changes must continue at seq {position + 1} without gaps or replays:"
                        f" expected {expected}, got {change.seq}"
                    )
            self._pause_capture(conn, True)
            for change in changes:
                self._apply_change(conn, change)
            conn.execute("UPDATE replication_state SET position = ? WHERE id = 1", (changes[-1].seq,))
            self._pause_capture(conn, False)
            return changes[-1].seq

    def _apply_change(self, conn: sqlite3.Connection, change: Change) -> None:
        """Write one change from a primary and copy it into the local log under its seq."""
        what = f"change {change.seq}"
        try:
            op = ChangeOp(change.op)
        except ValueError:
            raise InvalidInput(f"{what}: unknown operation {change.op!r}") from None
        if not isinstance(change.key, dict):
            raise InvalidInput(f"{what}: the key is not an object")
        if op is ChangeOp.EVENT:
            if change.table != EVENT_TABLE:
                raise InvalidInput(f"{what}: an event must have table {EVENT_TABLE!r}, not {change.table!r}")
        else:
            shape = self._shapes.get(change.table)
            if shape is None:
                raise InvalidInput(f"{what}: {change.table!r} is not a replicated table")
            what = f"{what} ({op.value} on {change.table})"
            if set(change.key) != set(shape.key):
                raise InvalidInput(f"{what}: the key must name exactly {', '.join(shape.key)}")
            key = _checked_row(shape, change.key, what)
            if op is ChangeOp.DELETE:
                # A row already gone was removed here by the cascade of its parent's delete.
                where = " AND ".join(f"{name} = ?" for name in shape.key)
                self._execute_row(conn, f"DELETE FROM {change.table} WHERE {where}", list(key.values()), what)
            else:
                row = _checked_row(shape, change.row, what)
                if any(row[name] != key[name] for name in shape.key):
                    raise InvalidInput(f"{what}: the row does not match its key")
                # An upsert, never REPLACE: replacing a row deletes it first, and the
                # delete would cascade to its children (an account's tokens, say).
                names = list(row)
                updates = [f"{name} = excluded.{name}" for name in names if name not in shape.key]
                action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
                sql = (
                    f"INSERT INTO {change.table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                    f" ON CONFLICT ({', '.join(shape.key)}) {action}"
                )
                self._execute_row(conn, sql, list(row.values()), what)
        if not isinstance(change.at, datetime):
            raise InvalidInput(f"{what}: invalid time {change.at!r}")
        conn.execute(
            "INSERT INTO changes (seq, tbl, op, key_json, row_json, at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                change.seq,
                change.table,
                op.value,
                _dump_json(change.key, f"{what}: the key"),
                None if change.row is None else _dump_json(change.row, f"{what}: the row"),
                _dump_time(change.at),
            ),
        )

    @staticmethod
    def _execute_row(conn: sqlite3.Connection, sql: str, params: list[Any], what: str) -> None:
        try:
            conn.execute(sql, params)
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
            raise InvalidInput(f"{what} cannot be applied: {exc}") from None
