"""Git over SSH against a real `bulwark serve`, with the real OpenSSH client and git.

Every client here checks the server's host key strictly against a known_hosts file written from
``/api/v3/meta``, so a changed host key fails the test as it would alarm a developer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.ssh import commands
from tests.support.ha_helpers import HAProxy, repl, setup_replica, wait_for
from tests.support.helpers import Server, bulwark, free_port, git
from tests.support.monitoring_helpers import scrape
from tests.support.ssh_helpers import Client, add_key, url

pytestmark = [pytest.mark.timeout(180), pytest.mark.system]


def commit(work: Path, env: dict[str, str], name: str) -> str:
    (work / name).write_text(f"{name}\n")
    git("add", name, cwd=work, env=env)
    git("commit", "-qm", f"add {name}", cwd=work, env=env)
    return git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ssh")
    srv = Server(data_dir=root / "data", ssh=True, extra_env={"BULWARK_SSH_IDLE_TIMEOUT": "4"}).start()
    srv.wait_for_ssh()
    try:
        yield srv
    finally:
        srv.stop()


_users = iter(range(1000))


@pytest.fixture
def alice(server: Server, tmp_path: Path) -> tuple[str, str, Client]:
    """A fresh user (named uniquely in the module's server), a token, and a trusting client with its key."""
    login = f"alice{next(_users)}"
    token = server.create_user(login)
    client = Client.make(tmp_path, login)
    client.trust(server)
    add_key(server, token, client)
    return login, token, client


# -- the commands a session may run --------------------------------------------------------


@pytest.mark.parametrize("command, expected", [
    ("git-upload-pack 'alice/app.git'", ("upload-pack", "alice", "app")),
    ("git-receive-pack '/alice/app.git'", ("receive-pack", "alice", "app")),
    ("git upload-pack 'alice/app'", ("upload-pack", "alice", "app")),
    ("git-upload-archive 'alice/app.git'", ("upload-archive", "alice", "app")),
    ("git-upload-pack '~/alice/app.git'", None),
    ("git-upload-pack '../../etc'", None),
    ("git-upload-pack 'alice/app; touch /tmp/x'", None),
    ("git-upload-pack 'alice/app' --extra", None),
    ("git-upload-pack 'alice/../etc/app'", None),
    ("git-upload-pack 'alice/app\x00'", None),
    ("rm -rf /", None),
    ("git-shell", None),
    ("scp -t /tmp", None),
])
def test_commands_are_git_services_on_a_repository_and_nothing_else(
        command: str, expected: tuple[str, str, str] | None) -> None:
    if expected is None:
        with pytest.raises(commands.NotAGitCommand):
            commands.parse(command)
        return
    asked = commands.parse(command)
    assert (asked.service, asked.owner, asked.name) == expected


# -- clone, push, fetch ----------------------------------------------------------------------


def test_clone_push_fetch_and_archive_over_ssh_in_both_url_forms(server: Server, alice: tuple[str, str, Client],
                                                                  tmp_path: Path) -> None:
    login, token, client = alice
    repo = server.create_repo(token, "app")
    assert repo["ssh_url"] == url(server, f"{login}/app")
    env = client.env()
    work = tmp_path / "work"
    git("clone", "-q", url(server, f"{login}/app"), str(work), env=env)  # protocol v2: GIT_PROTOCOL sent
    git("checkout", "-qb", "main", cwd=work, env=env)
    first = commit(work, env, "a.txt")
    push = git("push", "origin", "main", cwd=work, env=env)
    assert "[new branch]" in push.stderr

    # The scp form: the port comes from the ssh command, as with a Host entry in ~/.ssh/config.
    scp_env = client.env(port=server.ssh_port)
    for version in ("2", "0"):
        other = tmp_path / f"clone-v{version}"
        git("-c", f"protocol.version={version}", "clone", "-q", f"git@{server.host}:{login}/app.git", str(other),
            env=scp_env)
        assert git("rev-parse", "HEAD", cwd=other, env=env).stdout.strip() == first

    second = commit(work, env, "b.txt")
    git("push", "-q", "origin", "main", cwd=work, env=env)
    for version in ("2", "0"):
        other = tmp_path / f"clone-v{version}"
        git("-c", f"protocol.version={version}", "pull", "-q", "--ff-only", cwd=other, env=scp_env)
        assert git("rev-parse", "HEAD", cwd=other, env=env).stdout.strip() == second
        # Nothing new: the advertisement (kept, for v2) and nothing else.
        assert git("-c", f"protocol.version={version}", "fetch", cwd=other, env=scp_env).returncode == 0

    listing = subprocess.run(
        ["git", "archive", f"--remote={url(server, f'{login}/app')}", "main"], env=env, capture_output=True,
        timeout=60)
    assert listing.returncode == 0, listing.stderr
    names = subprocess.run(["tar", "t"], input=listing.stdout, capture_output=True, check=True).stdout.split()
    assert sorted(names) == [b"a.txt", b"b.txt"]

    # The push is recorded as any push is: the API sees the new head.
    branch = server.api("GET", f"/repos/{login}/app/branches/main", token=token).json()
    assert branch["commit"]["sha"] == second
    keys = server.api("GET", "/user/keys", token=token).json()
    assert keys[0]["last_used"] is not None


def test_a_rejected_push_reaches_the_developer_in_gits_words(server: Server, alice: tuple[str, str, Client],
                                                             tmp_path: Path) -> None:
    login, token, client = alice
    server.create_repo(token, "strict")
    env = client.env()
    work = tmp_path / "w"
    git("clone", "-q", url(server, f"{login}/strict"), str(work), env=env)
    git("checkout", "-qb", "main", cwd=work, env=env)
    commit(work, env, "a.txt")
    git("push", "-q", "origin", "main", cwd=work, env=env)
    # The default branch may not be deleted: git's refusal, in git's words.
    r = git("push", "origin", ":main", cwd=work, env=env, check=False)
    assert r.returncode != 0
    assert "[remote rejected] main (deletion of the current branch prohibited)" in r.stderr, r.stderr


# -- refusals --------------------------------------------------------------------------------


def test_sessions_that_are_not_git_get_a_greeting_and_exit_status_1(server: Server,
                                                                    alice: tuple[str, str, Client]) -> None:
    login, _, client = alice
    for tty in (False, True):
        r = client.ssh(server, tty=tty)
        assert r.returncode == 1, r
        out = (r.stdout + r.stderr).decode()
        assert f"Hi {login}! You've successfully authenticated, but Bulwark does not provide shell access." in out
    for command in ("ls /", "git-upload-pack '../../etc'", f"git-upload-pack '{login}/app; touch /tmp/bwk-x'",
                    "sftp-server"):
        r = client.ssh(server, command)
        assert r.returncode == 1
        assert r.stderr.startswith(b"ERROR: "), r.stderr
    assert not Path("/tmp/bwk-x").exists()
    r = subprocess.run([*client.ssh_command(server.ssh_port), "-s", f"git@{server.host}", "sftp"],
                       capture_output=True, timeout=30)
    assert r.returncode == 255 and b"subsystem request failed" in r.stderr  # no sftp
    # Port forwarding, both ways: the server will not reach the node's own HTTP port for a client.
    r = subprocess.run([*client.ssh_command(server.ssh_port), "-W", f"127.0.0.1:{server.port}",
                        f"git@{server.host}"], capture_output=True, timeout=30)
    assert r.returncode == 255 and b"open failed" in r.stderr, r.stderr
    r = subprocess.run([*client.ssh_command(server.ssh_port), "-o", "ExitOnForwardFailure=yes", "-R",
                        f"{free_port()}:127.0.0.1:{server.port}", f"git@{server.host}", "true"],
                       capture_output=True, timeout=30)
    assert r.returncode == 255 and b"forwarding failed" in r.stderr, r.stderr


def test_unknown_keys_and_other_users_are_refused(server: Server, alice: tuple[str, str, Client],
                                                  tmp_path: Path) -> None:
    login, token, client = alice
    server.create_repo(token, "app")
    stranger = Client.make(tmp_path, "stranger")
    stranger.trust(server)
    r = stranger.ssh(server, f"git-upload-pack '{login}/app.git'")
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
    out = git("clone", url(server, f"{login}/app"), str(tmp_path / "x"), env=stranger.env(), check=False)
    assert out.returncode != 0 and "Permission denied (publickey)" in out.stderr

    r = client.ssh(server, f"git-upload-pack '{login}/app.git'", user=login)
    assert r.returncode == 1
    assert f"not '{login}'".encode() in r.stderr and b"git@" in r.stderr


def test_a_private_repository_is_not_found_for_those_who_may_not_see_it(
        server: Server, alice: tuple[str, str, Client], tmp_path: Path) -> None:
    login, token, _ = alice
    server.create_repo(token, "secret", private=True)
    bob = f"bob{next(_users)}"
    bob_token = server.create_user(bob)
    bob_client = Client.make(tmp_path, bob)
    bob_client.trust(server)
    add_key(server, bob_token, bob_client)
    hidden = git("ls-remote", url(server, f"{login}/secret"), env=bob_client.env(), check=False)
    missing = git("ls-remote", url(server, f"{login}/no-such"), env=bob_client.env(), check=False)
    assert hidden.returncode != 0 and missing.returncode != 0
    assert f"ERROR: Repository not found: {login}/secret" in hidden.stderr
    assert hidden.stderr.replace("secret", "X") == missing.stderr.replace("no-such", "X")

    # A reader may fetch but not push, and is told why.
    answer = server.api("PUT", f"/repos/{login}/secret/collaborators/{bob}", token=token, json={"permission": "pull"})
    assert answer.status_code in (201, 204), answer.text
    work = tmp_path / "bob-work"
    git("clone", "-q", url(server, f"{login}/secret"), str(work), env=bob_client.env())
    git("checkout", "-qb", "main", cwd=work, env=bob_client.env())
    commit(work, bob_client.env(), "b.txt")
    r = git("push", "origin", "main", cwd=work, env=bob_client.env(), check=False)
    assert r.returncode != 0 and "ERROR: you need write access to" in r.stderr, r.stderr

    # Removed as a collaborator: refused on the next connection.
    assert server.api("DELETE", f"/repos/{login}/secret/collaborators/{bob}", token=token).status_code == 204
    r = git("ls-remote", url(server, f"{login}/secret"), env=bob_client.env(), check=False)
    assert "Repository not found" in r.stderr


def test_deleted_keys_and_suspended_users_are_refused_at_once(server: Server, alice: tuple[str, str, Client],
                                                              tmp_path: Path) -> None:
    login, token, client = alice
    server.create_repo(token, "app")
    assert git("ls-remote", url(server, f"{login}/app"), env=client.env()).returncode == 0

    r = bulwark("user", "suspend", login, env=server.env())
    assert r.returncode == 0, r.stderr
    greeting = client.ssh(server, f"git-upload-pack '{login}/app.git'")
    assert greeting.returncode == 1 and f"ERROR: the account '{login}' is suspended".encode() in greeting.stderr
    assert bulwark("user", "unsuspend", login, env=server.env()).returncode == 0
    assert git("ls-remote", url(server, f"{login}/app"), env=client.env()).returncode == 0

    key_id = server.api("GET", "/user/keys", token=token).json()[0]["id"]
    assert server.api("DELETE", f"/user/keys/{key_id}", token=token).status_code == 204
    r = git("ls-remote", url(server, f"{login}/app"), env=client.env(), check=False)
    assert r.returncode != 0 and "Permission denied (publickey)" in r.stderr


def test_deploy_keys_reach_their_repository_only_and_push_only_with_write_access(
        server: Server, alice: tuple[str, str, Client], tmp_path: Path) -> None:
    login, token, client = alice
    server.create_repo(token, "site", private=True)
    server.create_repo(token, "other", private=True)
    work = tmp_path / "w"
    git("clone", "-q", url(server, f"{login}/site"), str(work), env=client.env())
    git("checkout", "-qb", "main", cwd=work, env=client.env())
    commit(work, client.env(), "index.html")
    git("push", "-q", "origin", "main", cwd=work, env=client.env())

    ci, deployer = Client.make(tmp_path, "ci"), Client.make(tmp_path, "deployer")
    for c in (ci, deployer):
        c.trust(server)
    r = server.api("POST", f"/repos/{login}/site/keys", token=token, json={"key": ci.public_key, "title": "ci"})
    assert r.status_code == 201 and r.json()["read_only"] is True, r.text
    r = server.api("POST", f"/repos/{login}/site/keys", token=token,
                   json={"key": deployer.public_key, "title": "deploy", "read_only": False})
    assert r.status_code == 201 and r.json()["read_only"] is False, r.text
    # One key, one holder across the site.
    r = server.api("POST", f"/repos/{login}/other/keys", token=token, json={"key": ci.public_key})
    assert r.status_code == 422 and "key is already in use" in r.text

    clone = tmp_path / "ci-clone"
    git("clone", "-q", url(server, f"{login}/site"), str(clone), env=ci.env())
    commit(clone, ci.env(), "ci.txt")
    out = git("push", "origin", "main", cwd=clone, env=ci.env(), check=False)
    assert out.returncode != 0 and "ERROR: you need write access to" in out.stderr, out.stderr
    out = git("ls-remote", url(server, f"{login}/other"), env=ci.env(), check=False)
    assert "Repository not found" in out.stderr

    git("pull", "-q", cwd=clone, env=ci.env())
    git("push", "-q", url(server, f"{login}/site"), "main", cwd=clone, env=deployer.env())
    own = client.ssh(server)
    deploy = deployer.ssh(server)
    assert b"Hi deploy key 'deploy'!" in deploy.stderr, deploy.stderr
    assert own.returncode == deploy.returncode == 1


def test_metrics_tell_ssh_from_http(server: Server, alice: tuple[str, str, Client], tmp_path: Path) -> None:
    login, token, client = alice
    server.create_repo(token, "measured")
    before = scrape(server.url, server.token)
    work = tmp_path / "h"
    git("clone", "-q", server.remote(login, "measured", token=token), str(work), env=client.env())
    git("checkout", "-qb", "main", cwd=work, env=client.env())
    commit(work, client.env(), "a.txt")
    git("push", "-q", "origin", "main", cwd=work, env=client.env())  # over HTTP
    git("clone", "-q", url(server, f"{login}/measured"), str(tmp_path / "c"), env=client.env())  # objects over SSH
    stranger = Client.make(tmp_path, "stranger")
    stranger.trust(server)
    assert stranger.ssh(server).returncode == 255
    after = scrape(server.url, server.token)

    def grew(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    assert grew("bulwark_git_operations_total", service="upload-pack", transport="ssh", result="ok") >= 1
    assert grew("bulwark_git_operations_total", service="receive-pack", transport="http", result="ok") >= 1
    assert grew("bulwark_git_operations_total", service="receive-pack", transport="ssh") == 0
    assert grew("bulwark_ssh_auth_failures_total") >= 1
    assert after.value("bulwark_ssh_connections", state="logging_in") == 0


# -- keys through the API and the CLI --------------------------------------------------------


def test_keys_in_githubs_shapes(server: Server, alice: tuple[str, str, Client], tmp_path: Path) -> None:
    login, token, client = alice
    mine = server.api("GET", "/user/keys", token=token).json()
    assert [k["title"] for k in mine] == ["laptop"]
    key = mine[0]
    assert key["key"] == " ".join(client.public_key.split()[:2]) and key["verified"] is True
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(client.identities[0].with_suffix(".pub"))],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert key["fingerprint"] == fingerprint
    assert server.api("GET", f"/user/keys/{key['id']}", token=token).json()["id"] == key["id"]
    public = httpx.get(f"{server.url}/api/v3/users/{login}/keys").json()
    assert public == [{"id": key["id"], "key": key["key"]}]
    plain = httpx.get(f"{server.url}/{login}.keys")
    assert plain.status_code == 200 and plain.text == key["key"] + "\n"
    assert httpx.get(f"{server.url}/nobody-here.keys").status_code == 404

    r = server.api("POST", "/user/keys", token=token, json={"key": client.public_key})
    assert r.status_code == 422 and "key is already in use" in r.text
    for bad in ("ssh-ed25519 AAAA", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "hello", ""):
        r = server.api("POST", "/user/keys", token=token, json={"key": bad})
        assert r.status_code == 422, (bad, r.text)
        assert "message" in r.json()
    other = f"carol{next(_users)}"
    other_token = server.create_user(other)
    assert server.api("GET", f"/user/keys/{key['id']}", token=other_token).status_code == 404
    assert server.api("DELETE", f"/user/keys/{key['id']}", token=other_token).status_code == 404
    server.create_repo(token, "keyed")
    assert server.api("GET", f"/repos/{login}/keyed/keys", token=other_token).status_code == 403

    meta = httpx.get(f"{server.url}/api/v3/meta").json()
    assert set(meta["ssh_key_fingerprints"]) == {"SHA256_ED25519", "SHA256_ECDSA", "SHA256_RSA"}
    scanned = subprocess.run(["ssh-keyscan", "-p", str(server.ssh_port), server.host], capture_output=True,
                             text=True, timeout=30).stdout
    assert sorted(" ".join(line.split()[1:3]) for line in scanned.splitlines() if line.strip()) == \
        sorted(meta["ssh_keys"])


def test_the_cli_adds_lists_and_removes_keys(server: Server, tmp_path: Path) -> None:
    login = f"dave{next(_users)}"
    token = server.create_user(login)
    server.create_repo(token, "tool")
    client, deploy = Client.make(tmp_path, login), Client.make(tmp_path, "deploy-cli")
    env = server.env()
    r = bulwark("key", "add", login, str(client.identities[0].with_suffix(".pub")), env=env)
    assert r.returncode == 0 and "SHA256:" in r.stdout + r.stderr, r.stderr
    r = bulwark("key", "add", f"{login}/tool", "-", "--write", "--title", "deployer", env=env,
                input=deploy.public_key + "\n")
    assert r.returncode == 0, r.stderr
    listed = json.loads(bulwark("key", "list", f"{login}/tool", "--json", env=env).stdout)
    assert [(k["title"], k["read_only"]) for k in listed] == [("deployer", False)]
    again = bulwark("key", "add", login, str(deploy.identities[0].with_suffix(".pub")), env=env)
    assert again.returncode == 1 and "key is already in use" in again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    user_keys = json.loads(bulwark("key", "list", login, "--json", env=env).stdout)
    r = bulwark("key", "remove", login, str(user_keys[0]["id"]), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(bulwark("key", "list", login, "--json", env=env).stdout) == []
    r = bulwark("key", "remove", login, "9999", env=env)
    assert r.returncode == 1 and "no key 9999" in r.stdout + r.stderr
    assert bulwark("key", "list", "nobody/none", env=env).returncode == 1


# -- hostile and broken clients ----------------------------------------------------------------


def test_an_idle_session_and_a_client_that_stalls_mid_pack_are_ended(server: Server, alice: tuple[str, str, Client],
                                                                      tmp_path: Path) -> None:
    login, token, client = alice
    server.create_repo(token, "app")
    work = tmp_path / "w"
    git("clone", "-q", url(server, f"{login}/app"), str(work), env=client.env())
    git("checkout", "-qb", "main", cwd=work, env=client.env())
    old = commit(work, client.env(), "a.txt")
    git("push", "-q", "origin", "main", cwd=work, env=client.env())

    # A session that says nothing after the advertisement is ended after the idle timeout (4 s here).
    started = time.monotonic()
    proc = subprocess.Popen([*client.ssh_command(server.ssh_port), f"git@{server.host}",
                             f"git-receive-pack '{login}/app.git'"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = _wait_holding_stdin(proc, 60)
    assert proc.returncode == 1 and b"idle" in err, err
    assert time.monotonic() - started < 30

    # Commands and half a pack, then silence: the push is dropped and the branch keeps its commit.
    new = commit(work, client.env(), "b.txt")
    pack = subprocess.run(["git", "pack-objects", "--stdout", "--revs", "--thin"], cwd=work, env=client.env(),
                          input=f"{new}\n^{old}\n".encode(), capture_output=True, check=True).stdout
    line = f"{old} {new} refs/heads/main\0report-status\n".encode()
    request = b"%04x" % (len(line) + 4) + line + b"0000" + pack[: len(pack) // 2]
    proc = subprocess.Popen([*client.ssh_command(server.ssh_port), f"git@{server.host}",
                             f"git-receive-pack '{login}/app.git'"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(request)
    proc.stdin.flush()
    out, err = _wait_holding_stdin(proc, 60)
    assert proc.returncode == 1, (out, err)
    refs = git("ls-remote", url(server, f"{login}/app"), env=client.env()).stdout
    assert f"{old}\trefs/heads/main" in refs


def test_a_push_whose_commands_never_end_is_refused_as_over_http(server: Server, alice: tuple[str, str, Client],
                                                                 tmp_path: Path) -> None:
    """Tiny packets that never reach a flush: cut off at a push's limit (20,000 packets, as over HTTP;
    a fetch may send 400,000), not held until the idle timeout; nothing is written."""
    login, token, client = alice
    server.create_repo(token, "app")
    line = b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/x\n"
    packet = b"%04x" % (len(line) + 4) + line
    proc = subprocess.Popen([*client.ssh_command(server.ssh_port), f"git@{server.host}",
                             f"git-receive-pack '{login}/app.git'"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for _ in range(30):  # 30,000 packets, in writes of 1,000
            proc.stdin.write(packet * 1000)
    except BrokenPipeError:
        pass  # the server hung up on them
    _, err = _wait_holding_stdin(proc, 60)
    assert proc.returncode == 1 and b"too long before its first flush" in err, err
    assert "refs/heads" not in git("ls-remote", url(server, f"{login}/app"), env=client.env()).stdout


def _wait_holding_stdin(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """Wait for the server to end the session while the client keeps its input open (silent)."""
    assert proc.stdout is not None and proc.stderr is not None
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = proc.stdout.read(), proc.stderr.read()
    if proc.stdin is not None:
        proc.stdin.close()
    return out, err


def test_login_limits_keep_a_flood_from_locking_others_out(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "data", ssh=True, extra_env={
        "BULWARK_SSH_LOGIN_TIMEOUT": "3", "BULWARK_SSH_MAX_UNAUTHENTICATED": "5"}).start().wait_for_ssh()
    try:
        token = srv.create_user("erin")
        srv.create_repo(token, "app")
        client = Client.make(tmp_path, "erin")
        client.trust(srv)
        add_key(srv, token, client)
        # Five connections that never log in fill the gate; the sixth is refused...
        flood = [socket.create_connection((srv.host, srv.ssh_port)) for _ in range(5)]
        time.sleep(0.5)
        r = git("ls-remote", url(srv, "erin/app"), env=client.env(), check=False)
        assert r.returncode != 0
        # ...until the login timeout ends them, with no restart.
        wait_for(lambda: git("ls-remote", url(srv, "erin/app"), env=client.env(), check=False).returncode == 0,
                 timeout=20, what="a login once the flood timed out")
        for s in flood:
            s.close()

        # Too many keys offered on one connection: the server hangs up before the right one.
        many = Client.make(tmp_path, "many", count=7)
        many.trust(srv)
        answer = srv.api("POST", "/user/keys", token=token, json={
            "key": many.identities[-1].with_suffix(".pub").read_text()})
        assert answer.status_code == 201, answer.text
        proc = subprocess.run([*many.ssh_command(srv.ssh_port), f"git@{srv.host}"], capture_output=True, timeout=30)
        assert proc.returncode == 255, proc
        good = Client(many.home, many.identities[-1:])
        assert good.ssh(srv).returncode == 1  # the greeting: logged in with the registered key
    finally:
        srv.stop()


# -- HA: the same host keys on both nodes, replicas refuse pushes, promotion changes nothing ------


def test_through_haproxy_an_ha_promotion_shows_ssh_clients_no_changed_host_key(tmp_path: Path) -> None:
    primary = Server(data_dir=tmp_path / "primary", ssh=True).start().wait_for_ssh()
    replica = Server(data_dir=tmp_path / "replica", ssh=True).start().wait_for_ssh()
    lb = HAProxy(tmp_path, primary, replica)
    try:
        setup_replica(replica, primary)
        token = primary.create_user("frank")
        primary.create_repo(token, "app")
        client = Client.make(tmp_path, "frank")
        add_key(primary, token, client)
        # The developer trusts the load balancer's name with the keys the site publishes, once.
        meta = httpx.get(f"{primary.url}/api/v3/meta", timeout=10).json()
        (client.home / "known_hosts").write_text("".join(f"[127.0.0.1]:{lb.ssh_port} {k}\n" for k in meta["ssh_keys"]))
        env = client.env()
        remote = f"ssh://git@127.0.0.1:{lb.ssh_port}/frank/app.git"
        wait_for(lambda: _host_keys(replica) == _host_keys(primary), timeout=30, what="the replica's host keys")
        wait_for(lambda: git("ls-remote", remote, env=env, check=False).returncode == 0, timeout=30,
                 what="SSH through HAProxy")
        # HAProxy starts with both nodes up; two failed checks (1 s apart) take the replica out.
        time.sleep(3)
        work = tmp_path / "w"
        git("clone", "-q", remote, str(work), env=env)
        git("checkout", "-qb", "main", cwd=work, env=env)
        first = commit(work, env, "a.txt")
        git("push", "-q", "origin", "main", cwd=work, env=env)

        # The replica (which had made host keys of its own before it was set up) serves the
        # primary's, and reached directly it fetches but refuses a push with the words HTTP uses.
        direct = url(replica, "frank/app")
        wait_for(lambda: first in git("ls-remote", direct, env=_for(client, replica, lb.ssh_port),
                                      check=False).stdout, timeout=30, what="fetch from the replica")
        commit(work, env, "b.txt")
        over_ssh = git("push", direct, "main", cwd=work, env=_for(client, replica, lb.ssh_port), check=False)
        over_http = git("push", replica.remote("frank", "app", user="frank", token=token), "main", cwd=work,
                        env=env, check=False)
        assert over_ssh.returncode != 0 and over_http.returncode != 0
        refusal = next(line for line in over_http.stderr.splitlines() if "replica" in line)
        assert refusal.split("remote: ")[-1].strip() in over_ssh.stderr, (over_http.stderr, over_ssh.stderr)

        primary.kill()
        r = repl(replica, "promote")
        assert r.returncode == 0, r.stdout + r.stderr
        # The same remote and the same known_hosts, checked strictly: no warning, the push goes through.
        wait_for(lambda: git("push", "-q", "origin", "main", cwd=work, env=env, check=False,
                             timeout=30).returncode == 0, timeout=60, what="a push through HAProxy after promotion")
        assert git("ls-remote", remote, env=env).stdout.split()[0] == git("rev-parse", "HEAD", cwd=work,
                                                                          env=env).stdout.strip()
    finally:
        lb.stop()
        replica.stop()
        primary.stop()


def _host_keys(server: Server) -> list[str]:
    scanned = subprocess.run(["ssh-keyscan", "-p", str(server.ssh_port), server.host], capture_output=True,
                             text=True, timeout=30).stdout
    return sorted(" ".join(line.split()[1:3]) for line in scanned.splitlines() if line.strip())


def _for(client: Client, server: Server, trusted_port: int) -> dict[str, str]:
    """The client's environment for ``server`` reached directly, trusting only the keys it learned
    for the load balancer's port."""
    known = (client.home / "known_hosts").read_text().replace(
        f"[127.0.0.1]:{trusted_port}", f"[{server.host}]:{server.ssh_port}")
    path = client.home / f"known_hosts_{server.ssh_port}"
    path.write_text(known)
    env = client.env()
    env["GIT_SSH_COMMAND"] = env["GIT_SSH_COMMAND"].replace(str(client.home / "known_hosts"), str(path))
    return env
