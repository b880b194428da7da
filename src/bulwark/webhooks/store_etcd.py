"""Webhooks on etcd: the hooks, the outbox of their deliveries with every attempt, and the refs
last announced, in the cluster's metadata store (``store/etcd/``), which this follows: JSON
values, zero-padded ids, writes as one transaction whose compares say "nothing I relied on has
changed", started over on collision.

Key layout, under the store's prefix (``<hook>``, ``<delivery>``, ``<repo>``... are ids
zero-padded as in the store, so a range read returns them in id order)::

    webhooks/hooks/<hook>                           the hook as JSON
    webhooks/hooks-of/repo/<repo>/<hook>            (empty) a repository's hook
    webhooks/hooks-of/org/<org>/<hook>              (empty) an organization's hook
    webhooks/deliveries/<hook>/<delivery>           the delivery as JSON, with its payload
    webhooks/attempts/<hook>/<delivery>/<n>         its n-th attempt as JSON
    webhooks/pending/<hook>/<delivery>              a pending delivery: what ``due`` needs (its
                                                    repository, next_at, created_at, attempts)
    webhooks/finished/<hook>/<delivered_at>/<delivery>  a finished delivery, in the order ``trim``
                                                    forgets them: its attempt counts
    webhooks/stats/<hook>                           the hook's counters and its latest attempt
    webhooks/refs/<repo>/<ref>                      the object id last announced for the ref
    webhooks/refs-known/<repo>                      (empty) the repository's refs were read once
    seq/hooks, seq/hook-deliveries                  the last id handed out
    seq/hook-attempts                               the last attempt id reserved (in blocks)

Everything of a hook is under prefixes naming it, so ``delete_hook`` is a few prefix deletes in
one transaction however many deliveries it has. The price: a delivery known by its id alone
(``get_delivery``, ``attempts``) is looked for under every hook, in transactions of point reads.

``due``, ``next_due_at`` and ``figures`` read the pending index and the stats keys (one per hook:
its attempts, failed attempts, deliveries given up, and where its latest attempt is), never a
payload or an attempt. The stats change in the transactions that change what they count, and
``trim`` takes off what it forgets, so ``figures`` counts as SQLite does, with one difference:
when ``trim`` forgets the delivery of a hook's latest attempt, the hook has no latest attempt any
more (``last_attempt`` None, not failing), where SQLite falls back on the latest that remains,
which could only be of a delivery pending since before it (the deliverer gives up after a day,
trim forgets after 30).

Unlike SQLite, a repository's refs are unknown (``announced_refs`` None) until ``adopt_refs`` was
called for it once.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bulwark.errors import NotFound
from bulwark.etcd import KV, Compare, Op, b64, prefix_end
from bulwark.store.etcd import (
    EtcdStore,
    _corrupt,
    _decode,
    _doc,
    _dump_json,
    _flag,
    _int,
    _last_id,
    _optional_int,
    _optional_text,
    _pad,
    _still,
    _text,
)
from bulwark.store.times import dump_time, load_optional_time, load_time
from bulwark.webhooks.models import Attempt, ContentType, Delivery, DeliveryState, Hook, HookFigures

# Attempt ids a store reserves at a time: recording attempts on several hooks at once then never
# contends for one counter. Ids stay unique; a delivery's attempts are kept in order by number.
ATTEMPT_ID_BLOCK = 32

_NO_STATS: dict[str, Any] = {"attempts": 0, "failed": 0, "gave_up": 0, "last": None}


def _load_hook(doc: dict[str, Any]) -> Hook:
    events = doc["events"]
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ValueError("events must be a list of text")
    return Hook(
        id=_int(doc, "id"), repo_id=_optional_int(doc, "repo_id"), org_id=_optional_int(doc, "org_id"),
        url=_text(doc, "url"), content_type=ContentType(doc["content_type"]), secret=_text(doc, "secret"),
        insecure_ssl=_flag(doc, "insecure_ssl"), events=tuple(events), active=_flag(doc, "active"),
        created_at=load_time(_text(doc, "created_at")), updated_at=load_time(_text(doc, "updated_at")),
    )


def _load_delivery(doc: dict[str, Any]) -> Delivery:
    _int(doc, "failed")  # kept for trim, not shown
    return Delivery(
        id=_int(doc, "id"), guid=_text(doc, "guid"), hook_id=_int(doc, "hook_id"),
        repo_id=_optional_int(doc, "repo_id"), event=_text(doc, "event"), action=_optional_text(doc, "action"),
        payload=_text(doc, "payload"), state=DeliveryState(doc["state"]), attempts=_int(doc, "attempts"),
        created_at=load_time(_text(doc, "created_at")), next_at=load_time(_text(doc, "next_at")),
        redelivery=_flag(doc, "redelivery"), delivered_at=load_optional_time(_optional_text(doc, "delivered_at")),
        status_code=_optional_int(doc, "status_code"), duration_ms=_optional_int(doc, "duration_ms"),
    )


def _headers(doc: dict[str, Any], field: str) -> dict[str, str]:
    value = doc[field]
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{field} must be an object of text")
    return value


def _load_attempt(doc: dict[str, Any]) -> Attempt:
    return Attempt(
        id=_int(doc, "id"), delivery_id=_int(doc, "delivery_id"), at=load_time(_text(doc, "at")),
        status_code=_optional_int(doc, "status_code"), duration_ms=_int(doc, "duration_ms"),
        request_headers=_headers(doc, "request_headers"), response_headers=_headers(doc, "response_headers"),
        response_body=_text(doc, "response_body"), error=_text(doc, "error"),
    )


def _load_stats(doc: dict[str, Any]) -> dict[str, Any]:
    last = doc["last"]
    if last is not None:
        last = {"delivery": _int(last, "delivery"), "number": _int(last, "number"), "ok": _flag(last, "ok")}
    return {"attempts": _int(doc, "attempts"), "failed": _int(doc, "failed"), "gave_up": _int(doc, "gave_up"),
            "last": last}


def _load_counts(doc: dict[str, Any]) -> tuple[int, int, bool]:
    return _int(doc, "attempts"), _int(doc, "failed"), _flag(doc, "gave_up")


def _ids_at_end(kv: KV, count: int = 1) -> list[int]:
    """The ``count`` ids a key ends with."""
    try:
        return [int(part) for part in kv.key.split("/")[-count:]]
    except ValueError as exc:
        raise _corrupt(kv, exc) from None


def _oid(kv: KV) -> str:
    try:
        return kv.text
    except UnicodeDecodeError as exc:
        raise _corrupt(kv, exc) from None


@dataclass(frozen=True)
class _Pending:
    """An entry of the pending index. Times as stored: text order is time order."""

    hook_id: int
    delivery_id: int
    repo_id: int | None
    next_at: str
    created_at: str
    tries: int


def _pending_value(doc: dict[str, Any]) -> str:
    return _dump_json({"repo": doc["repo_id"], "next": doc["next_at"], "created": doc["created_at"],
                       "tries": doc["attempts"]})


class EtcdHooks:
    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        root = store.key("webhooks/")
        self._hooks, self._hooks_of = root + "hooks/", root + "hooks-of/"
        self._deliveries, self._attempts = root + "deliveries/", root + "attempts/"
        self._pending, self._finished, self._stats = root + "pending/", root + "finished/", root + "stats/"
        self._refs, self._known = root + "refs/", root + "refs-known/"
        self._ids_lock = threading.Lock()
        self._attempt_ids = (0, 0)  # the next attempt id of this store's block, and the block's end

    # -- keys and reads ----------------------------------------------------------------

    @staticmethod
    def _key(family: str, *parts: int | str) -> str:
        """``family`` and the parts, ids zero-padded: ``_key(deliveries, 1, 2)`` is ``.../<1>/<2>``;
        a last part "" makes a prefix."""
        return family + "/".join(part if isinstance(part, str) else _pad(part) for part in parts)

    def _owner_key(self, hook: Hook) -> str:
        if hook.repo_id is not None:
            return self._key(self._hooks_of, "repo", hook.repo_id, hook.id)
        return self._key(self._hooks_of, "org", hook.org_id or 0, hook.id)

    def _snapshot(self, *reads: Op) -> list[list[KV]]:
        """What each ``get`` finds, all at one revision."""
        return self.store.etcd.txn([], reads).reads

    def _read_many(self, keys: list[str]) -> list[KV | None]:
        step, found = self.store.max_txn_ops, []
        for start in range(0, len(keys), step):
            found += [kvs[0] if kvs else None for kvs in self._snapshot(*map(Op.get, keys[start : start + step]))]
        return found

    def _write_all(self, ops: list[Op]) -> None:
        """Writes of keys that each stand alone (refs): in one transaction when they fit in one."""
        step = self.store.max_txn_ops
        for start in range(0, len(ops), step):
            self.store.etcd.txn([], ops[start : start + step])

    def _hook_ids(self) -> list[int]:
        return [_ids_at_end(kv)[0] for kv in self.store.etcd.get_prefix(self._hooks, keys_only=True)]

    def _under_some_hook(self, read: Callable[[int], Op]) -> list[KV]:
        """What ``read(hook id)`` finds under the one hook that has it."""
        ids, step = self._hook_ids(), self.store.max_txn_ops
        for start in range(0, len(ids), step):
            for kvs in self._snapshot(*(read(hook_id) for hook_id in ids[start : start + step])):
                if kvs:
                    return kvs
        return []

    def _load_pending(self, kv: KV) -> _Pending:
        hook_id, delivery_id = _ids_at_end(kv, 2)

        def load(doc: dict[str, Any]) -> _Pending:
            for field in ("next", "created"):
                load_time(_text(doc, field))
            return _Pending(hook_id, delivery_id, _optional_int(doc, "repo"), doc["next"], doc["created"],
                            _int(doc, "tries"))

        return _decode(kv, load)

    def _hooks_by_id(self, ids: list[int]) -> list[Hook]:
        found = self._read_many([self._key(self._hooks, hook_id) for hook_id in sorted(set(ids))])
        return [_decode(kv, _load_hook) for kv in found if kv is not None]

    # -- hooks -------------------------------------------------------------------------

    def create_hook(self, *, repo_id: int | None, org_id: int | None, url: str, content_type: ContentType,
                    secret: str, insecure_ssl: bool, events: tuple[str, ...], active: bool) -> Hook:
        if (repo_id is None) == (org_id is None):
            raise ValueError("a hook belongs to a repository or to an organization: give exactly one")
        counter_key = self.store.key("seq/hooks")

        def attempt() -> Hook:
            (counter,) = self._read_many([counter_key])
            now = self.store.now()
            doc = {"id": _last_id(counter) + 1, "repo_id": repo_id, "org_id": org_id, "url": url,
                   "content_type": ContentType(content_type).value, "secret": secret,
                   "insecure_ssl": bool(insecure_ssl), "events": list(events), "active": bool(active),
                   "created_at": now, "updated_at": now}
            hook = _load_hook(doc)
            ops = [Op.put(counter_key, str(hook.id)), Op.put(self._key(self._hooks, hook.id), _dump_json(doc)),
                   Op.put(self._owner_key(hook), "")]
            self.store.commit([_still(counter_key, counter)], ops, "creating a hook")
            return hook

        return self.store.retry("creating a hook", attempt)

    def get_hook(self, hook_id: int) -> Hook | None:
        kv = self.store.etcd.get(self._key(self._hooks, hook_id))
        return None if kv is None else _decode(kv, _load_hook)

    def list_hooks(self, *, repo_id: int | None = None, org_id: int | None = None) -> list[Hook]:
        if repo_id is None and org_id is None:
            return [_decode(kv, _load_hook) for kv in self.store.etcd.get_prefix(self._hooks)]
        index = self._key(self._hooks_of, "repo", repo_id, "") if repo_id is not None else \
            self._key(self._hooks_of, "org", org_id or 0, "")
        return self._hooks_by_id([_ids_at_end(kv)[0] for kv in self.store.etcd.get_prefix(index, keys_only=True)])

    def hooks_for(self, repo_id: int, owner_id: int) -> list[Hook]:
        """The repository's hooks and its owner's (an organization's hooks see all its repositories)."""
        index = self._snapshot(Op.get(self._key(self._hooks_of, "repo", repo_id, ""), prefix=True),
                               Op.get(self._key(self._hooks_of, "org", owner_id, ""), prefix=True))
        return self._hooks_by_id([_ids_at_end(kv)[0] for kvs in index for kv in kvs])

    def save_hook(self, hook: Hook) -> Hook:
        key = self._key(self._hooks, hook.id)

        def attempt() -> Hook:
            kv = self.store.etcd.get(key)
            if kv is None:
                raise NotFound(f"hook {hook.id} does not exist")
            _decode(kv, _load_hook)
            doc = _doc(kv)
            doc.update(url=hook.url, content_type=ContentType(hook.content_type).value, secret=hook.secret,
                       insecure_ssl=bool(hook.insecure_ssl), events=list(hook.events), active=bool(hook.active),
                       updated_at=self.store.now())
            self.store.commit([Compare.unchanged(key, kv.mod_revision)], [Op.put(key, _dump_json(doc))],
                              f"saving hook {hook.id}")
            return _load_hook(doc)

        return self.store.retry(f"saving hook {hook.id}", attempt)

    def delete_hook(self, hook_id: int) -> bool:
        key = self._key(self._hooks, hook_id)

        def attempt() -> bool:
            kv = self.store.etcd.get(key)
            if kv is None:
                return False
            hook = _decode(kv, _load_hook)
            # Its deliveries, attempts and indexes by prefix: the same few requests for any number.
            families = (self._deliveries, self._attempts, self._pending, self._finished)
            self.store.commit(
                [Compare.unchanged(key, kv.mod_revision)],
                [Op.delete(key), Op.delete(self._owner_key(hook)), Op.delete(self._key(self._stats, hook_id)),
                 *(Op.delete(self._key(family, hook_id, ""), prefix=True) for family in families)],
                f"deleting hook {hook_id}",
            )
            return True

        return self.store.retry(f"deleting hook {hook_id}", attempt)

    # -- the outbox ----------------------------------------------------------------------

    def enqueue(self, hook_id: int, repo_id: int | None, event: str, action: str | None, payload: str, *,
                guid: str | None = None, redelivery: bool = False) -> Delivery | None:
        """Queue a delivery; None if the hook is gone (deleted since the event was read)."""
        hook_key, counter_key = self._key(self._hooks, hook_id), self.store.key("seq/hook-deliveries")
        guid = guid or str(uuid.uuid4())

        def attempt() -> Delivery | None:
            hook, counter = self._read_many([hook_key, counter_key])
            if hook is None:
                return None
            now = self.store.now()
            doc = {"id": _last_id(counter) + 1, "guid": guid, "hook_id": hook_id, "repo_id": repo_id,
                   "event": event, "action": action, "payload": payload, "state": DeliveryState.PENDING.value,
                   "attempts": 0, "failed": 0, "created_at": now, "next_at": now, "redelivery": bool(redelivery),
                   "delivered_at": None, "status_code": None, "duration_ms": None}
            delivery = _load_delivery(doc)
            ops = [Op.put(counter_key, str(delivery.id)),
                   Op.put(self._key(self._deliveries, hook_id, delivery.id), _dump_json(doc)),
                   Op.put(self._key(self._pending, hook_id, delivery.id), _pending_value(doc))]
            # The hook must still be there: after a delete_hook, no delivery may be left behind it.
            self.store.commit([Compare.present(hook_key), _still(counter_key, counter)], ops,
                              f"queueing a delivery to hook {hook_id}")
            return delivery

        return self.store.retry(f"queueing a delivery to hook {hook_id}", attempt)

    def due(self, now: datetime, limit: int) -> list[Delivery]:
        """Pending deliveries to try now: per hook and repository only the oldest, so that
        one repository's events reach one hook in the order they happened."""
        heads: dict[tuple[int, int | None], _Pending] = {}
        for kv in self.store.etcd.get_prefix(self._pending):
            entry = self._load_pending(kv)
            heads.setdefault((entry.hook_id, entry.repo_id), entry)  # key order: the oldest first
        cut = dump_time(now)
        chosen = sorted((e for e in heads.values() if e.next_at <= cut), key=lambda e: (e.next_at, e.delivery_id))
        chosen = chosen[: max(limit, 0)]
        found = self._read_many([self._key(self._deliveries, e.hook_id, e.delivery_id) for e in chosen])
        deliveries = [_decode(kv, _load_delivery) for kv in found if kv is not None]
        return [d for d in deliveries if d.state is DeliveryState.PENDING]  # not one finished since the index read

    def next_due_at(self) -> datetime | None:
        entries = [self._load_pending(kv) for kv in self.store.etcd.get_prefix(self._pending)]
        return load_optional_time(min((e.next_at for e in entries), default=None))

    def _next_attempt_id(self) -> int:
        with self._ids_lock:
            first, end = self._attempt_ids
            if first >= end:
                key = self.store.key("seq/hook-attempts")

                def reserve() -> int:
                    (counter,) = self._read_many([key])
                    start = _last_id(counter) + 1
                    self.store.commit([_still(key, counter)], [Op.put(key, str(start + ATTEMPT_ID_BLOCK - 1))],
                                      "reserving attempt ids")
                    return start

                first = self.store.retry("reserving attempt ids", reserve)
                end = first + ATTEMPT_ID_BLOCK
            self._attempt_ids = (first + 1, end)
            return first

    def record_attempt(self, delivery: Delivery, *, at: datetime, status_code: int | None, duration_ms: int,
                       request_headers: dict[str, str], response_headers: dict[str, str], response_body: str,
                       error: str, state: DeliveryState, next_at: datetime | None) -> None:
        hook_id, delivery_id = delivery.hook_id, delivery.id
        key, stats_key = self._key(self._deliveries, hook_id, delivery_id), self._key(self._stats, hook_id)
        stamp, state = dump_time(at), DeliveryState(state)
        ok = status_code is not None and 200 <= status_code < 300
        # The receiver answers again after failing: what waits in back-off for it goes now, not in
        # an hour. (Only then: it reads the hook's pending index.)
        release = state is DeliveryState.DELIVERED and delivery.attempts > 0
        attempt_id = self._next_attempt_id()
        what = f"recording an attempt of delivery {delivery_id}"

        def attempt() -> None:
            reads = [Op.get(key), Op.get(stats_key)]
            if release:
                reads.append(Op.get(self._key(self._pending, hook_id, ""), prefix=True))
            found, stats_kvs, *waiting = self._snapshot(*reads)
            if not found:
                return  # its hook was deleted meanwhile
            old, doc = _decode(found[0], _load_delivery), _doc(found[0])
            stats_kv = stats_kvs[0] if stats_kvs else None
            stats = dict(_NO_STATS) if stats_kv is None else _decode(stats_kv, _load_stats)
            number, failed = old.attempts + 1, doc["failed"] + (not ok)
            doc.update(state=state.value, attempts=number, failed=failed, next_at=dump_time(next_at or at),
                       delivered_at=stamp, status_code=status_code, duration_ms=duration_ms)
            stats.update(attempts=stats["attempts"] + 1, failed=stats["failed"] + (not ok),
                         gave_up=stats["gave_up"] + (state is DeliveryState.GAVE_UP)
                         - (old.state is DeliveryState.GAVE_UP),
                         last={"delivery": delivery_id, "number": number, "ok": ok})
            record = {"id": attempt_id, "delivery_id": delivery_id, "at": stamp, "status_code": status_code,
                      "duration_ms": duration_ms, "request_headers": request_headers,
                      "response_headers": response_headers, "response_body": response_body, "error": error}
            compares = [Compare.unchanged(key, found[0].mod_revision), _still(stats_key, stats_kv)]
            ops = [Op.put(key, _dump_json(doc)), Op.put(stats_key, _dump_json(stats)),
                   Op.put(self._key(self._attempts, hook_id, delivery_id, number), _dump_json(record))]
            was = None if old.delivered_at is None or old.state is DeliveryState.PENDING else \
                self._key(self._finished, hook_id, dump_time(old.delivered_at), delivery_id)
            now_key = None if state is DeliveryState.PENDING else self._key(self._finished, hook_id, stamp, delivery_id)
            if was is not None and was != now_key:
                ops.append(Op.delete(was))
            if now_key is None:
                ops.append(Op.put(self._key(self._pending, hook_id, delivery_id), _pending_value(doc)))
            else:
                counts = {"attempts": number, "failed": failed, "gave_up": state is DeliveryState.GAVE_UP}
                ops += [Op.delete(self._key(self._pending, hook_id, delivery_id)), Op.put(now_key, _dump_json(counts))]
            if waiting:
                entries = [self._load_pending(kv) for kv in waiting[0]]
                held = [e for e in entries if e.delivery_id != delivery_id and e.tries > 0 and e.next_at > stamp]
                # Within one transaction; any beyond it wait for their own next_at.
                room = (self.store.max_txn_ops - len(ops)) // 2
                for kv in self._read_many([self._key(self._deliveries, hook_id, e.delivery_id) for e in held[:room]]):
                    if kv is None or _decode(kv, _load_delivery).state is not DeliveryState.PENDING:
                        continue
                    other = _doc(kv)
                    other["next_at"] = stamp
                    compares.append(Compare.unchanged(kv.key, kv.mod_revision))
                    ops += [Op.put(kv.key, _dump_json(other)),
                            Op.put(self._key(self._pending, hook_id, other["id"]), _pending_value(other))]
            self.store.commit(compares, ops, what)

        self.store.retry(what, attempt)

    def list_deliveries(self, hook_id: int, *, limit: int, before: int | None = None) -> list[Delivery]:
        """Newest first, as GitHub lists them; ``before`` is the cursor (a delivery id)."""
        if limit <= 0:
            return []
        base = self._key(self._deliveries, hook_id, "")
        end = prefix_end(base) if before is None else (base + _pad(before)).encode()
        # Read newest first by etcd, so only ``limit`` deliveries come back.
        result = self.store.etcd.call("/kv/range", {"key": b64(base), "range_end": b64(end), "limit": str(limit),
                                                    "sort_order": "DESCEND", "sort_target": "KEY"})
        return [_decode(KV.parse(raw), _load_delivery) for raw in result.get("kvs", [])]

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        found = self._under_some_hook(lambda hook_id: Op.get(self._key(self._deliveries, hook_id, delivery_id)))
        return _decode(found[0], _load_delivery) if found else None

    def attempts(self, delivery_id: int) -> list[Attempt]:
        found = self._under_some_hook(
            lambda hook_id: Op.get(self._key(self._attempts, hook_id, delivery_id, ""), prefix=True))
        return [_decode(kv, _load_attempt) for kv in found]

    def last_attempt(self, hook_id: int) -> Attempt | None:
        kv = self.store.etcd.get(self._key(self._stats, hook_id))
        last = None if kv is None else _decode(kv, _load_stats)["last"]
        if last is None:
            return None
        found = self.store.etcd.get(self._key(self._attempts, hook_id, last["delivery"], last["number"]))
        return None if found is None else _decode(found, _load_attempt)

    def figures(self) -> HookFigures:
        pending_kvs, stats_kvs = self._snapshot(Op.get(self._pending, prefix=True), Op.get(self._stats, prefix=True))
        entries = [self._load_pending(kv) for kv in pending_kvs]
        stats = [_decode(kv, _load_stats) for kv in stats_kvs]
        return HookFigures(
            pending=len(entries),
            oldest_pending_at=load_optional_time(min((e.created_at for e in entries), default=None)),
            attempts=sum(s["attempts"] for s in stats),
            failed_attempts=sum(s["failed"] for s in stats),
            gave_up=sum(s["gave_up"] for s in stats),
            # A hook fails while its latest attempt failed.
            failing_hooks=sum(1 for s in stats if s["last"] is not None and not s["last"]["ok"]),
        )

    def trim(self, finished_before: datetime) -> int:
        """Forget finished deliveries older than ``finished_before``, with their attempts."""
        cut, forgotten = dump_time(finished_before), 0
        # Three requests and a compare per delivery, the stats once.
        batch = max(1, (self.store.max_txn_ops - 1) // 3)
        for hook_id in self._hook_ids():
            while True:
                done = self.store.retry(f"forgetting deliveries of hook {hook_id}",
                                        functools.partial(self._trim_some, hook_id, cut, batch))
                forgotten += done
                if done < batch:
                    break
        return forgotten

    def _trim_some(self, hook_id: int, cut: str, batch: int) -> int:
        base = self._key(self._finished, hook_id, "")
        # Keys in delivered_at order: up to the cut is what finished before it.
        entries = self.store.etcd.get_range(base, (base + cut).encode(), limit=batch)
        if not entries:
            return 0
        stats_key = self._key(self._stats, hook_id)
        (stats_kv,) = self._read_many([stats_key])
        stats = dict(_NO_STATS) if stats_kv is None else _decode(stats_kv, _load_stats)
        # A delivery recorded again since it was read rewrote its entry: start over.
        compares, ops = [_still(stats_key, stats_kv)], []
        for kv in entries:
            delivery_id = _ids_at_end(kv)[0]
            attempts, failed, gave_up = _decode(kv, _load_counts)
            stats.update(attempts=stats["attempts"] - attempts, failed=stats["failed"] - failed,
                         gave_up=stats["gave_up"] - gave_up)
            if stats["last"] is not None and stats["last"]["delivery"] == delivery_id:
                stats["last"] = None
            compares.append(Compare.unchanged(kv.key, kv.mod_revision))
            ops += [Op.delete(kv.key), Op.delete(self._key(self._deliveries, hook_id, delivery_id)),
                    Op.delete(self._key(self._attempts, hook_id, delivery_id, ""), prefix=True)]
        if stats_kv is not None:
            ops.append(Op.put(stats_key, _dump_json(stats)))
        self.store.commit(compares, ops, f"forgetting deliveries of hook {hook_id}")
        return len(entries)

    # -- the refs last announced -----------------------------------------------------------

    def note_refs(self, repo_id: int, updates: list[tuple[str, str, str]]) -> None:
        """Remember the ref updates (old, new, ref) just announced; a deleted ref is forgotten.
        A repository not read yet stays so: its refs are noted, but only ``adopt_refs`` says they are all."""
        latest = {ref: new for _old, new, ref in updates}  # etcd takes a key once per transaction
        base = self._key(self._refs, repo_id, "")
        self._write_all([Op.delete(base + ref) if set(new) == {"0"} else Op.put(base + ref, new)
                         for ref, new in latest.items()])

    def announced_refs(self, repo_id: int) -> dict[str, str] | None:
        """The refs last announced for a repository; None while they were never read."""
        base = self._key(self._refs, repo_id, "")
        known, refs = self._snapshot(Op.get(self._key(self._known, repo_id)), Op.get(base, prefix=True))
        return {kv.key.removeprefix(base): _oid(kv) for kv in refs} if known else None

    def adopt_refs(self, repo_id: int, refs: dict[str, str]) -> None:
        """Take ``refs`` as announced, without events: the first reading of a repository.

        One transaction when it fits; more refs than etcd takes in one are written in several, the
        known mark last, so a repository read for the first time is not known before all its refs are."""
        base = self._key(self._refs, repo_id, "")
        stale = [kv.key for kv in self.store.etcd.get_prefix(base, keys_only=True)
                 if kv.key.removeprefix(base) not in refs]
        self._write_all([*map(Op.delete, stale), *(Op.put(base + ref, oid) for ref, oid in sorted(refs.items())),
                         Op.put(self._key(self._known, repo_id), "")])

    def claim_ref(self, repo_id: int, ref: str, expected: str | None, new: str | None) -> bool:
        """Move one announced ref from ``expected`` to ``new`` (None: absent) if nobody moved it
        since it was read; whether it moved. A push recording at the same moment wins."""
        key = self._key(self._refs, repo_id, "") + ref
        compare = Compare.absent(key) if expected is None else Compare.value_is(key, expected)
        new = new or "0" * 40
        op = Op.delete(key) if set(new) == {"0"} else Op.put(key, new)
        return self.store.etcd.txn([compare], [op]).succeeded
