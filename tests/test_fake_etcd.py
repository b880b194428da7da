"""What the stores rely on etcd for, checked on the fake and on a real etcd alike, so the fast tier's
fake answers as the real one does."""

from __future__ import annotations

import pytest
from etcd3gw.exceptions import Etcd3Exception

from bulwark.etcd import Compare, Etcd, Op, prefix_end
from bulwark.etcd import b64 as _b64
from tests.support.etcd_helpers import BACKENDS, any_etcd, fresh_prefix
from tests.support.fake_etcd import FakeEtcd, MemoryEtcd

pytestmark = pytest.mark.timeout(60)

etcd = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd")
prefix = pytest.fixture(fresh_prefix, name="prefix")


def test_every_write_moves_the_revision_and_keys_carry_theirs(etcd: Etcd, prefix: str) -> None:
    first = etcd.put(prefix + "a", "1")
    second = etcd.put(prefix + "a", "2")
    assert second == first + 1
    kv = etcd.get(prefix + "a")
    assert kv is not None
    assert (kv.text, kv.create_revision, kv.mod_revision, kv.version) == ("2", first, second, 2)
    assert etcd.delete(prefix + "a") == 1
    assert etcd.delete(prefix + "a") == 0
    third = etcd.put(prefix + "a", "3")
    again = etcd.get(prefix + "a")
    assert again is not None
    assert (again.create_revision, again.version) == (third, 1)


def test_prefix_and_range_reads_are_in_key_order_and_stop_at_the_limit(etcd: Etcd, prefix: str) -> None:
    for name in ["c", "a", "b", "d"]:
        etcd.put(prefix + name, name)
    etcd.put(prefix[:-1] + "~outside", "x")
    assert [kv.text for kv in etcd.get_prefix(prefix)] == ["a", "b", "c", "d"]
    assert [kv.value for kv in etcd.get_prefix(prefix, keys_only=True)] == [b""] * 4
    assert [kv.text for kv in etcd.get_range(prefix + "b", prefix_end(prefix), limit=2)] == ["b", "c"]
    assert etcd.count_prefix(prefix) == 4
    revision, kvs = etcd.read_prefix(prefix)
    assert revision >= max(kv.mod_revision for kv in kvs)
    newest = etcd.call("/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "limit": "2",
                                     "sort_order": "DESCEND", "sort_target": "KEY"})
    assert [kv["key"] for kv in newest["kvs"]] == [_b64(prefix + "d"), _b64(prefix + "c")]
    etcd.delete(prefix[:-1] + "~outside")


def test_a_transaction_runs_one_branch_at_one_revision(etcd: Etcd, prefix: str) -> None:
    won = etcd.txn([Compare.absent(prefix + "x")], [Op.put(prefix + "x", "1"), Op.put(prefix + "y", "1")])
    assert won.succeeded
    x, y = etcd.get(prefix + "x"), etcd.get(prefix + "y")
    assert x is not None and y is not None
    assert x.mod_revision == y.mod_revision == won.revision
    lost = etcd.txn([Compare.absent(prefix + "x")], [Op.put(prefix + "x", "2")], [Op.get(prefix, prefix=True)])
    assert not lost.succeeded
    assert lost.revision == won.revision  # a read-only branch writes nothing
    assert [kv.text for kv in lost.reads[0]] == ["1", "1"]
    assert etcd.txn([Compare.unchanged(prefix + "x", x.mod_revision)], [Op.delete(prefix + "x")]).succeeded
    assert etcd.txn([Compare.unchanged(prefix + "gone", 0)], []).succeeded
    assert not etcd.txn([Compare.value_is(prefix + "gone", "")], []).succeeded
    assert etcd.txn([Compare.value_is(prefix + "y", "1"), Compare.present(prefix + "y")], []).succeeded


def test_etcd_refuses_one_key_twice_in_a_transaction(etcd: Etcd, prefix: str) -> None:
    with pytest.raises(Etcd3Exception) as twice:
        etcd.txn([], [Op.put(prefix + "k", "1"), Op.put(prefix + "k", "2")])
    assert "duplicate key" in str(twice.value.detail_text)
    with pytest.raises(Etcd3Exception) as deleted_and_put:
        etcd.txn([], [Op.delete(prefix, prefix=True), Op.put(prefix + "k", "2")])
    assert "duplicate key" in str(deleted_and_put.value.detail_text)
    assert etcd.get(prefix + "k") is None


def test_a_lease_keeps_its_keys_until_it_is_revoked(etcd: Etcd, prefix: str) -> None:
    lease = etcd.grant(30)
    etcd.put(prefix + "held", "1", lease=lease)
    assert etcd.keepalive(lease) == 30
    kv = etcd.get(prefix + "held")
    assert kv is not None and kv.lease == lease
    etcd.revoke(lease)
    assert etcd.get(prefix + "held") is None
    assert etcd.keepalive(lease) == 0
    etcd.revoke(lease)  # already gone: nothing to do
    with pytest.raises(Etcd3Exception) as orphan:
        etcd.put(prefix + "orphan", "1", lease=lease)
    assert "lease not found" in str(orphan.value.detail_text)


def test_the_fake_expires_a_lease_on_its_clock_and_can_be_cut_off() -> None:
    now = [100.0]
    fake = FakeEtcd(MemoryEtcd(clock=lambda: now[0]))
    lease = fake.grant(5)
    fake.put("/k", "v", lease=lease)
    now[0] += 4
    assert fake.keepalive(lease) == 5
    now[0] += 4.9
    assert fake.get("/k") is not None
    now[0] += 0.2
    assert fake.get("/k") is None
    assert fake.keepalive(lease) == 0
    fake.unavailable = True
    assert not fake.endpoint_healthy(fake.endpoints[0])
    with pytest.raises(Exception, match="unreachable"):
        fake.get("/k")
