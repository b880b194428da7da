"""The same git scenarios over smart HTTP and over SSH, against one `bulwark serve`.

Both transports sit on one git service, so each scenario must end the same way on both: the same
refs, the same refusals in the same words (as far as each git transport lets a server speak).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import Server, bulwark, git
from tests.support.ssh_helpers import Client, add_key

pytestmark = [pytest.mark.timeout(180), pytest.mark.system]

TRANSPORTS = ["http", "ssh"]


@dataclass
class Developer:
    """One user, reaching the server over one transport."""

    login: str
    token: str
    transport: str
    server: Server
    client: Client

    def url(self, full_name: str) -> str:
        if self.transport == "ssh":
            return f"ssh://git@{self.server.host}:{self.server.ssh_port}/{full_name}.git"
        owner, name = full_name.split("/")
        return self.server.remote(owner, name, user=self.login, token=self.token)

    @property
    def env(self) -> dict[str, str]:
        return self.client.env()

    def git(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        r = git(*args, cwd=cwd, env=self.env, check=check)
        return r.stdout + r.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path_factory.mktemp("transports") / "data", ssh=True).start().wait_for_ssh()
    try:
        yield srv
    finally:
        srv.stop()


_serial = iter(range(1000))


def developer(server: Server, transport: str, root: Path, name: str = "dev") -> Developer:
    login = f"{name}{next(_serial)}"
    token = server.create_user(login)
    client = Client.make(root, login)
    client.trust(server)
    add_key(server, token, client)
    return Developer(login, token, transport, server, client)


@pytest.fixture(params=TRANSPORTS)
def dev(request: pytest.FixtureRequest, server: Server, tmp_path: Path) -> Developer:
    return developer(server, request.param, tmp_path)


def work_tree(dev: Developer, repo: str, path: Path) -> Path:
    dev.git("clone", "-q", dev.url(f"{dev.login}/{repo}"), str(path))
    dev.git("checkout", "-qb", "main", cwd=path)
    return path


def commit(dev: Developer, work: Path, name: str) -> str:
    (work / name).write_text(f"{name}\n")
    dev.git("add", name, cwd=work)
    dev.git("commit", "-qm", f"add {name}", cwd=work)
    return dev.git("rev-parse", "HEAD", cwd=work).strip()


def test_clone_push_fetch_in_both_protocol_versions(dev: Developer, tmp_path: Path) -> None:
    dev.server.create_repo(dev.token, "app")
    work = work_tree(dev, "app", tmp_path / "w")
    commit(dev, work, "a.txt")
    dev.git("push", "-q", "origin", "main", cwd=work)
    for version in ("0", "2"):
        clone = tmp_path / f"v{version}"
        dev.git("-c", f"protocol.version={version}", "clone", "-q", dev.url(f"{dev.login}/app"), str(clone))
        head = commit(dev, work, f"more-{version}.txt")
        dev.git("push", "-q", "origin", "main", cwd=work)
        dev.git("-c", f"protocol.version={version}", "pull", "-q", "--ff-only", cwd=clone)
        assert dev.git("rev-parse", "HEAD", cwd=clone).strip() == head
    # Tags and a second branch, then a shallow clone of one of them.
    dev.git("tag", "v1", cwd=work)
    dev.git("push", "-q", "origin", "v1", "main:other", cwd=work)
    refs = dev.git("ls-remote", dev.url(f"{dev.login}/app"))
    assert "refs/tags/v1" in refs and "refs/heads/other" in refs
    shallow = tmp_path / "shallow"
    dev.git("clone", "-q", "--depth", "1", "--branch", "other", dev.url(f"{dev.login}/app"), str(shallow))
    assert dev.git("rev-list", "--count", "HEAD", cwd=shallow).strip() == "1"


def test_a_refused_ref_update_is_reported_by_git(dev: Developer, tmp_path: Path) -> None:
    dev.server.create_repo(dev.token, "app")
    work = work_tree(dev, "app", tmp_path / "w")
    commit(dev, work, "a.txt")
    dev.git("push", "-q", "origin", "main", cwd=work)
    out = dev.git("push", "origin", ":main", cwd=work, check=False)
    assert "[remote rejected] main (deletion of the current branch prohibited)" in out, out


def test_readers_may_fetch_but_not_push_and_strangers_see_nothing(dev: Developer, tmp_path: Path) -> None:
    dev.server.create_repo(dev.token, "secret", private=True)
    work = work_tree(dev, "secret", tmp_path / "w")
    commit(dev, work, "a.txt")
    dev.git("push", "-q", "origin", "main", cwd=work)
    reader = developer(dev.server, dev.transport, tmp_path, "reader")
    full = f"{dev.login}/secret"
    out = reader.git("ls-remote", reader.url(full), check=False)
    assert "not found" in out.lower(), out
    r = dev.server.api("PUT", f"/repos/{full}/collaborators/{reader.login}", token=dev.token,
                       json={"permission": "pull"})
    assert r.status_code in (201, 204), r.text
    clone = tmp_path / "reader"
    reader.git("clone", "-q", reader.url(full), str(clone))
    reader.git("checkout", "-q", "main", cwd=clone)
    commit(reader, clone, "b.txt")
    out = reader.git("push", "origin", "main", cwd=clone, check=False)
    assert f"you need write access to {full}" in out, out
    assert dev.git("ls-remote", dev.url(full)).count("refs/heads/main") == 1


def test_maintenance_mode_turns_fetches_and_pushes_away_with_its_message(dev: Developer, tmp_path: Path) -> None:
    dev.server.create_repo(dev.token, "app")
    work = work_tree(dev, "app", tmp_path / "w")
    commit(dev, work, "a.txt")
    message = f"upgrading the disks {dev.transport}"
    on = bulwark("maintenance", "on", "--message", message, env=dev.server.env())
    assert on.returncode == 0, on.stderr
    try:
        for args in (["push", "origin", "main"], ["fetch", "origin"]):
            out = dev.git(*args, cwd=work, check=False)
            assert message in out, out
    finally:
        assert bulwark("maintenance", "off", env=dev.server.env()).returncode == 0
    dev.git("push", "-q", "origin", "main", cwd=work)


def test_a_repository_that_forbids_force_pushes_refuses_them(dev: Developer, tmp_path: Path) -> None:
    dev.server.create_repo(dev.token, "app")
    r = dev.server.api("PATCH", f"/repos/{dev.login}/app", token=dev.token, json={"allow_force_pushes": False})
    assert r.status_code == 200, r.text
    work = work_tree(dev, "app", tmp_path / "w")
    commit(dev, work, "a.txt")
    dev.git("push", "-q", "origin", "main", cwd=work)
    dev.git("commit", "-q", "--amend", "-m", "rewritten", cwd=work)
    out = dev.git("push", "--force", "origin", "main", cwd=work, check=False)
    assert "[remote rejected] main -> main" in out, out
