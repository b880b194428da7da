"""One real etcd server for a test module.

The functions at the end are plain generators; a test module turns them into fixtures::

    etcd_url = pytest.fixture(serve_etcd, scope="module", name="etcd_url")
    etcd = pytest.fixture(clean_etcd, name="etcd")
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulwark.etcd import Etcd
from tests.support.fake_etcd import FakeEtcd
from tests.support.helpers import free_port

ETCD = "/usr/bin/etcd"  # etcd 3.4
START_TIMEOUT = 30.0
STOP_GRACE = 10.0


class EtcdServer:
    """One etcd member on loopback ports, with its data and log under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self.log_path = data_dir / "etcd.log"
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    ETCD, "--name", "t1", "--data-dir", str(data_dir / "data"),
                    "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                    "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"t1={peer_url}",
                    "--max-txn-ops", "4096",
                ],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        client = Etcd([self.url], timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"etcd exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    client.get("/probe")
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        pytest.fail(f"etcd did not answer within {START_TIMEOUT:g} s:\n{self.log()}")
                    time.sleep(0.1)
        finally:
            client.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop this server's own process: terminate, then kill after a grace period."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_GRACE)


@contextlib.contextmanager
def etcd_server(data_dir: Path) -> Iterator[EtcdServer]:
    """A running etcd server, stopped on exit; skips the test when etcd is not installed."""
    if not Path(ETCD).exists():
        pytest.skip(f"etcd is not installed ({ETCD} not found)")
    server = EtcdServer(data_dir)
    try:
        yield server
    finally:
        server.stop()


def serve_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """For a module-scoped ``etcd_url`` fixture: one etcd server for the module, by its client URL."""
    with etcd_server(tmp_path_factory.mktemp("etcd")) as server:
        yield server.url


def etcd_client(etcd_url: str) -> Iterator[Etcd]:
    """For an ``etcd`` fixture: a client of the module's server, closed afterwards."""
    with contextlib.closing(Etcd([etcd_url])) as client:
        yield client


def clean_etcd(etcd_url: str) -> Iterator[Etcd]:
    """For an ``etcd`` fixture: a client of the module's server, with ``/bulwark/`` emptied before and after."""
    with contextlib.closing(Etcd([etcd_url])) as client:
        client.delete("/bulwark/", prefix=True)
        try:
            yield client
        finally:
            client.delete("/bulwark/", prefix=True)


def fresh_prefix(etcd: Etcd) -> Iterator[str]:
    """For a ``prefix`` fixture: a key prefix no other test uses, removed again after the test."""
    value = f"/test/{uuid.uuid4().hex}/"
    yield value
    etcd.delete(value, prefix=True)


# The two etcds a test written against :class:`Etcd` runs on: the in-memory fake in the fast tier,
# a real server in the system tier.
BACKENDS = [pytest.param("fake", id="fake-etcd"), pytest.param("real", id="etcd", marks=pytest.mark.system)]


def any_etcd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """For a module-scoped ``etcd`` fixture with ``params=BACKENDS``: a client of the fake or of a real server."""
    if request.param == "fake":
        yield FakeEtcd()
        return
    with etcd_server(tmp_path_factory.mktemp("etcd")) as server, contextlib.closing(Etcd([server.url])) as client:
        yield client


def clean_backend(etcd_backend: Etcd) -> Iterator[Etcd]:
    """For an ``etcd`` fixture over a module-scoped ``etcd_backend`` (``any_etcd``): ``/bulwark/`` emptied
    before and after the test."""
    etcd_backend.delete("/bulwark/", prefix=True)
    try:
        yield etcd_backend
    finally:
        etcd_backend.delete("/bulwark/", prefix=True)
