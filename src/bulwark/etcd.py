"""A small, typed face on etcd's v3 API, over the maintained ``etcd3gw`` client.

Everything in Bulwark that talks to etcd goes through :class:`Etcd`: key-value reads,
transactions (compare-and-set is how every uniqueness rule and every state change is
made safe), and leases (liveness, locks, the reconciler's election). The client tries
each endpoint in turn, so losing one etcd member costs one timeout, not the node.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests.adapters
from etcd3gw import exceptions as etcd_errors

from bulwark.errors import Unavailable

# Connections kept open to each etcd endpoint: one per request thread that may call at once.
POOL_SIZE = 64


class EtcdUnavailable(Unavailable):
    """No etcd endpoint answered (or none with a quorum behind it)."""


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


b64 = _b64


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int

    @property
    def text(self) -> str:
        return self.value.decode()

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KV:
        return cls(
            key=_unb64(raw["key"]).decode(),
            value=_unb64(raw.get("value", "")),
            mod_revision=int(raw.get("mod_revision", 0)),
            create_revision=int(raw.get("create_revision", 0)),
            version=int(raw.get("version", 0)),
            lease=int(raw.get("lease", 0)),
        )


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction. Build them with the class methods."""

    key: str
    target: str  # VERSION, MOD, CREATE or VALUE
    result: str  # EQUAL, NOT_EQUAL, GREATER, LESS
    operand: int | str | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "VERSION", "EQUAL", 0)

    @classmethod
    def present(cls, key: str) -> Compare:
        return cls(key, "VERSION", "GREATER", 0)

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        """The key was last written at ``mod_revision`` (0: it does not exist)."""
        return cls(key, "MOD", "EQUAL", mod_revision)

    @classmethod
    def value_is(cls, key: str, value: str | bytes) -> Compare:
        return cls(key, "VALUE", "EQUAL", value)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": _b64(self.key), "target": self.target, "result": self.result}
        if self.target == "VALUE":
            out["value"] = _b64(self.operand if isinstance(self.operand, bytes) else str(self.operand))
        else:
            out[{"VERSION": "version", "MOD": "mod_revision", "CREATE": "create_revision"}[self.target]] = str(
                self.operand
            )
        return out


@dataclass(frozen=True)
class Op:
    """One request inside a transaction."""

    kind: str  # put, delete, get
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @classmethod
    def put(cls, key: str, value: str | bytes, lease: int = 0) -> Op:
        return cls("put", key, value.encode() if isinstance(value, str) else value, lease)

    @classmethod
    def delete(cls, key: str, *, prefix: bool = False) -> Op:
        return cls("delete", key, prefix=prefix)

    @classmethod
    def get(cls, key: str, *, prefix: bool = False) -> Op:
        return cls("get", key, prefix=prefix)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "put":
            body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
            if self.lease:
                body["lease"] = str(self.lease)
            return {"request_put": body}
        body = {"key": _b64(self.key)}
        if self.prefix:
            body["range_end"] = _b64(prefix_end(self.key))
        return {"request_delete_range" if self.kind == "delete" else "request_range": body}


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # For every ``get`` op of the branch that ran, in order: the keys it found.
    reads: list[list[KV]] = field(default_factory=list)


