"""The node's companion that empties the outbox: snapshot what is due, decide, send, record.

One delivery per hook and repository is in flight at a time, so one repository's events reach a
hook in order; up to ``workers`` hooks are served at once, so a slow receiver holds up only its
own deliveries. A delivery is done only when the receiver answered 2xx; the state is written
after the answer, so a node killed mid-delivery sends that delivery again (at least once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from urllib.parse import urlencode

from bulwark.clock import Clock
from bulwark.webhooks.models import Delivery, DeliveryState, Hook
from bulwark.webhooks.schedule import next_attempt
from bulwark.webhooks.store import HookStore
from bulwark.webhooks.transport import Outcome, Sender, signature

log = logging.getLogger("bulwark.webhooks")

# Finished deliveries are kept this long for the deliveries API, then trimmed.
KEEP_FINISHED = timedelta(days=30)
_TRIM_EVERY = timedelta(hours=1)


def after_attempt(delivery: Delivery, ok: bool, now: datetime) -> tuple[DeliveryState, datetime | None]:
    """A delivery's state after an attempt, and when to try again if it is still pending."""
    if ok:
        return DeliveryState.DELIVERED, None
    retry = next_attempt(delivery.attempts + 1, delivery.created_at, now)
    return (DeliveryState.PENDING, retry) if retry is not None else (DeliveryState.GAVE_UP, None)


def request_for(hook: Hook, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
    """The body and headers GitHub would send for ``delivery``."""
    if hook.content_type.value == "form":
        body = urlencode({"payload": delivery.payload}).encode()
        content_type = "application/x-www-form-urlencoded"
    else:
        body = delivery.payload.encode()
        content_type = "application/json"
    target = "repository" if hook.repo_id is not None else "organization"
    headers = {
        "Content-Type": content_type,
        "X-GitHub-Event": delivery.event,
        "X-GitHub-Delivery": delivery.guid,
        "X-GitHub-Hook-ID": str(hook.id),
        "X-GitHub-Hook-Installation-Target-Type": target,
        "X-GitHub-Hook-Installation-Target-ID": str(hook.repo_id if hook.repo_id is not None else hook.org_id),
    }
    if hook.secret:
        headers["X-Hub-Signature-256"] = signature(hook.secret, body)
    return body, headers


class Deliverer:
    def __init__(
        self,
        hooks: HookStore,
        sender: Sender,
        clock: Clock,
        *,
        may_deliver: Callable[[], str | None],
        catch_up: Callable[[Callable[[], bool]], str] | None = None,
        on_stop: Callable[[], None] | None = None,
        workers: int = 8,
        poll: float = 1.0,
    ) -> None:
        self.hooks = hooks
        self.sender = sender
        self.clock = clock
        # None while this node delivers; otherwise why not (a replica, a fenced primary).
        self.may_deliver = may_deliver
        # Run each time this node starts delivering (webhooks/catchup.py), before anything is sent.
        self.catch_up = catch_up
        self._caught_up = False
        self.on_stop = on_stop  # a cluster node gives up delivering, so another takes over at once
        self.workers = workers
        self.poll = poll
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self._in_flight: set[tuple[int, int | None]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trimmed_at: datetime | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhook-deliverer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.on_stop is not None:
            try:
                self.on_stop()
            except Exception as exc:  # the lease ends it all the same, a few seconds later
                log.warning("webhooks: could not hand delivery over: %s", exc)

    def _run(self) -> None:
        last = ""
        while not self._stop.is_set():
            try:
                said = self.tick()
            except Exception as exc:  # the outbox stays; the next tick tries again
                said = f"could not read the outbox: {exc}"
                log.warning("webhooks: %s", said)
            if said != last and not said.startswith(("sent", "nothing")):
                log.info("webhooks: %s", said)
            last = said
            self._wake.wait(self.poll)
            self._wake.clear()

    def tick(self) -> str:
        """Start the deliveries that are due and not held behind one in flight; say what happened."""
        why_not = self.may_deliver()
        if why_not is not None:
            self._caught_up = False
            return f"not delivering: {why_not}"
        if not self._caught_up and self.catch_up is not None:
            said = self.catch_up(self._stop.is_set)
            self._caught_up = not self._stop.is_set()
            self._wake.set()  # deliver what it queued without waiting for the poll
            return said
        now = self.clock.now()
        self._trim(now)
        with self._lock:
            free = self.workers - len(self._in_flight)
            busy = set(self._in_flight)
        if free <= 0:
            return "all workers busy"
        started = 0
        for delivery in self.hooks.due(now, limit=free + len(busy)):
            key = (delivery.hook_id, delivery.repo_id)
            if key in busy or started >= free:
                continue
            with self._lock:
                self._in_flight.add(key)
            busy.add(key)
            self._pool.submit(self._deliver, delivery, key)
            started += 1
        return f"sent {started} deliveries" if started else "nothing due"

    def _trim(self, now: datetime) -> None:
        if self._trimmed_at is None or now - self._trimmed_at > _TRIM_EVERY:
            self._trimmed_at = now
            trimmed = self.hooks.trim(now - KEEP_FINISHED)
            if trimmed:
                log.info("webhooks: forgot %d deliveries finished more than %d days ago", trimmed,
                         KEEP_FINISHED.days)

    def _deliver(self, delivery: Delivery, key: tuple[int, int | None]) -> None:
        try:
            self.deliver(delivery)
        except Exception:
            log.exception("webhooks: delivery %s could not be recorded; it is tried again", delivery.guid)
        finally:
            with self._lock:
                self._in_flight.discard(key)
            self._wake.set()  # the next delivery of this hook and repository may go now

    def deliver(self, delivery: Delivery) -> Outcome | None:
        """One attempt of ``delivery``, recorded; None if its hook is gone."""
        hook = self.hooks.get_hook(delivery.hook_id)
        if hook is None:
            return None
        body, headers = request_for(hook, delivery)
        if hook.active:
            outcome = self.sender.send(hook.url, body, headers, insecure_ssl=hook.insecure_ssl)
        else:
            outcome = Outcome(None, 0, {}, "", "the hook was deactivated before this delivery was sent")
        now = self.clock.now()
        state, retry = after_attempt(delivery, outcome.ok, now)
        if not hook.active:
            state, retry = DeliveryState.GAVE_UP, None
        self.hooks.record_attempt(
            delivery, at=now, status_code=outcome.status, duration_ms=outcome.duration_ms,
            request_headers=headers, response_headers=outcome.response_headers,
            response_body=outcome.response_body, error=outcome.error, state=state, next_at=retry,
        )
        if not outcome.ok:
            log.info("webhooks: delivery %s of %s to hook %d failed (%s)%s", delivery.guid, delivery.event, hook.id,
                     outcome.error or f"HTTP {outcome.status}",
                     "; giving up" if state is DeliveryState.GAVE_UP else f"; next try at {retry:%H:%M:%S}"
                     if retry else "")
        return outcome


