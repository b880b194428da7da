"""Throttling of failed password sign-ins, per login and per client address.

The decision is a pure function of a login's (or an address's) record of failures and the
time (``wait_for``); ``SignInThrottle`` keeps the records, in memory and bounded.

Counts are per node: in a cluster each node throttles on its own, so attempts spread over
N nodes get N times as many tries before a lockout. That is accepted: the counts would
otherwise have to go through etcd on every sign-in, and argon2 already makes each try slow.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bulwark.errors import TooManyAttempts
from bulwark.names import shown

log = logging.getLogger("bulwark.auth")


@dataclass(frozen=True)
class Policy:
    """How many failures are free, how the wait grows after them, and when it turns into a lockout."""

    free: int  # failures with no wait at all
    first_wait: float  # seconds after the first failure beyond the free ones; doubles with each further one
    lock_after: int  # failures that lock out for ``lockout`` seconds
    lockout: float
    # A record is dropped this long after its last failure (never shorter than the lockout).
    forget_after: float


# A user who mistypes a few times never waits; a guesser gets 10 tries, then waits 15 minutes.
BY_LOGIN = Policy(free=5, first_wait=1.0, lock_after=10, lockout=900.0, forget_after=900.0)
# An address may be shared (a NAT, a proxy, a CI fleet), so it is allowed more.
BY_ADDRESS = Policy(free=20, first_wait=1.0, lock_after=100, lockout=900.0, forget_after=900.0)
# Records kept per kind; beyond it the least recently failed are dropped (memory stays bounded).
MAX_RECORDS = 50_000
# Characters of a login or an address a record is kept under (no login is longer than 39).
_KEY_CHARS = 64


@dataclass(frozen=True)
class Record:
    failures: int
    last: float  # when the last failure was counted, in the throttle clock's seconds


def wait_for(record: Record | None, now: float, policy: Policy) -> float:
    """Seconds before another attempt may be made (0: at once)."""
    if record is None or now - record.last >= policy.forget_after or record.failures < policy.free:
        return 0.0
    if record.failures >= policy.lock_after:
        delay = policy.lockout
    else:
        delay = min(policy.first_wait * 2 ** (record.failures - policy.free), policy.lockout)
    return max(0.0, record.last + delay - now)


def after_failure(record: Record | None, now: float, policy: Policy) -> Record:
    """The record once one more failure is counted."""
    if record is None or now - record.last >= policy.forget_after:
        return Record(failures=1, last=now)
    return Record(failures=record.failures + 1, last=now)


def _key(text: str) -> str:
    return text[:_KEY_CHARS].lower()


class _Records:
    """Records by key, least recently failed first, at most ``limit`` of them."""

    def __init__(self, policy: Policy, limit: int) -> None:
        self.policy = policy
        self.limit = limit
        self.items: OrderedDict[str, Record] = OrderedDict()

    def get(self, key: str) -> Record | None:
        return self.items.get(key)

    def put(self, key: str, record: Record) -> None:
        self.items[key] = record
        self.items.move_to_end(key)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)

    def forgive(self, key: str) -> None:
        """Take back one counted failure (the attempt it stood for succeeded)."""
        record = self.items.get(key)
        if record is None:
            return
        if record.failures <= 1:
            del self.items[key]
        else:
            self.items[key] = Record(failures=record.failures - 1, last=record.last)


class SignInThrottle:
    """Failed password sign-ins on this node, per login and per client address.

    An attempt counts as failed from the moment it starts (``begin``) until it succeeds
    (``succeeded``), so attempts made at once are counted at once: a thousand parallel
    guesses for one login get no more tries than a thousand in a row.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        by_login: Policy = BY_LOGIN,
        by_address: Policy = BY_ADDRESS,
        max_records: int = MAX_RECORDS,
    ) -> None:
        self._clock = clock
        self._logins = _Records(by_login, max_records)
        self._addresses = _Records(by_address, max_records)
        self._lock = threading.Lock()
        # For monitoring: attempts refused by the throttle, and password failures counted.
        self.refused_total = 0
        self.failed_total = 0

    def counts(self) -> dict[str, int]:
        """Totals since start, for the node's metrics."""
        with self._lock:
            return {"refused": self.refused_total, "failed": self.failed_total}

    def begin(self, login: str, address: str) -> None:
        """Count an attempt for ``login`` from ``address``, or refuse it with ``TooManyAttempts``."""
        now = self._clock()
        login_key, address = _key(login), _key(address)
        with self._lock:
            waits = [
                (wait_for(self._logins.get(login_key), now, self._logins.policy), "this login"),
                (wait_for(self._addresses.get(address), now, self._addresses.policy), "this address"),
            ]
            wait, what = max(waits)
            if wait > 0:
                self.refused_total += 1
                seconds = math.ceil(wait)
                raise TooManyAttempts(
                    f"Maximum number of login attempts exceeded for {what}. "
                    f"Please try again in {seconds} seconds, or use a token.",
                    retry_after=seconds,
                )
            for records, key, what in ((self._logins, login_key, "login"), (self._addresses, address, "address")):
                record = after_failure(records.get(key), now, records.policy)
                records.put(key, record)
                if record.failures == records.policy.lock_after:
                    log.warning(
                        "sign-ins locked for %.0f s: %d failed password attempts for %s %s (latest: login %s from %s)",
                        records.policy.lockout, record.failures, what, shown(key), shown(login), shown(address),
                    )

    def failed(self, login: str, address: str) -> None:
        """The attempt ``begin`` counted failed: it stays counted."""
        with self._lock:
            self.failed_total += 1
        log.info("failed password sign-in for login %s from %s", shown(login), shown(address))

    def succeeded(self, login: str, address: str) -> None:
        """The right password: the login's record is cleared, the address's attempt taken back."""
        with self._lock:
            self._logins.items.pop(_key(login), None)
            self._addresses.forgive(_key(address))
