"""The webhook stores: the contract against SQLite and against etcd (the fake and a real one), plus what
only the etcd one has (refs unknown until adopted, etcd's transaction limit, several nodes at once)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from bulwark.errors import StoreError
from bulwark.etcd import Etcd
from bulwark.store.etcd import EtcdStore
from bulwark.store.sqlite import SQLiteStore
from bulwark.webhooks.models import DeliveryState
from bulwark.webhooks.store_etcd import EtcdHooks
from bulwark.webhooks.store_sqlite import SQLiteHooks
from tests.support import helpers
from tests.support.etcd_helpers import BACKENDS, any_etcd, fresh_prefix
from tests.support.helpers import FakeClock
from tests.support.hooks_contract import (
    SECOND,
    T0,
    HookStoreContract,
    World,
    deliver,
    fail,
    make_world,
    new_hook,
    queue,
)

pytestmark = pytest.mark.timeout(60)

# One etcd for the module, the fake (fast tier) or a real one (system tier); every test uses its own
# key prefix, removed after it.
etcd = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd")
run_in_threads = functools.partial(helpers.run_in_threads, timeout=50)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


class TestSQLiteHooks(HookStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path, clock: FakeClock) -> Iterator[SQLiteStore]:
        s = SQLiteStore(tmp_path / "meta.db", clock=clock)
        yield s
        s.close()

    @pytest.fixture
    def hooks(self, store: SQLiteStore) -> SQLiteHooks:
        return SQLiteHooks(store)


prefix = pytest.fixture(fresh_prefix, name="prefix")


@pytest.fixture
def store(etcd: Etcd, prefix: str, clock: FakeClock) -> Iterator[EtcdStore]:
    s = EtcdStore(etcd, prefix=prefix, clock=clock)
    yield s
    s.close()


@pytest.fixture
def hooks(store: EtcdStore) -> EtcdHooks:
    return EtcdHooks(store)


class TestEtcdHooks(HookStoreContract):
    pass


# -- etcd only -------------------------------------------------------------------------


def _keys(etcd: Etcd, prefix: str) -> list[str]:
    return [kv.key.removeprefix(prefix) for kv in etcd.get_prefix(prefix + "webhooks/", keys_only=True)]


def _keys_of_hook(etcd: Etcd, prefix: str, hook_id: int) -> list[str]:
    """The keys that name the hook: ``webhooks/<family>/<hook>/...``, or an index's ``.../<hook>``."""
    padded = f"{hook_id:012d}"
    return [key for key in _keys(etcd, prefix)
            if key.split("/")[2] == padded or (key.startswith("webhooks/hooks-of/") and key.endswith(padded))]


def test_refs_are_unknown_until_adopted(hooks: EtcdHooks, store: EtcdStore) -> None:
    world = make_world(store)
    assert hooks.announced_refs(world.repo.id) is None
    # A push noted before the first reading is kept, but does not make the refs known.
    hooks.note_refs(world.repo.id, [("0" * 40, "a" * 40, "refs/heads/main"), ("0" * 40, "b" * 40, "refs/heads/x")])
    assert hooks.announced_refs(world.repo.id) is None
    assert hooks.claim_ref(world.repo.id, "refs/heads/main", "a" * 40, "c" * 40)
    assert hooks.announced_refs(world.repo.id) is None
    hooks.adopt_refs(world.repo.id, {"refs/heads/main": "d" * 40})
    assert hooks.announced_refs(world.repo.id) == {"refs/heads/main": "d" * 40}
    assert hooks.announced_refs(world.org_repo.id) is None


def test_a_hook_and_its_deliveries_are_kept_under_keys_naming_it(
    etcd: Etcd, prefix: str, hooks: EtcdHooks, store: EtcdStore
) -> None:
    world = make_world(store)
    hook = new_hook(hooks, org=world.org)
    delivered = deliver(hooks, queue(hooks, hook, world.org_repo), T0)
    waiting = queue(hooks, hook, world.other_repo)
    hooks.adopt_refs(world.repo.id, {"refs/heads/main": "a" * 40})
    h, r = f"{hook.id:012d}", f"{world.repo.id:012d}"
    d, w = f"{delivered.id:012d}", f"{waiting.id:012d}"
    assert set(_keys(etcd, prefix)) == {
        f"webhooks/hooks/{h}", f"webhooks/hooks-of/org/{world.org.id:012d}/{h}",
        f"webhooks/deliveries/{h}/{d}", f"webhooks/deliveries/{h}/{w}",
        f"webhooks/attempts/{h}/{d}/{1:012d}", f"webhooks/pending/{h}/{w}",
        f"webhooks/finished/{h}/2030-01-01T12:00:00.000000+00:00/{d}", f"webhooks/stats/{h}",
        f"webhooks/refs/{r}/refs/heads/main", f"webhooks/refs-known/{r}",
    }
    assert hooks.delete_hook(hook.id)
    assert set(_keys(etcd, prefix)) == {f"webhooks/refs/{r}/refs/heads/main", f"webhooks/refs-known/{r}"}


class Small(NamedTuple):
    store: EtcdStore
    hooks: EtcdHooks
    world: World


