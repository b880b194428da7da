"""The schema of the metadata database: its migrations and the triggers that fill the change log."""

from __future__ import annotations

import sqlite3

from bulwark.errors import StoreError

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
