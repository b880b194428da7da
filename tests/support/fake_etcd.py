"""An in-memory etcd behind the real client, for the fast tier.

:class:`FakeEtcd` is :class:`bulwark.etcd.Etcd` with its transport replaced: instead of posting JSON to a
server, ``call`` answers it from :class:`MemoryEtcd`, which keeps keys, revisions and leases the way etcd's
v3 JSON gateway describes them. So every line of the real client (encoding, parsing, transactions built by
the stores) runs; only the network and the server are not there. What it models:

- one revision counter: each put, each delete that removes something and each transaction with a write
  advances it by one, and every key a transaction writes carries that revision;
- keys' ``create_revision``, ``mod_revision`` and ``version``; a deleted key starts again at version 1;
- ranges: one key, a prefix or ``[key, range_end)``, ``limit``, ``keys_only``, ``count_only``, sorting by
  key either way;
- transactions: comparisons on version, create and mod revision and value; then the success or failure
  requests in order; etcd's refusals of duplicate keys and of more than ``max_txn_ops`` requests;
- leases: grant, keep-alive, revoke and expiry on a clock the test may drive; the keys of an expired or
  revoked lease go in one revision, as in etcd;
- an outage: ``unavailable = True`` makes every call fail as an unreachable cluster does.

No watches, no history (a read is always at the newest revision), no compaction, one member.
The same tests run against a real etcd in the system tier.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etcd3gw import exceptions as etcd_errors

from bulwark.etcd import Etcd, EtcdUnavailable

MAX_TXN_OPS = 4096  # as the test etcd is started (--max-txn-ops)


def _bytes(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class _Key:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def to_json(self, key: bytes, *, keys_only: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": _b64(key),
            "create_revision": str(self.create_revision),
            "mod_revision": str(self.mod_revision),
            "version": str(self.version),
        }
        if not keys_only and self.value:
            out["value"] = _b64(self.value)
        if self.lease:
            out["lease"] = str(self.lease)
        return out


@dataclass
class _Lease:
    ttl: int
    expires: float


class Refused(etcd_errors.Etcd3Exception):
    """What the client raises when etcd answers an error status: the body's JSON as ``detail_text``."""

    def __init__(self, message: str, reason: str = "Bad Request") -> None:
        super().__init__(json.dumps({"error": message, "message": message}), reason)


