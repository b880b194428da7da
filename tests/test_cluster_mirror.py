"""The in-memory copy of an etcd prefix kept by a watch (``cluster/mirror.py``), on a real etcd."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from bulwark.cluster.mirror import Compacted, Mirror
from bulwark.etcd import KV, Etcd
from tests.support.etcd_helpers import clean_etcd, serve_etcd
from tests.support.helpers import free_port

pytestmark = pytest.mark.system

etcd_url = pytest.fixture(serve_etcd, scope="module", name="etcd_url")
etcd = pytest.fixture(clean_etcd, name="etcd")

PREFIX = "/bulwark/test-mirror/"


def _text(kv: KV) -> str:
    return kv.text


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the mirror did not catch up"
        time.sleep(0.02)


def test_it_holds_what_was_there_and_follows_puts_and_deletes(etcd: Etcd) -> None:
    etcd.put(PREFIX + "a", "1")
    etcd.put(PREFIX + "b", "2")
    etcd.put("/bulwark/elsewhere", "x")  # outside the prefix: never in the copy
    mirror = Mirror(etcd, PREFIX, _text, name="test", quiet=0.5)
    mirror.start()
    try:
        assert mirror.wait_ready(10)
        assert mirror.view()[1] == {"a": "1", "b": "2"}
        etcd.put(PREFIX + "a", "10")
        etcd.delete(PREFIX + "b")
        last = etcd.put(PREFIX + "c/d", "3")
        _eventually(lambda: mirror.view()[1] == {"a": "10", "c/d": "3"})
        assert mirror.view()[0] >= last
        time.sleep(1.2)  # quiet past its limit twice: the stream is opened again, nothing is lost or re-read
        etcd.put(PREFIX + "e", "4")
        _eventually(lambda: mirror.view()[1].get("e") == "4")
        assert mirror.loads == 1
    finally:
        mirror.stop()


def test_many_writers_at_once_end_in_the_same_state_as_etcd(etcd: Etcd) -> None:
    mirror = Mirror(etcd, PREFIX, _text, name="test", quiet=0.5)
    mirror.start()
    try:
        assert mirror.wait_ready(10)

        def write(worker: int) -> None:
            for n in range(40):
                key = f"{PREFIX}{(worker * 7 + n) % 25}"
                if n % 3 == 2:
                    etcd.delete(key)
                else:
                    etcd.put(key, f"{worker}-{n}")

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        truth = {kv.key[len(PREFIX):]: kv.text for kv in etcd.get_prefix(PREFIX)}
        _eventually(lambda: mirror.view()[1] == truth)
    finally:
        mirror.stop()


def test_a_watch_from_a_compacted_revision_loads_the_copy_afresh(etcd: Etcd) -> None:
    etcd.put(PREFIX + "a", "1")
    mirror = Mirror(etcd, PREFIX, _text, name="test", quiet=0.3)
    start = mirror.load() + 1  # the copy, as of now; its stream is not following
    etcd.put(PREFIX + "a", "2")
    etcd.put(PREFIX + "b", "3")
    now = etcd.put(PREFIX + "c", "4")
    etcd.delete(PREFIX + "c")
    etcd.call("/kv/compaction", {"revision": str(now), "physical": True})
    with pytest.raises(Compacted):
        mirror.follow(start)
    assert mirror.step(start) == 0  # told to load again
    after = mirror.step(0)  # loads, then follows until quiet
    assert after > now
    assert mirror.view()[1] == {"a": "2", "b": "3"}
    assert mirror.loads == 2


def test_values_that_do_not_decode_are_left_out(etcd: Etcd) -> None:
    etcd.put(PREFIX + "good", "1")
    etcd.put(PREFIX + "bad", "x")
    mirror = Mirror(etcd, PREFIX, lambda kv: int(kv.text), name="test", quiet=0.3)
    mirror.load()
    assert mirror.view()[1] == {"good": 1}


def test_it_follows_through_the_member_that_answers(etcd_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = Etcd([dead, etcd_url], timeout=1.0)
    try:
        client.delete(PREFIX, prefix=True)
        mirror = Mirror(client, PREFIX, _text, name="test", quiet=0.5)
        mirror.start()
        try:
            assert mirror.wait_ready(10)
            client.put(PREFIX + "x", "1")
            _eventually(lambda: mirror.view()[1] == {"x": "1"})
        finally:
            mirror.stop()
    finally:
        client.delete(PREFIX, prefix=True)
        client.close()
