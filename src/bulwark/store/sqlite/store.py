"""The SQLite store: the base and the mixin of each domain, combined."""

from __future__ import annotations

from bulwark.store.base import Store
from bulwark.store.changes import ChangeLog
from bulwark.store.sqlite.accounts import _Accounts
from bulwark.store.sqlite.keys import _KeysAndSettings
from bulwark.store.sqlite.replication import _Replication
from bulwark.store.sqlite.repos import _Repositories


class SQLiteStore(_Accounts, _Repositories, _KeysAndSettings, _Replication, Store, ChangeLog):
    """Bulwark metadata in one SQLite database file, with its change log."""
