"""The base of the SQLite store: connections, transactions, schema migration and checks."""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bulwark.clock import Clock, SystemClock
from bulwark.errors import InvalidInput, NotFound, StoreError
from bulwark.models import AccountType

# The migration steps are read from their module when a store opens, so replacing them there
# (as tests do) takes effect.
from bulwark.store.sqlite import schema
from bulwark.store.sqlite.rows import _Shape
from bulwark.store.sqlite.schema import REPLICATED_TABLES, _split_script
from bulwark.store.times import dump_time as _dump_time

BUSY_TIMEOUT_SECONDS = 10.0


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


class _Base:
    """Connections, transactions, the schema and the checks that the domain mixins build on."""

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
        known = len(schema.MIGRATIONS)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > known:
                    raise StoreError(
                        f"metadata database {self._path} has schema version {version}, but "
                        f"this Bulwark knows versions up to {known} only; upgrade Bulwark"
                    )
                for step in schema.MIGRATIONS[version:]:
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
