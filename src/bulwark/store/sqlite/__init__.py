"""The SQLite metadata store, for standalone nodes and SQLite-based HA.

One database file in WAL mode, so readers never block the single writer. The HTTP
layer calls the store from a thread pool, so every thread gets its own connection;
writes start with ``BEGIN IMMEDIATE`` so that concurrent writers (threads or
processes) queue on the write lock up front instead of failing when a read
transaction tries to upgrade.

Logins and repository names are compared with ``COLLATE NOCASE``, which folds
ASCII only; that is enough because :mod:`bulwark.names` admits ASCII names only.

Modules: schema, rows, base, a mixin per domain (accounts, repos, keys, replication), and store combining them.
"""

from bulwark.store.sqlite.base import BUSY_TIMEOUT_SECONDS
from bulwark.store.sqlite.schema import EVENT_TABLE, MIGRATIONS, REPLICATED_TABLES
from bulwark.store.sqlite.store import SQLiteStore

__all__ = ["BUSY_TIMEOUT_SECONDS", "EVENT_TABLE", "MIGRATIONS", "REPLICATED_TABLES", "SQLiteStore"]
