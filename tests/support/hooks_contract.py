"""The contract every webhook store backend must meet (``bulwark.webhooks.store.HookStore``).

A backend's test module supplies three fixtures and subclasses :class:`HookStoreContract`:
``clock``, a :class:`helpers.FakeClock` the metadata store reads; ``store``, a fresh metadata
:class:`~bulwark.store.Store` on that clock (hooks belong to its repositories and organizations);
``hooks``, the backend's webhook store on ``store``.

A repository's refs are read once (``adopt_refs``) before the tests of the refs use them: a
repository created on SQLite starts known and empty, one on etcd starts unknown.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from bulwark.models import Account, Repository
from bulwark.store import Store
from bulwark.webhooks.models import ContentType, Delivery, DeliveryState, Hook
from bulwark.webhooks.store import HookStore
from tests.support.helpers import FakeClock

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SECOND, HOUR = timedelta(seconds=1), timedelta(hours=1)
ZERO, A, B, C, D = "0" * 40, "a" * 40, "b" * 40, "c" * 40, "d" * 40


@dataclasses.dataclass(frozen=True)
class World:
    user: Account
    org: Account
    repo: Repository  # the user's
    org_repo: Repository
    other_repo: Repository  # the organization's too


def make_world(store: Store) -> World:
    user = store.create_user("hanna")
    org = store.create_org("hookers", owner_id=user.id)
    return World(user=user, org=org, repo=store.create_repo(user.id, "mine", storage_id="hs-1"),
                 org_repo=store.create_repo(org.id, "tools", storage_id="hs-2"),
                 other_repo=store.create_repo(org.id, "docs", storage_id="hs-3"))


def new_hook(hooks: HookStore, *, repo: Repository | None = None, org: Account | None = None,
          url: str = "https://hooks.example/x", events: tuple[str, ...] = ("push",)) -> Hook:
    return hooks.create_hook(repo_id=repo.id if repo else None, org_id=org.id if org else None, url=url,
                             content_type=ContentType.JSON, secret="", insecure_ssl=False, events=events,
                             active=True)


def queue(hooks: HookStore, hook: Hook, repo: Repository | None, event: str = "push") -> Delivery:
    delivery = hooks.enqueue(hook.id, repo.id if repo else None, event, None, f'{{"event": "{event}"}}')
    assert delivery is not None
    return delivery


def _attempt(hooks: HookStore, delivery: Delivery, at: datetime, status: int | None,
             state: DeliveryState = DeliveryState.PENDING, next_at: datetime | None = None) -> Delivery:
    """Record one attempt answered with ``status`` (None: no answer); the delivery as stored after."""
    hooks.record_attempt(delivery, at=at, status_code=status, duration_ms=25, request_headers={"X-Try": "1"},
                         response_headers={"Server": "test"}, response_body="fine" if status else "",
                         error="" if status else "connection refused", state=state, next_at=next_at)
    stored = hooks.get_delivery(delivery.id)
    assert stored is not None
    return stored


def fail(hooks: HookStore, delivery: Delivery, at: datetime, retry_in: timedelta = HOUR) -> Delivery:
    return _attempt(hooks, delivery, at, 500, DeliveryState.PENDING, at + retry_in)


def deliver(hooks: HookStore, delivery: Delivery, at: datetime) -> Delivery:
    return _attempt(hooks, delivery, at, 200, DeliveryState.DELIVERED)


def _ids(deliveries: list[Delivery]) -> list[int]:
    return [d.id for d in deliveries]


class HookStoreContract:
    """Tests that every :class:`HookStore` backend must pass."""

    pytestmark = [pytest.mark.timeout(60)]

    @pytest.fixture
    def world(self, store: Store) -> World:
        return make_world(store)

    # -- hooks -------------------------------------------------------------------------

    def test_create_hook_returns_the_stored_hook(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        hook = hooks.create_hook(repo_id=world.repo.id, org_id=None, url="https://ci.example/hook",
                                 content_type=ContentType.FORM, secret="s3cret", insecure_ssl=True,
                                 events=("push", "issues"), active=False)
        assert (hook.repo_id, hook.org_id, hook.url, hook.content_type, hook.secret, hook.insecure_ssl,
                hook.events, hook.active) == (world.repo.id, None, "https://ci.example/hook", ContentType.FORM,
                                              "s3cret", True, ("push", "issues"), False)
        assert hook.created_at == hook.updated_at == clock.current
        assert hooks.get_hook(hook.id) == hook
        assert hooks.get_hook(hook.id + 1000) is None
        org_hook = new_hook(hooks, org=world.org)
        assert org_hook.id > hook.id
        assert (org_hook.repo_id, org_hook.org_id) == (None, world.org.id)
        assert hooks.get_hook(org_hook.id) == org_hook

    def test_list_hooks_and_hooks_for(self, hooks: HookStore, world: World) -> None:
        on_org_repo = new_hook(hooks, repo=world.org_repo)
        on_org = new_hook(hooks, org=world.org)
        on_mine = new_hook(hooks, repo=world.repo)
        on_other = new_hook(hooks, repo=world.other_repo)
        second_on_org_repo = new_hook(hooks, repo=world.org_repo, url="https://hooks.example/y")
        assert hooks.list_hooks() == [on_org_repo, on_org, on_mine, on_other, second_on_org_repo]
        assert hooks.list_hooks(repo_id=world.org_repo.id) == [on_org_repo, second_on_org_repo]
        assert hooks.list_hooks(org_id=world.org.id) == [on_org]
        assert hooks.list_hooks(repo_id=world.repo.id + 1000) == []
        # A repository's hooks and its owner's, by id.
        assert hooks.hooks_for(world.org_repo.id, world.org.id) == [on_org_repo, on_org, second_on_org_repo]
        assert hooks.hooks_for(world.repo.id, world.user.id) == [on_mine]

    def test_save_hook_changes_the_settings(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        hook = new_hook(hooks, repo=world.repo)
        clock.current += HOUR
        saved = hooks.save_hook(dataclasses.replace(hook, url="https://new.example/", content_type=ContentType.FORM,
                                                    secret="new", insecure_ssl=True, events=("*",), active=False))
        assert saved == dataclasses.replace(hook, url="https://new.example/", content_type=ContentType.FORM,
                                            secret="new", insecure_ssl=True, events=("*",), active=False,
                                            updated_at=T0 + HOUR)
        assert hooks.get_hook(hook.id) == saved
        assert hooks.list_hooks(repo_id=world.repo.id) == [saved]

    def test_delete_hook_takes_its_deliveries(self, hooks: HookStore, world: World) -> None:
        doomed, kept = new_hook(hooks, repo=world.repo), new_hook(hooks, repo=world.repo)
        gone = [queue(hooks, doomed, world.repo) for _ in range(3)]
        deliver(hooks, gone[0], T0)
        fail(hooks, hooks.get_delivery(gone[1].id) or gone[1], T0)
        stays = queue(hooks, kept, world.repo)
        assert hooks.delete_hook(doomed.id)
        assert not hooks.delete_hook(doomed.id)
        assert hooks.get_hook(doomed.id) is None
        assert hooks.list_hooks() == [kept] and hooks.hooks_for(world.repo.id, world.user.id) == [kept]
        assert hooks.list_deliveries(doomed.id, limit=10) == []
        assert all(hooks.get_delivery(d.id) is None and hooks.attempts(d.id) == [] for d in gone)
        assert hooks.last_attempt(doomed.id) is None
        assert _ids(hooks.due(T0 + 2 * HOUR, 10)) == [stays.id]
        figures = hooks.figures()
        assert (figures.pending, figures.attempts, figures.failed_attempts, figures.failing_hooks) == (1, 0, 0, 0)
        # A delivery of the deleted hook recorded late is dropped.
        hooks.record_attempt(gone[2], at=T0, status_code=200, duration_ms=1, request_headers={},
                             response_headers={}, response_body="", error="", state=DeliveryState.DELIVERED,
                             next_at=None)
        assert hooks.get_delivery(gone[2].id) is None and hooks.figures().attempts == 0

    # -- the outbox ----------------------------------------------------------------------

    def test_enqueue_returns_the_pending_delivery(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        hook = new_hook(hooks, org=world.org)
        first = hooks.enqueue(hook.id, world.org_repo.id, "push", None, '{"ref": "refs/heads/main"}')
        assert first is not None
        assert (first.hook_id, first.repo_id, first.event, first.action, first.payload, first.state,
                first.attempts, first.created_at, first.next_at, first.redelivery, first.delivered_at,
                first.status_code, first.duration_ms) == (
            hook.id, world.org_repo.id, "push", None, '{"ref": "refs/heads/main"}', DeliveryState.PENDING,
            0, clock.current, clock.current, False, None, None, None)
        assert first.guid
        assert hooks.get_delivery(first.id) == first
        clock.current += SECOND
        again = hooks.enqueue(hook.id, None, "repository", "renamed", "{}", guid=first.guid, redelivery=True)
        assert again is not None and again.id > first.id
        assert (again.guid, again.repo_id, again.action, again.redelivery, again.created_at) == (
            first.guid, None, "renamed", True, T0 + SECOND)
        assert hooks.get_delivery(again.id) == again
        assert hooks.get_delivery(again.id + 1000) is None
        other = queue(hooks, hook, world.org_repo)
        assert other.guid not in (first.guid, "")

    def test_enqueue_for_a_deleted_hook_gives_none(self, hooks: HookStore, world: World) -> None:
        hook = new_hook(hooks, repo=world.repo)
        assert hooks.delete_hook(hook.id)
        assert hooks.enqueue(hook.id, world.repo.id, "push", None, "{}") is None
        assert hooks.enqueue(hook.id + 1000, world.repo.id, "push", None, "{}") is None
        assert hooks.due(T0 + HOUR, 10) == [] and hooks.next_due_at() is None
        assert hooks.figures().pending == 0

    def test_due_gives_the_oldest_of_each_hook_and_repository(
        self, hooks: HookStore, world: World, clock: FakeClock
    ) -> None:
        org_hook, repo_hook = new_hook(hooks, org=world.org), new_hook(hooks, repo=world.org_repo)
        a1 = queue(hooks, org_hook, world.org_repo)
        clock.current += SECOND
        b1 = queue(hooks, org_hook, world.other_repo)
        clock.current += SECOND
        a2 = queue(hooks, org_hook, world.org_repo)
        clock.current += SECOND
        ping = queue(hooks, org_hook, None, "ping")
        clock.current += SECOND
        c1 = queue(hooks, repo_hook, world.org_repo)  # another hook: a lane of its own
        later = T0 + 10 * SECOND
        assert _ids(hooks.due(later, 10)) == [a1.id, b1.id, ping.id, c1.id]
        assert _ids(hooks.due(later, 2)) == [a1.id, b1.id]
        assert hooks.due(later, 0) == []
        # Only what is due by ``now``.
        assert _ids(hooks.due(T0 + SECOND // 2, 10)) == [a1.id]
        assert hooks.due(T0 - SECOND, 10) == []
        assert hooks.due(later, 10)[0] == hooks.get_delivery(a1.id)
        # A head waiting in back-off holds its lane, no other.
        fail(hooks, a1, T0 + 5 * SECOND)
        assert _ids(hooks.due(later, 10)) == [b1.id, ping.id, c1.id]
        assert _ids(hooks.due(T0 + HOUR + 5 * SECOND, 10)) == [b1.id, ping.id, c1.id, a1.id]
        # Once it is through, the next of its lane is due, by its own next_at.
        deliver(hooks, hooks.get_delivery(a1.id) or a1, T0 + HOUR)
        assert _ids(hooks.due(T0 + HOUR, 10)) == [b1.id, a2.id, ping.id, c1.id]

    def test_due_orders_by_next_at_then_id(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        first, second, third = (new_hook(hooks, repo=world.repo) for _ in range(3))
        # One instant for all: the order is the order they were queued in, not the hooks'.
        on_third = queue(hooks, third, world.repo)
        on_first = queue(hooks, first, world.repo)
        on_second = queue(hooks, second, world.repo)
        assert _ids(hooks.due(clock.current, 10)) == [on_third.id, on_first.id, on_second.id]
        fail(hooks, on_third, T0, retry_in=2 * SECOND)
        fail(hooks, on_first, T0, retry_in=3 * SECOND)
        assert _ids(hooks.due(T0 + 5 * SECOND, 10)) == [on_second.id, on_third.id, on_first.id]
        assert _ids(hooks.due(T0 + 2 * SECOND, 10)) == [on_second.id, on_third.id]

    def test_next_due_at(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        assert hooks.next_due_at() is None
        hook = new_hook(hooks, org=world.org)
        clock.current += SECOND
        first = queue(hooks, hook, world.org_repo)
        clock.current += SECOND
        second = queue(hooks, hook, world.other_repo)
        assert hooks.next_due_at() == T0 + SECOND
        fail(hooks, first, T0 + 5 * SECOND)
        assert hooks.next_due_at() == T0 + 2 * SECOND
        deliver(hooks, second, T0 + 6 * SECOND)
        assert hooks.next_due_at() == T0 + 5 * SECOND + HOUR
        _attempt(hooks, hooks.get_delivery(first.id) or first, T0 + 2 * HOUR, 410, DeliveryState.GAVE_UP)
        assert hooks.next_due_at() is None

    def test_record_attempt_keeps_the_outcome(self, hooks: HookStore, world: World) -> None:
        hook = new_hook(hooks, repo=world.repo)
        delivery = queue(hooks, hook, world.repo)
        failed = _attempt(hooks, delivery, T0 + SECOND, None, DeliveryState.PENDING, T0 + HOUR)
        assert (failed.state, failed.attempts, failed.next_at, failed.delivered_at, failed.status_code,
                failed.duration_ms) == (DeliveryState.PENDING, 1, T0 + HOUR, T0 + SECOND, None, 25)
        assert (failed.guid, failed.payload, failed.created_at) == (delivery.guid, delivery.payload,
                                                                    delivery.created_at)
        done = _attempt(hooks, failed, T0 + HOUR, 204, DeliveryState.DELIVERED)
        # A finished delivery's next_at is the time of its last attempt.
        assert (done.state, done.attempts, done.next_at, done.delivered_at, done.status_code) == (
            DeliveryState.DELIVERED, 2, T0 + HOUR, T0 + HOUR, 204)
        first, second = hooks.attempts(delivery.id)
        assert first.id < second.id
        assert (first.delivery_id, first.at, first.status_code, first.duration_ms, first.request_headers,
                first.response_headers, first.response_body, first.error, first.ok) == (
            delivery.id, T0 + SECOND, None, 25, {"X-Try": "1"}, {"Server": "test"}, "", "connection refused", False)
        assert (second.at, second.status_code, second.response_body, second.error, second.ok) == (
            T0 + HOUR, 204, "fine", "", True)
        assert hooks.attempts(delivery.id + 1000) == []
        assert hooks.due(T0 + 2 * HOUR, 10) == []
        given_up = _attempt(hooks, queue(hooks, hook, world.repo), T0, 500, DeliveryState.GAVE_UP)
        assert (given_up.state, given_up.attempts, given_up.status_code) == (DeliveryState.GAVE_UP, 1, 500)
        assert hooks.figures().gave_up == 1
        # Sent by hand after giving up: no longer given up.
        sent = _attempt(hooks, given_up, T0 + HOUR, 200, DeliveryState.DELIVERED)
        assert (sent.state, sent.attempts, sent.delivered_at) == (DeliveryState.DELIVERED, 2, T0 + HOUR)
        assert hooks.figures().gave_up == 0

    def test_a_success_after_failures_releases_the_hooks_back_off(
        self, hooks: HookStore, world: World, clock: FakeClock
    ) -> None:
        hook, other_hook = new_hook(hooks, org=world.org), new_hook(hooks, org=world.org)
        a, b = queue(hooks, hook, world.org_repo), queue(hooks, hook, world.other_repo)
        clock.current += HOUR
        fresh = queue(hooks, hook, None, "ping")  # due after the success below, but never tried: not released
        clock.current = T0
        elsewhere = queue(hooks, other_hook, world.org_repo)
        a = fail(hooks, a, T0 + SECOND)
        b = fail(hooks, b, T0 + SECOND, retry_in=3 * HOUR)
        elsewhere = fail(hooks, elsewhere, T0 + SECOND)
        soon = fail(hooks, queue(hooks, hook, world.repo), T0 + SECOND, retry_in=SECOND)
        deliver(hooks, a, T0 + 10 * SECOND)
        # What waited in back-off for this hook goes now; the rest keeps its time.
        assert hooks.get_delivery(b.id) == dataclasses.replace(b, next_at=T0 + 10 * SECOND)
        assert hooks.get_delivery(soon.id) == soon
        assert hooks.get_delivery(fresh.id) == fresh
        assert hooks.get_delivery(elsewhere.id) == elsewhere
        assert _ids(hooks.due(T0 + 10 * SECOND, 10)) == [soon.id, b.id]

    def test_a_first_time_success_releases_nothing(self, hooks: HookStore, world: World) -> None:
        hook = new_hook(hooks, org=world.org)
        waiting = fail(hooks, queue(hooks, hook, world.org_repo), T0)
        deliver(hooks, queue(hooks, hook, world.other_repo), T0 + SECOND)
        assert hooks.get_delivery(waiting.id) == waiting
        # The caller's delivery says whether it failed before, as when it was read to be sent.
        stale = queue(hooks, hook, world.repo)
        fail(hooks, stale, T0 + SECOND)
        deliver(hooks, stale, T0 + 2 * SECOND)  # as read before its failure: attempts 0
        assert hooks.get_delivery(waiting.id) == waiting

    def test_list_deliveries_newest_first(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        hook, other = new_hook(hooks, repo=world.repo), new_hook(hooks, repo=world.repo)
        mine = []
        for _ in range(5):
            clock.current += SECOND
            mine.append(queue(hooks, hook, world.repo))
            queue(hooks, other, world.repo)
        mine[1] = deliver(hooks, mine[1], T0 + HOUR)
        newest_first = list(reversed(mine))
        assert hooks.list_deliveries(hook.id, limit=10) == newest_first
        assert hooks.list_deliveries(hook.id, limit=2) == newest_first[:2]
        assert hooks.list_deliveries(hook.id, limit=2, before=mine[3].id) == [mine[2], mine[1]]
        assert hooks.list_deliveries(hook.id, limit=10, before=mine[1].id) == [mine[0]]
        assert hooks.list_deliveries(hook.id, limit=10, before=mine[0].id) == []
        assert hooks.list_deliveries(hook.id + 1000, limit=10) == []

    def test_last_attempt(self, hooks: HookStore, world: World) -> None:
        hook, other = new_hook(hooks, org=world.org), new_hook(hooks, org=world.org)
        assert hooks.last_attempt(hook.id) is None
        first, second = queue(hooks, hook, world.org_repo), queue(hooks, hook, world.other_repo)
        fail(hooks, first, T0 + SECOND)
        _attempt(hooks, second, T0 + 2 * SECOND, 202, DeliveryState.DELIVERED)
        _attempt(hooks, queue(hooks, other, world.org_repo), T0 + 3 * SECOND, 404)
        last = hooks.last_attempt(hook.id)
        assert last is not None and (last.delivery_id, last.at, last.status_code) == (second.id, T0 + 2 * SECOND,
                                                                                       202)
        assert last == hooks.attempts(second.id)[-1]
        other_last = hooks.last_attempt(other.id)
        assert other_last is not None and other_last.status_code == 404

    def test_figures(self, hooks: HookStore, world: World, clock: FakeClock) -> None:
        empty = hooks.figures()
        assert (empty.pending, empty.oldest_pending_at, empty.attempts, empty.failed_attempts, empty.gave_up,
                empty.failing_hooks) == (0, None, 0, 0, 0, 0)
        failing, recovered, quiet = (new_hook(hooks, org=world.org) for _ in range(3))
        clock.current += SECOND
        oldest = queue(hooks, failing, world.org_repo)
        clock.current += SECOND
        fail(hooks, oldest, T0 + 5 * SECOND)  # pending, 1 failed
        _attempt(hooks, queue(hooks, failing, world.other_repo), T0 + 6 * SECOND, None, DeliveryState.GAVE_UP)
        back = fail(hooks, queue(hooks, recovered, world.org_repo), T0 + 5 * SECOND)
        back = _attempt(hooks, back, T0 + 6 * SECOND, 302, DeliveryState.PENDING, T0 + HOUR)  # not 2xx: failed
        deliver(hooks, back, T0 + 7 * SECOND)
        queue(hooks, quiet, world.org_repo)
        figures = hooks.figures()
        assert (figures.pending, figures.oldest_pending_at, figures.attempts, figures.failed_attempts,
                figures.gave_up, figures.failing_hooks) == (2, T0 + SECOND, 5, 4, 1, 1)

    def test_trim_forgets_finished_deliveries_with_their_attempts(
        self, hooks: HookStore, world: World, clock: FakeClock
    ) -> None:
        hook, dead = new_hook(hooks, org=world.org), new_hook(hooks, org=world.org)
        waiting = fail(hooks, queue(hooks, hook, world.repo), T0)  # pending: never forgotten
        _attempt(hooks, queue(hooks, dead, world.repo), T0, None, DeliveryState.GAVE_UP)
        old = fail(hooks, queue(hooks, hook, world.org_repo), T0)
        old = deliver(hooks, old, T0 + HOUR)
        abandoned = _attempt(hooks, queue(hooks, hook, world.other_repo), T0 + 2 * HOUR, 500,
                             DeliveryState.GAVE_UP)
        at_cut = deliver(hooks, queue(hooks, hook, world.org_repo), T0 + 3 * HOUR)
        before = hooks.figures()
        assert (before.attempts, before.failed_attempts, before.gave_up, before.failing_hooks) == (6, 4, 2, 1)
        clock.current += 4 * HOUR
        assert hooks.trim(T0 + 3 * HOUR) == 3
        assert hooks.get_delivery(old.id) is None and hooks.attempts(old.id) == []
        assert hooks.get_delivery(abandoned.id) is None and hooks.attempts(abandoned.id) == []
        assert hooks.get_delivery(at_cut.id) == at_cut and len(hooks.attempts(at_cut.id)) == 1
        assert hooks.get_delivery(waiting.id) == waiting and len(hooks.attempts(waiting.id)) == 1
        assert hooks.list_deliveries(hook.id, limit=10) == [at_cut, waiting]
        after = hooks.figures()
        assert (after.pending, after.attempts, after.failed_attempts, after.gave_up, after.failing_hooks) == (
            1, 2, 1, 0, 0)
        last = hooks.last_attempt(hook.id)
        assert last is not None and last.delivery_id == at_cut.id
        assert hooks.last_attempt(dead.id) is None  # its only attempts were forgotten
        assert hooks.trim(T0 + 3 * HOUR) == 0
        # (Not compared from here: which attempt is the hook's latest once trim forgot it; see
        # webhooks/store_etcd.py.)
        assert hooks.trim(T0 + 5 * HOUR) == 1
        assert hooks.list_deliveries(hook.id, limit=10) == [waiting]

    # -- the refs last announced -----------------------------------------------------------

    def test_adopted_refs_are_announced(self, hooks: HookStore, world: World) -> None:
        hooks.adopt_refs(world.repo.id, {"refs/heads/main": A, "refs/tags/v1": B})
        hooks.adopt_refs(world.org_repo.id, {})
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": A, "refs/tags/v1": B}
        assert hooks.announced_refs(world.org_repo.id) == {}
        # Adopting again replaces what was there.
        hooks.adopt_refs(world.repo.id, {"refs/heads/dev": C})
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/dev": C}

    def test_note_refs_records_moves_and_forgets_deleted_refs(self, hooks: HookStore, world: World) -> None:
        hooks.adopt_refs(world.repo.id, {"refs/heads/main": A, "refs/heads/old": B})
        hooks.adopt_refs(world.org_repo.id, {"refs/heads/main": A})
        hooks.note_refs(world.repo.id, [(A, C, "refs/heads/main"), (ZERO, D, "refs/heads/new"),
                                        (B, ZERO, "refs/heads/old"), (ZERO, A, "refs/tags/t"),
                                        (A, B, "refs/tags/t")])
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": C, "refs/heads/new": D,
                                                       "refs/tags/t": B}
        assert hooks.announced_refs(world.org_repo.id) == {"refs/heads/main": A}
        hooks.note_refs(world.repo.id, [])
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": C, "refs/heads/new": D,
                                                       "refs/tags/t": B}

    def test_claim_ref_moves_a_ref_only_from_what_was_read(self, hooks: HookStore, world: World) -> None:
        hooks.adopt_refs(world.repo.id, {"refs/heads/main": A})
        assert not hooks.claim_ref(world.repo.id, "refs/heads/main", B, C)
        assert not hooks.claim_ref(world.repo.id, "refs/heads/main", None, C)
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": A}
        assert hooks.claim_ref(world.repo.id, "refs/heads/main", A, C)
        assert hooks.claim_ref(world.repo.id, "refs/heads/new", None, D)
        assert not hooks.claim_ref(world.repo.id, "refs/heads/new", None, B)
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": C, "refs/heads/new": D}
        assert hooks.claim_ref(world.repo.id, "refs/heads/new", D, None)
        assert not hooks.claim_ref(world.repo.id, "refs/heads/new", D, None)
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": C}
        # A push recorded since the reading wins.
        hooks.note_refs(world.repo.id, [(C, A, "refs/heads/main")])
        assert not hooks.claim_ref(world.repo.id, "refs/heads/main", C, B)
        assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": A}