class MemoryEtcd:
    """The server side: etcd's key-value and lease API over plain dictionaries, one call at a time."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_txn_ops: int = MAX_TXN_OPS) -> None:
        self.clock = clock
        self.max_txn_ops = max_txn_ops
        self.revision = 1  # etcd starts at 1 with no keys
        self.keys: dict[bytes, _Key] = {}
        self.leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._lock = threading.Lock()
        self.routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/kv/range": self._range,
            "/kv/put": self._write_one(self._put),
            "/kv/deleterange": self._write_one(self._delete),
            "/kv/txn": self._txn,
            "/lease/grant": self._grant,
            "/lease/keepalive": self._keepalive,
            "/kv/lease/revoke": self._revoke,
            "/cluster/member/list": lambda body: {"header": self._header(), "members": [{"name": "fake"}]},
        }

    def handle(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        route = self.routes.get(path)
        if route is None:
            raise Refused(f"fake etcd does not serve {path}")
        with self._lock:
            self._expire_leases()
            return route(body)

    # -- reads -------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {"revision": str(self.revision)}

    def _matching(self, body: dict[str, Any]) -> list[bytes]:
        key = _bytes(body.get("key"))
        if "range_end" not in body:
            return [key] if key in self.keys else []
        end = _bytes(body["range_end"])
        everything_from = end == b"\0"
        return sorted(k for k in self.keys if k >= key and (everything_from or k < end))

    def _range(self, body: dict[str, Any]) -> dict[str, Any]:
        found = self._matching(body)
        if body.get("sort_order") == "DESCEND":
            if body.get("sort_target", "KEY") != "KEY":
                raise Refused("fake etcd sorts by key only")
            found.reverse()
        out: dict[str, Any] = {"header": self._header()}
        if found:
            out["count"] = str(len(found))
        if body.get("count_only"):
            return out
        limit = int(body.get("limit", 0))
        shown = found[:limit] if limit else found
        if shown:
            out["kvs"] = [self.keys[k].to_json(k, keys_only=bool(body.get("keys_only"))) for k in shown]
        if len(shown) < len(found):
            out["more"] = True
        return out

    # -- writes ------------------------------------------------------------------------

    def _write_one(self, write: Callable[[dict[str, Any], int], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def run(body: dict[str, Any]) -> dict[str, Any]:
            self._check_lease(body)
            out = write(body, self.revision + 1)
            if out.pop("_wrote", False):
                self.revision += 1
            return {"header": self._header(), **out}

        return run

    def _check_lease(self, body: dict[str, Any]) -> None:
        lease = int(body.get("lease", 0))
        if lease and lease not in self.leases:
            raise Refused("etcdserver: requested lease not found", "Not Found")

    def _put(self, body: dict[str, Any], revision: int) -> dict[str, Any]:
        key, value, lease = _bytes(body.get("key")), _bytes(body.get("value")), int(body.get("lease", 0))
        old = self.keys.get(key)
        if old is None:
            self.keys[key] = _Key(value, revision, revision, 1, lease)
        else:
            self.keys[key] = _Key(value, old.create_revision, revision, old.version + 1, lease)
        return {"_wrote": True}

    def _delete(self, body: dict[str, Any], revision: int) -> dict[str, Any]:
        gone = self._matching(body)
        for key in gone:
            del self.keys[key]
        out: dict[str, Any] = {"_wrote": bool(gone)}
        if gone:
            out["deleted"] = str(len(gone))
        return out

    # -- transactions ------------------------------------------------------------------

    def _holds(self, compare: dict[str, Any]) -> bool:
        found = self.keys.get(_bytes(compare.get("key")))
        target = compare.get("target", "VERSION")
        if target == "VALUE":
            if found is None:  # etcd: a value comparison on a missing key fails
                return False
            have: int | bytes = found.value
            want: int | bytes = _bytes(compare.get("value"))
        else:
            field = {"VERSION": "version", "MOD": "mod_revision", "CREATE": "create_revision"}[target]
            have = 0 if found is None else int(getattr(found, field))
            want = int(compare.get(field, 0))
        result = compare.get("result", "EQUAL")
        if result == "EQUAL":
            return have == want
        if result == "NOT_EQUAL":
            return have != want
        if result == "GREATER":
            return have > want  # type: ignore[operator]
        return have < want  # type: ignore[operator]

    def _check_requests(self, requests: list[dict[str, Any]]) -> None:
        if len(requests) > self.max_txn_ops:
            raise Refused("etcdserver: too many operations in txn request")
        puts: set[bytes] = set()
        deletes: list[dict[str, Any]] = []
        for request in requests:
            if "request_put" in request:
                self._check_lease(request["request_put"])
                key = _bytes(request["request_put"].get("key"))
                if key in puts:
                    raise Refused("etcdserver: duplicate key given in txn request")
                puts.add(key)
            elif "request_delete_range" in request:
                deletes.append(request["request_delete_range"])
        for body in deletes:
            start = _bytes(body.get("key"))
            end = _bytes(body["range_end"]) if "range_end" in body else None
            for key in puts:
                if key == start if end is None else start <= key and (end == b"\0" or key < end):
                    raise Refused("etcdserver: duplicate key given in txn request")

    def _txn(self, body: dict[str, Any]) -> dict[str, Any]:
        compares = body.get("compare", [])
        if len(compares) > self.max_txn_ops:
            raise Refused("etcdserver: too many operations in txn request")
        succeeded = all(self._holds(c) for c in compares)
        requests = body.get("success" if succeeded else "failure", [])
        self._check_requests(requests)
        revision, wrote, responses = self.revision + 1, False, []
        for request in requests:
            if "request_range" in request:
                responses.append({"response_range": self._range(request["request_range"])})
            elif "request_put" in request:
                self._put(request["request_put"], revision)
                wrote = True
                responses.append({"response_put": {"header": self._header()}})
            elif "request_delete_range" in request:
                deleted = self._delete(request["request_delete_range"], revision)
                wrote = deleted.pop("_wrote") or wrote
                responses.append({"response_delete_range": {"header": self._header(), **deleted}})
            else:
                raise Refused(f"fake etcd does not run {sorted(request)}")
        if wrote:
            self.revision = revision
        out: dict[str, Any] = {"header": self._header(), "responses": responses}
        if succeeded:
            out["succeeded"] = True
        return out

    # -- leases ------------------------------------------------------------------------

    def _grant(self, body: dict[str, Any]) -> dict[str, Any]:
        ttl = int(body.get("TTL", 0))
        if ttl <= 0:
            raise Refused("etcdserver: lease TTL must be positive")
        lease = next(self._lease_ids)
        self.leases[lease] = _Lease(ttl, self.clock() + ttl)
        return {"header": self._header(), "ID": str(lease), "TTL": str(ttl)}

    def _keepalive(self, body: dict[str, Any]) -> dict[str, Any]:
        lease = self.leases.get(int(body.get("ID", 0)))
        result: dict[str, Any] = {"header": self._header(), "ID": str(body.get("ID", 0))}
        if lease is not None:
            lease.expires = self.clock() + lease.ttl
            result["TTL"] = str(lease.ttl)
        return {"result": result}

    def _revoke(self, body: dict[str, Any]) -> dict[str, Any]:
        lease = int(body.get("ID", 0))
        if lease not in self.leases:
            raise Refused("etcdserver: requested lease not found", "Not Found")
        self._drop_leases([lease])
        return {"header": self._header()}

    def _expire_leases(self) -> None:
        now = self.clock()
        self._drop_leases([lease for lease, held in self.leases.items() if held.expires <= now])

    def _drop_leases(self, leases: list[int]) -> None:
        for lease in leases:
            del self.leases[lease]
            attached = [key for key, held in self.keys.items() if held.lease == lease]
            for key in attached:
                del self.keys[key]
            if attached:
                self.revision += 1


class FakeEtcd(Etcd):
    """The real client over :class:`MemoryEtcd`; several clients may share one ``server``, as nodes share
    one etcd cluster."""

    def __init__(self, server: MemoryEtcd | None = None) -> None:
        self.server = server if server is not None else MemoryEtcd()
        self.endpoints = ["http://fake-etcd:2379"]
        self.timeout = 3.0
        self._clients = []
        self._current = 0
        self._lock = threading.Lock()
        self.unavailable = False

    def close(self) -> None:
        pass

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.unavailable:
            raise EtcdUnavailable(f"etcd is unreachable at {', '.join(self.endpoints)}: the fake is down")
        return self.server.handle(path, body)

    def endpoint_healthy(self, url: str) -> bool:
        return not self.unavailable
