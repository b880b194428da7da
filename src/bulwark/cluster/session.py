"""A node's session with etcd: the lease that says it is alive.

The node keeps a lease of ``ttl`` seconds and a key ``alive/<node>`` attached to it,
renewing it every third of the TTL. If renewals fail for longer than the TTL, the
node has lost its session: other nodes already see it as dead, so it must stop
taking writes (its ``/status`` turns 503) until it has a new lease.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from bulwark.cluster import keys
from bulwark.cluster.state import NodeBeat
from bulwark.errors import Unavailable
from bulwark.etcd import Etcd

log = logging.getLogger("bulwark.cluster")


class LeaseSession:
    def __init__(self, etcd: Etcd, name: str, beat: Callable[[], NodeBeat], *, ttl: int = 3,
                 take_over: Callable[[NodeBeat], bool] | None = None) -> None:
        self.etcd = etcd
        self.name = name
        self.beat = beat
        self.ttl = ttl
        # Whether the session published under this node's name belongs to a process of this node
        # that surely no longer runs (ClusterRuntime: same URL, and nothing listens on its port).
        self.take_over = take_over
        self._first = True
        self._lease = 0
        self._last_ok = 0.0  # monotonic time of the last successful renewal
        # Until when the lease surely holds: measured from when the renewal was *sent*, since
        # etcd counts the TTL from when it received it, which is no earlier.
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0

    # -- what others ask ------------------------------------------------------------------

    def lease(self) -> int:
        if not self.connected():
            raise Unavailable(f"node {self.name} has no etcd session")
        return self._lease

    def connected(self) -> bool:
        return self._lease != 0 and time.monotonic() < self._valid_until

    def holds(self, lease: int, *, margin: float = 0.0) -> bool:
        """Whether ``lease`` is still this node's lease and surely alive ``margin`` seconds from now.

        A push leader asks this before each step: a lease that expired, or was replaced by a
        new one after a lost session, no longer holds the repository lock taken with it.
        """
        return lease != 0 and lease == self._lease and time.monotonic() + margin < self._valid_until

    def in_doubt(self) -> bool:
        """A renewal is overdue: the session may be lost any moment (a cut link, a stalled etcd).

        ``/status`` answers 503 at once then, rather than wait on etcd to find out."""
        return not self.connected() or time.monotonic() - self._last_ok > 2 * self.ttl / 3 + 0.2

    def fenced_reason(self) -> str | None:
        if self.connected():
            return None
        if self._last_ok == 0:
            return "not yet registered in etcd"
        return f"lost its etcd session {time.monotonic() - self._last_ok:.0f}s ago"

    # -- the loop ---------------------------------------------------------------------------

    def join(self) -> None:
        """Register once, synchronously, so a node is alive before it serves."""
        self._renew()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bulwark-membership", daemon=True)
        self._thread.start()

    def stop(self, *, leave: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if leave and self._lease:
            with contextlib.suppress(Unavailable):
                self.etcd.revoke(self._lease)  # others see us gone at once, not after the TTL
            self._lease = 0

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._renew()
            except Unavailable as exc:
                if self._beats % 10 == 0:
                    log.warning("cluster: cannot renew this node's etcd session: %s", exc)
                self._beats += 1
            except Exception:
                log.exception("cluster: unexpected error renewing the etcd session")

    def _renew(self) -> None:
        sent = time.monotonic()
        if self._lease and (remaining := self.etcd.keepalive(self._lease)) > 0:
            self._last_ok = time.monotonic()
            self._valid_until = sent + min(remaining, self.ttl)
            self._beats += 1
            if self._beats % 10 == 0:  # refresh what we publish (disk use) now and then
                self.etcd.put(keys.alive(self.name), self.beat().to_json(), lease=self._lease)
            return
        # No lease, or it expired while we could not reach etcd: start a new session.
        if self._first:
            self._end_previous()
        lease = self.etcd.grant(self.ttl)
        self.etcd.put(keys.alive(self.name), self.beat().to_json(), lease=lease)
        if self._lease:
            log.warning("cluster: etcd session re-established with a new lease")
        self._lease = lease
        self._first = False
        self._last_ok = time.monotonic()
        self._valid_until = sent + self.ttl

    def _end_previous(self) -> None:
        """Revoke the session a killed process of this node left behind.

        It would live on until its TTL ran out, and with it the repository locks its pushes held
        (so every push to those repositories, and every follower holding their prepared ref
        updates, would wait), and the reconciler's seat if it had it."""
        kv = self.etcd.get(keys.alive(self.name))
        if kv is None or not kv.lease or self.take_over is None or not self.take_over(NodeBeat.from_kv(kv)):
            return
        self.etcd.revoke(kv.lease)
        log.warning("cluster: revoked the etcd session an earlier process of this node left (lease %x)", kv.lease)