class Etcd:
    """A connection to an etcd cluster through any of its ``endpoints`` (``http://host:port``)."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 3.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._clients = [self._client_for(url, timeout) for url in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    @staticmethod
    def _client_for(url: str, timeout: float) -> etcd3gw.Etcd3Client:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        client = etcd3gw.Etcd3Client(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 2379,
            protocol=parts.scheme or "http",
            timeout=timeout,
            api_path="/v3/",
        )
        # requests keeps 10 connections per host by default: a node's request threads (up to 40)
        # beyond that opened a new connection to etcd for every call and threw it away after.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        client.session.mount("http://", adapter)
        client.session.mount("https://", adapter)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    # -- transport ---------------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers."""
        with self._lock:
            start = self._current
        last: Exception | None = None
        for i in range(len(self._clients)):
            index = (start + i) % len(self._clients)
            client = self._clients[index]
            try:
                result: dict[str, Any] = client.post(client.get_url(path), json=body)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as exc:
                last = exc
                continue
            except etcd_errors.Etcd3Exception as exc:
                # A member without a quorum answers with an error rather than a timeout.
                if "no leader" in str(exc.detail_text) or "timed out" in str(exc.detail_text):
                    last = exc
                    continue
                raise
            if index != start:
                with self._lock:
                    self._current = index
            return result
        raise EtcdUnavailable(f"etcd is unreachable at {', '.join(self.endpoints)}: {last}")

    # -- key-value -----------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        result = self.call("/kv/range", {"key": _b64(key)})
        kvs = result.get("kvs", [])
        return KV.parse(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, *, keys_only: bool = False) -> list[KV]:
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        if keys_only:
            body["keys_only"] = True
        result = self.call("/kv/range", body)
        return [KV.parse(raw) for raw in result.get("kvs", [])]

    def read_prefix(self, prefix: str) -> tuple[int, list[KV]]:
        """Every key under ``prefix``, and the revision they were read at."""
        result = self.call("/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return int(result["header"]["revision"]), [KV.parse(raw) for raw in result.get("kvs", [])]

    def answering_endpoint(self) -> str:
        """The URL of a member that answers a linearizable read now (so it has a quorum)."""
        self.call("/kv/range", {"key": _b64("/bulwark/health")})
        with self._lock:
            url = self.endpoints[self._current]
        return url.rstrip("/") if "://" in url else f"http://{url}"

    def get_range(self, start: str, end: bytes, *, limit: int = 0) -> list[KV]:
        """The keys from ``start`` up to (not including) ``end``, in key order; at most ``limit``
        of them when it is not 0 (etcd stops reading there)."""
        body: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end)}
        if limit:
            body["limit"] = str(limit)
        result = self.call("/kv/range", body)
        return [KV.parse(raw) for raw in result.get("kvs", [])]

    def count_prefix(self, prefix: str) -> int:
        """How many keys start with ``prefix``, counted by etcd without sending them."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "count_only": True}
        return int(self.call("/kv/range", body).get("count", 0))

    def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int:
        body: dict[str, Any] = Op.put(key, value, lease).to_json()["request_put"]
        result = self.call("/kv/put", body)
        return int(result["header"]["revision"])

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); return how many keys went."""
        body = Op.delete(key, prefix=prefix).to_json()["request_delete_range"]
        result = self.call("/kv/deleterange", body)
        return int(result.get("deleted", 0))

    def txn(self, compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op] = ()) -> TxnResult:
        """Run ``success`` if every comparison holds, else ``failure``, atomically."""
        body = {
            "compare": [c.to_json() for c in compare],
            "success": [o.to_json() for o in success],
            "failure": [o.to_json() for o in failure],
        }
        result = self.call("/kv/txn", body)
        reads = [
            [KV.parse(raw) for raw in response["response_range"].get("kvs", [])]
            for response in result.get("responses", [])
            if "response_range" in response
        ]
        return TxnResult(bool(result.get("succeeded", False)), int(result["header"]["revision"]), reads)

    # -- leases ------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        result = self.call("/lease/grant", {"TTL": str(ttl), "ID": "0"})
        return int(result["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its remaining TTL, or 0 when it has expired already."""
        result = self.call("/lease/keepalive", {"ID": str(lease)})
        return max(0, int(result.get("result", {}).get("TTL", 0)))

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(etcd_errors.Etcd3Exception):  # already gone
            self.call("/kv/lease/revoke", {"ID": str(lease)})

    # -- cluster -----------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        result = self.call("/cluster/member/list", {})
        return list(result.get("members", []))

    def endpoint_healthy(self, url: str) -> bool:
        """Whether the one member at ``url`` answers a linearizable read (so it has a quorum)."""
        client = self._client_for(url, min(self.timeout, 1.5))
        try:
            client.post(client.get_url("/kv/range"), json={"key": _b64("/bulwark/health")})
            return True
        except etcd_errors.Etcd3Exception:
            return False
        finally:
            client.session.close()
