"""Webhooks on SQLite: the hooks and the outbox of their deliveries, in the metadata database.

Deliveries are written inside the transaction of the change that causes them (see
``SQLiteStore.transaction``), so an acknowledged change always has its deliveries, and a
change rolled back takes them with it.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime

from bulwark.store.sqlite import SQLiteStore
from bulwark.store.times import dump_time, load_optional_time, load_time
from bulwark.webhooks.models import Attempt, ContentType, Delivery, DeliveryState, Hook, HookFigures

_HOOK_COLUMNS = "id, repo_id, org_id, url, content_type, secret, insecure_ssl, events, active, created_at, updated_at"
_DELIVERY_COLUMNS = (
    "id, guid, hook_id, repo_id, event, action, payload, state, attempts, created_at, next_at, redelivery,"
    " delivered_at, status_code, duration_ms"
)
_ATTEMPT_COLUMNS = (
    "id, delivery_id, at, status_code, duration_ms, request_headers, response_headers, response_body, error"
)


def _hook(row: sqlite3.Row) -> Hook:
    return Hook(
        id=row["id"],
        repo_id=row["repo_id"],
        org_id=row["org_id"],
        url=row["url"],
        content_type=ContentType(row["content_type"]),
        secret=row["secret"],
        insecure_ssl=bool(row["insecure_ssl"]),
        events=tuple(json.loads(row["events"])),
        active=bool(row["active"]),
        created_at=load_time(row["created_at"]),
        updated_at=load_time(row["updated_at"]),
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        guid=row["guid"],
        hook_id=row["hook_id"],
        repo_id=row["repo_id"],
        event=row["event"],
        action=row["action"],
        payload=row["payload"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        created_at=load_time(row["created_at"]),
        next_at=load_time(row["next_at"]),
        redelivery=bool(row["redelivery"]),
        delivered_at=load_optional_time(row["delivered_at"]),
        status_code=row["status_code"],
        duration_ms=row["duration_ms"],
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(
        id=row["id"],
        delivery_id=row["delivery_id"],
        at=load_time(row["at"]),
        status_code=row["status_code"],
        duration_ms=row["duration_ms"],
        request_headers=json.loads(row["request_headers"]),
        response_headers=json.loads(row["response_headers"]),
        response_body=row["response_body"],
        error=row["error"],
    )


class SQLiteHooks:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    # -- hooks -------------------------------------------------------------------------

    def create_hook(
        self,
        *,
        repo_id: int | None,
        org_id: int | None,
        url: str,
        content_type: ContentType,
        secret: str,
        insecure_ssl: bool,
        events: tuple[str, ...],
        active: bool,
    ) -> Hook:
        now = self.store.now()
        with self.store.writing() as conn:
            cursor = conn.execute(
                "INSERT INTO hooks (repo_id, org_id, url, content_type, secret, insecure_ssl, events, active,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (repo_id, org_id, url, content_type.value, secret, int(insecure_ssl), json.dumps(list(events)),
                 int(active), now, now),
            )
            row = conn.execute(f"SELECT {_HOOK_COLUMNS} FROM hooks WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _hook(row)

    def get_hook(self, hook_id: int) -> Hook | None:
        rows = self.store.rows(f"SELECT {_HOOK_COLUMNS} FROM hooks WHERE id = ?", (hook_id,))
        return _hook(rows[0]) if rows else None

    def list_hooks(self, *, repo_id: int | None = None, org_id: int | None = None) -> list[Hook]:
        if repo_id is not None:
            rows = self.store.rows(f"SELECT {_HOOK_COLUMNS} FROM hooks WHERE repo_id = ? ORDER BY id", (repo_id,))
        elif org_id is not None:
            rows = self.store.rows(f"SELECT {_HOOK_COLUMNS} FROM hooks WHERE org_id = ? ORDER BY id", (org_id,))
        else:
            rows = self.store.rows(f"SELECT {_HOOK_COLUMNS} FROM hooks ORDER BY id")
        return [_hook(row) for row in rows]

    def hooks_for(self, repo_id: int, owner_id: int) -> list[Hook]:
        """The repository's hooks and its owner's (an organization's hooks see all its repositories)."""
        rows = self.store.rows(
            f"SELECT {_HOOK_COLUMNS} FROM hooks WHERE repo_id = ? OR org_id = ? ORDER BY id", (repo_id, owner_id)
        )
        return [_hook(row) for row in rows]

    def save_hook(self, hook: Hook) -> Hook:
        with self.store.writing() as conn:
            conn.execute(
                "UPDATE hooks SET url = ?, content_type = ?, secret = ?, insecure_ssl = ?, events = ?, active = ?,"
                " updated_at = ? WHERE id = ?",
                (hook.url, hook.content_type.value, hook.secret, int(hook.insecure_ssl),
                 json.dumps(list(hook.events)), int(hook.active), self.store.now(), hook.id),
            )
            row = conn.execute(f"SELECT {_HOOK_COLUMNS} FROM hooks WHERE id = ?", (hook.id,)).fetchone()
            return _hook(row)

    def delete_hook(self, hook_id: int) -> bool:
        with self.store.writing() as conn:
            return conn.execute("DELETE FROM hooks WHERE id = ?", (hook_id,)).rowcount > 0

    # -- the outbox ----------------------------------------------------------------------

    def enqueue(
        self,
        hook_id: int,
        repo_id: int | None,
        event: str,
        action: str | None,
        payload: str,
        *,
        guid: str | None = None,
        redelivery: bool = False,
    ) -> Delivery | None:
        """Queue a delivery; None if the hook is gone (deleted since the event was read)."""
        now = self.store.now()
        with self.store.writing() as conn:
            # Not a failed insert: that would roll back the change the event belongs to.
            cursor = conn.execute(
                "INSERT INTO hook_deliveries (guid, hook_id, repo_id, event, action, payload, state, created_at,"
                " next_at, redelivery) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM hooks"
                " WHERE id = ?)",
                (guid or str(uuid.uuid4()), hook_id, repo_id, event, action, payload, DeliveryState.PENDING.value,
                 now, now, int(redelivery), hook_id),
            )
            if cursor.rowcount == 0:
                return None
            row = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
            return _delivery(row)

    def due(self, now: datetime, limit: int) -> list[Delivery]:
        """Pending deliveries to try now: per hook and repository only the oldest, so that
        one repository's events reach one hook in the order they happened."""
        rows = self.store.rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE id IN ("
            "  SELECT min(id) FROM hook_deliveries WHERE state = 'pending' GROUP BY hook_id, repo_id"
            ") AND next_at <= ? ORDER BY next_at, id LIMIT ?",
            (dump_time(now), limit),
        )
        return [_delivery(row) for row in rows]

    def next_due_at(self) -> datetime | None:
        rows = self.store.rows("SELECT min(next_at) FROM hook_deliveries WHERE state = 'pending'")
        return load_optional_time(rows[0][0]) if rows else None

    def record_attempt(
        self,
        delivery: Delivery,
        *,
        at: datetime,
        status_code: int | None,
        duration_ms: int,
        request_headers: dict[str, str],
        response_headers: dict[str, str],
        response_body: str,
        error: str,
        state: DeliveryState,
        next_at: datetime | None,
    ) -> None:
        with self.store.writing() as conn:
            if conn.execute("SELECT 1 FROM hook_deliveries WHERE id = ?", (delivery.id,)).fetchone() is None:
                return  # its hook was deleted meanwhile
            conn.execute(
                f"INSERT INTO hook_attempts ({_ATTEMPT_COLUMNS.removeprefix('id, ')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.id, dump_time(at), status_code, duration_ms, json.dumps(request_headers),
                 json.dumps(response_headers), response_body, error),
            )
            conn.execute(
                "UPDATE hook_deliveries SET state = ?, attempts = attempts + 1, next_at = ?, delivered_at = ?,"
                " status_code = ?, duration_ms = ? WHERE id = ?",
                (state.value, dump_time(next_at or at), dump_time(at), status_code, duration_ms, delivery.id),
            )
            if state is DeliveryState.DELIVERED and delivery.attempts > 0:
                # The receiver answers again after failing: what waits in back-off for it goes now,
                # not in an hour. (Only then: it reads every pending delivery of the hook.)
                conn.execute(
                    "UPDATE hook_deliveries SET next_at = ? WHERE hook_id = ? AND state = 'pending'"
                    " AND attempts > 0 AND next_at > ?",
                    (dump_time(at), delivery.hook_id, dump_time(at)),
                )

    def list_deliveries(self, hook_id: int, *, limit: int, before: int | None = None) -> list[Delivery]:
        """Newest first, as GitHub lists them; ``before`` is the cursor (a delivery id)."""
        rows = self.store.rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE hook_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (hook_id, before if before is not None else 2**62, limit),
        )
        return [_delivery(row) for row in rows]

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        rows = self.store.rows(f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE id = ?", (delivery_id,))
        return _delivery(rows[0]) if rows else None

    def attempts(self, delivery_id: int) -> list[Attempt]:
        rows = self.store.rows(
            f"SELECT {_ATTEMPT_COLUMNS} FROM hook_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)
        )
        return [_attempt(row) for row in rows]

    def last_attempt(self, hook_id: int) -> Attempt | None:
        rows = self.store.rows(
            f"SELECT {', '.join('a.' + c for c in _ATTEMPT_COLUMNS.split(', '))} FROM hook_attempts a"
            " JOIN hook_deliveries d ON d.id = a.delivery_id WHERE d.hook_id = ? ORDER BY a.id DESC LIMIT 1",
            (hook_id,),
        )
        return _attempt(rows[0]) if rows else None

    def figures(self) -> HookFigures:
        pending = self.store.rows("SELECT count(*), min(created_at) FROM hook_deliveries WHERE state = 'pending'")[0]
        attempts = self.store.rows(
            "SELECT count(*), coalesce(sum(status_code IS NULL OR status_code NOT BETWEEN 200 AND 299), 0)"
            " FROM hook_attempts"
        )[0]
        gave_up = self.store.rows("SELECT count(*) FROM hook_deliveries WHERE state = 'gave_up'")[0][0]
        # A hook fails while its latest attempt failed.
        failing = self.store.rows(
            "SELECT count(*) FROM (SELECT d.hook_id, max(a.id) AS last FROM hook_attempts a"
            " JOIN hook_deliveries d ON d.id = a.delivery_id GROUP BY d.hook_id) l"
            " JOIN hook_attempts a ON a.id = l.last"
            " WHERE a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299"
        )[0][0]
        return HookFigures(
            pending=pending[0],
            oldest_pending_at=load_optional_time(pending[1]),
            attempts=attempts[0],
            failed_attempts=attempts[1],
            gave_up=gave_up,
            failing_hooks=failing,
        )

    def trim(self, finished_before: datetime) -> int:
        """Forget finished deliveries older than ``finished_before``, with their attempts."""
        with self.store.writing() as conn:
            return conn.execute(
                "DELETE FROM hook_deliveries WHERE state != 'pending' AND delivered_at < ?",
                (dump_time(finished_before),),
            ).rowcount

    # -- the refs last announced -----------------------------------------------------------

    def note_refs(self, repo_id: int, updates: list[tuple[str, str, str]]) -> None:
        """Remember the ref updates (old, new, ref) just announced; a deleted ref is forgotten."""
        with self.store.writing() as conn:
            for _old, new, ref in updates:
                if set(new) == {"0"}:
                    conn.execute("DELETE FROM hook_refs WHERE repo_id = ? AND ref = ?", (repo_id, ref))
                else:
                    conn.execute(
                        "INSERT INTO hook_refs (repo_id, ref, oid) VALUES (?, ?, ?)"
                        " ON CONFLICT (repo_id, ref) DO UPDATE SET oid = excluded.oid WHERE oid != excluded.oid",
                        (repo_id, ref, new),
                    )

    def announced_refs(self, repo_id: int) -> dict[str, str] | None:
        """The refs last announced for a repository; None while they were never read (the
        repository is older than this record)."""
        if self.store.rows("SELECT 1 FROM hook_refs_unknown WHERE repo_id = ?", (repo_id,)):
            return None
        rows = self.store.rows("SELECT ref, oid FROM hook_refs WHERE repo_id = ?", (repo_id,))
        return {row["ref"]: row["oid"] for row in rows}

    def adopt_refs(self, repo_id: int, refs: dict[str, str]) -> None:
        """Take ``refs`` as announced, without events: the first reading of an older repository."""
        with self.store.writing() as conn:
            conn.execute("DELETE FROM hook_refs WHERE repo_id = ?", (repo_id,))
            conn.executemany(
                "INSERT INTO hook_refs (repo_id, ref, oid) VALUES (?, ?, ?)",
                [(repo_id, ref, oid) for ref, oid in sorted(refs.items())],
            )
            conn.execute("DELETE FROM hook_refs_unknown WHERE repo_id = ?", (repo_id,))

    def claim_ref(self, repo_id: int, ref: str, expected: str | None, new: str | None) -> bool:
        """Move one announced ref from ``expected`` to ``new`` (None: absent) if nobody moved it
        since it was read; whether it moved. A push recording at the same moment wins."""
        with self.store.writing() as conn:
            row = conn.execute("SELECT oid FROM hook_refs WHERE repo_id = ? AND ref = ?", (repo_id, ref)).fetchone()
            if (row["oid"] if row else None) != expected:
                return False
            self.note_refs(repo_id, [(expected or "", new or "0" * 40, ref)])
            return True
