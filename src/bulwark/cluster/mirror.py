"""One etcd prefix kept in memory by a watch: a node's view of every placement without reading them.

The copy is loaded with one range read, then kept by etcd's watch stream from the next
revision. A stream that ends, breaks or stays quiet for ``quiet`` seconds is opened again from
the revision after the last event seen: etcd replays what happened meanwhile, so nothing is
missed, and a member cut off from its cluster (whose stream goes quiet) is left for one that
answers a linearizable read. When etcd has compacted that revision away, it cancels the watch
with ``compact_revision`` and the copy is loaded afresh.

The copy is for views that may be a moment old (placing new repositories, the reconciler's
choice of what to look at, counts for status): anything that acts on a placement reads or
compares it in etcd first.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import httpx

from bulwark.etcd import KV, Etcd, EtcdUnavailable, b64, prefix_end

log = logging.getLogger(__name__)

T = TypeVar("T")


class Compacted(Exception):
    """The revision a watch was to start from is gone from etcd's history."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {revision}")
        self.revision = revision


class Mirror(Generic[T]):
    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        decode: Callable[[KV], T],
        *,
        name: str,
        quiet: float = 5.0,
        retry: float = 1.0,
    ) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.decode = decode
        self.name = name
        self.quiet = quiet
        self.retry = retry
        self.loads = 0  # how many times the copy was read whole (1 at start, +1 per compaction)
        self._items: dict[str, T] = {}
        self._revision = 0  # the revision of the last load or event applied
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: httpx.Response | None = None

    # -- reading -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def view(self) -> tuple[int, dict[str, T]]:
        """The revision the copy is at, and a copy of it (key tail -> value)."""
        with self._lock:
            return self._revision, dict(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # -- running -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"bulwark-mirror-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        start = 0
        while not self._stop.is_set():
            start = self.step(start)

    def step(self, start: int) -> int:
        """Load the copy if ``start`` is 0, then follow the watch from ``start`` until it ends;
        the revision to go on from (0: the copy must be loaded again)."""
        try:
            if start == 0:
                start = self.load() + 1
            return self.follow(start)
        except Compacted as exc:
            log.info("mirror %s: %s; reading it whole again", self.name, exc)
            return 0
        except (EtcdUnavailable, httpx.HTTPError, ValueError, KeyError) as exc:
            if not self._stop.is_set():
                log.warning("mirror %s: watch interrupted (%s); again in %.0f s", self.name, exc, self.retry)
                self._stop.wait(self.retry)
            return start

    def load(self) -> int:
        """Read the prefix whole; the revision it was read at."""
        revision, kvs = self.etcd.read_prefix(self.prefix)
        items = {}
        for kv in kvs:
            value = self._decoded(kv)
            if value is not None:
                items[kv.key[len(self.prefix):]] = value
        with self._lock:
            self._items = items
            self._revision = revision
        self.loads += 1
        self._ready.set()
        return revision

    def follow(self, start: int) -> int:
        """Apply the watch's events from ``start`` until the stream ends or stays quiet; the
        revision to go on from."""
        endpoint = self.etcd.answering_endpoint()
        body = {"create_request": {"key": b64(self.prefix), "range_end": b64(prefix_end(self.prefix)),
                                   "start_revision": str(start)}}
        # "hasleader": a member that loses its leader cancels the watch rather than go quiet.
        headers = {"Grpc-Metadata-Hasleader": "true"}
        timeout = httpx.Timeout(self.etcd.timeout, read=self.quiet)
        try:
            with httpx.Client(timeout=timeout) as client, \
                    client.stream("POST", f"{endpoint}/v3/watch", json=body, headers=headers) as response:
                self._response = response
                if response.status_code != 200:
                    raise EtcdUnavailable(f"etcd at {endpoint} refused the watch: HTTP {response.status_code}")
                for result in _results(response.iter_lines()):
                    start = self._apply(result, start)
                    if self._stop.is_set():
                        break
        except httpx.ReadTimeout:
            pass  # quiet for a while: open it again from where it was, perhaps on another member
        finally:
            self._response = None
        return start

    def _apply(self, result: dict[str, Any], start: int) -> int:
        compacted = int(result.get("compact_revision", 0) or 0)
        if compacted:
            raise Compacted(compacted)
        if result.get("canceled"):
            raise EtcdUnavailable(f"etcd canceled the watch: {result.get('cancel_reason') or 'no reason given'}")
        events = result.get("events") or []
        if not events:
            return start
        with self._lock:
            for event in events:
                kv = KV.parse(event["kv"])
                tail = kv.key[len(self.prefix):]
                value = None if event.get("type") == "DELETE" else self._decoded(kv)
                if value is None:
                    self._items.pop(tail, None)
                else:
                    self._items[tail] = value
                start = max(start, kv.mod_revision + 1)
            self._revision = max(self._revision, start - 1)
        return start

    def _decoded(self, kv: KV) -> T | None:
        try:
            return self.decode(kv)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mirror %s: skipping %s, which does not decode: %s", self.name, kv.key, exc)
            return None


def _results(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The ``result`` of every message of a watch stream (one JSON object per line)."""
    for line in lines:
        if not line.strip():
            continue
        message = json.loads(line)
        if "error" in message:
            raise EtcdUnavailable(f"etcd ended the watch: {message['error'].get('message', message['error'])}")
        result = message.get("result")
        if isinstance(result, dict):
            yield result

