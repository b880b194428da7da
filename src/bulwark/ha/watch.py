"""On a replica: is the primary there? A thread of its own asks the primary's ``/status``.

Replication cannot tell in time: its long polls and repository fetches may legitimately take far
longer than a dead primary may go unnoticed. The watch asks five times per ``ha_primary_timeout``
with a short timeout, and writes what it learned to the store, where ``repl status``, the metrics and
the checks judge it (:func:`bulwark.ha.health.judge_primary`) at the moment they are read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bulwark.clock import Clock
from bulwark.errors import BulwarkError
from bulwark.ha import state as ha_state
from bulwark.ha.client import peer_status
from bulwark.ha.health import PrimaryState, judge_primary, observe
from bulwark.ha.state import PeerCheck
from bulwark.levels import Level
from bulwark.roles import NodeRole
from bulwark.store import Store

log = logging.getLogger("bulwark.ha")

# (url, timeout) -> the peer's /status body; raises BulwarkError when there is none.
Ask = Callable[[str, float], dict[str, Any]]


class PrimaryWatch:
    def __init__(self, store: Store, clock: Clock, *, timeout: float, ask: Ask = peer_status) -> None:
        self.store = store
        self.clock = clock
        self.timeout = timeout
        self.interval = timeout / 5
        self.ask_timeout = min(timeout / 4, 3.0)
        self.ask = ask
        self._check: PeerCheck | None = None
        self._state: PrimaryState | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> str:
        """Ask the primary once, if this node is a replica; say what it learned."""
        ha = ha_state.load(self.store)
        if ha.role != NodeRole.HA_REPLICA or not ha.primary_url:
            if self._check is not None or ha_state.load_primary_check(self.store) is not None:
                ha_state.save_primary_check(self.store, None)
            self._check, self._state = None, None
            return "not a replica"
        url = ha.primary_url
        if self._check is None or self._check.url != url:
            earlier = ha_state.load_primary_check(self.store)
            answered = earlier.answered_at if earlier is not None and earlier.url == url else None
            self._check = PeerCheck(url, since=self.clock.now(), answered_at=answered)
        answer: dict[str, Any] | str
        try:
            answer = self.ask(url, self.ask_timeout)
        except BulwarkError as exc:
            answer = exc.message
        self._check = observe(self._check, answer, self.clock.now())
        ha_state.save_primary_check(self.store, self._check)
        health = judge_primary(self._check, self.clock.now(), self.timeout)
        if health.state is not self._state:
            if self._state is not None or health.level is not Level.OK:
                log.log(logging.WARNING if health.level is not Level.OK else logging.INFO,
                        "ha: primary %s: %s", health.state.value, health.detail)
            self._state = health.state
        return health.detail

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bulwark-ha-primary-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the watch must survive anything one ask meets
                log.exception("ha: asking the primary failed")
            self._stop.wait(self.interval)