@pytest.fixture
def small(etcd: Etcd, prefix: str, clock: FakeClock) -> Iterator[Small]:
    """A store whose transactions hold 16 operations: what does not fit must be split."""
    store = EtcdStore(etcd, prefix=prefix, clock=clock, max_txn_ops=16)
    yield Small(store, EtcdHooks(store), make_world(store))
    store.close()


def test_deleting_a_hook_takes_more_deliveries_than_one_transaction_holds(
    etcd: Etcd, prefix: str, small: Small
) -> None:
    hooks, world = small.hooks, small.world
    hook, kept = new_hook(hooks, repo=world.repo), new_hook(hooks, repo=world.repo)
    deliveries = [queue(hooks, hook, world.repo) for _ in range(40)]
    for delivery in deliveries[:20]:
        deliver(hooks, delivery, T0)
    survivor = queue(hooks, kept, world.repo)
    assert hooks.delete_hook(hook.id)
    assert _keys_of_hook(etcd, prefix, hook.id) == []
    assert _keys_of_hook(etcd, prefix, kept.id) != []
    assert hooks.due(T0 + SECOND, 100) == [survivor]
    # Trim, adopting and noting refs split what does not fit in one transaction.
    for delivery in [queue(hooks, kept, world.repo) for _ in range(30)]:
        deliver(hooks, delivery, T0)
    assert hooks.trim(T0 + SECOND) == 30
    assert hooks.figures().attempts == 0
    refs = {f"refs/tags/v{i}": f"{i:040x}" for i in range(50)}
    hooks.adopt_refs(world.repo.id, refs)
    assert hooks.announced_refs(world.repo.id) == refs
    hooks.note_refs(world.repo.id, [(oid, "0" * 40, ref) for ref, oid in refs.items()])
    assert hooks.announced_refs(world.repo.id) == {}


def test_a_success_releases_no_more_back_off_than_one_transaction_holds(small: Small) -> None:
    hooks, world = small.hooks, small.world
    hook = new_hook(hooks, org=world.org)
    repos = [small.store.create_repo(world.org.id, f"r{i}", storage_id=f"sr-{i}") for i in range(10)]
    waiting = [fail(hooks, queue(hooks, hook, repo), T0) for repo in repos]
    deliver(hooks, waiting[0], T0 + SECOND)  # the attempt itself succeeds, whatever fits is released
    released = [hooks.get_delivery(w.id) for w in waiting[1:]]
    assert hooks.get_delivery(waiting[0].id).state is DeliveryState.DELIVERED  # type: ignore[union-attr]
    assert 0 < sum(1 for d in released if d is not None and d.next_at == T0 + SECOND) < len(released)


def test_a_corrupt_value_is_a_store_error(etcd: Etcd, prefix: str, hooks: EtcdHooks, store: EtcdStore) -> None:
    world = make_world(store)
    hook = new_hook(hooks, repo=world.repo)
    delivery = queue(hooks, hook, world.repo)
    etcd.put(f"{prefix}webhooks/hooks/{hook.id:012d}", "{not json")
    with pytest.raises(StoreError, match="corrupt"):
        hooks.get_hook(hook.id)
    etcd.put(f"{prefix}webhooks/hooks/{hook.id:012d}", '{"id": "one"}')
    with pytest.raises(StoreError, match="corrupt"):
        hooks.list_hooks()
    etcd.put(f"{prefix}webhooks/pending/{hook.id:012d}/{delivery.id:012d}", '{"next": 5}')
    with pytest.raises(StoreError, match="corrupt"):
        hooks.due(T0, 10)
    with pytest.raises(StoreError, match="corrupt"):
        hooks.figures()
    etcd.put(f"{prefix}webhooks/stats/{hook.id:012d}", "[]")
    with pytest.raises(StoreError, match="corrupt"):
        hooks.last_attempt(hook.id)


def test_nodes_queue_and_record_at_once_without_losing_anything(etcd: Etcd, prefix: str, clock: FakeClock) -> None:
    nodes = [EtcdHooks(EtcdStore(etcd, prefix=prefix, clock=clock)) for _ in range(2)]
    world = make_world(nodes[0].store)
    hook = new_hook(nodes[0], org=world.org)
    repos = [nodes[0].store.create_repo(world.org.id, f"lane{i}", storage_id=f"sl-{i}") for i in range(8)]
    queued, errors = run_in_threads(8, lambda i: queue(nodes[i % 2], hook, repos[i]))
    assert not errors and len({d.id for d in queued}) == 8
    done, errors = run_in_threads(8, lambda i: deliver(nodes[i % 2], queued[i], T0 + SECOND))
    assert not errors and all(d.state is DeliveryState.DELIVERED for d in done)
    figures = nodes[1].figures()
    assert (figures.pending, figures.attempts, figures.failed_attempts) == (0, 8, 0)
    attempt_ids = [a.id for d in queued for a in nodes[0].attempts(d.id)]
    assert len(set(attempt_ids)) == 8
    # A delete racing with queueing leaves no delivery behind its hook.
    doomed = new_hook(nodes[0], org=world.org)
    _, errors = run_in_threads(
        6, lambda i: nodes[i % 2].delete_hook(doomed.id) if i == 0 else nodes[i % 2].enqueue(
            doomed.id, repos[i].id, "push", None, "{}"))
    assert not errors
    assert _keys_of_hook(etcd, prefix, doomed.id) == []
