"""The administration command line, run as a user runs it, against a node's data dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.core import TyperGroup, TyperOption

from bulwark.assembly import open_node
from bulwark.cli.main import app
from bulwark.config import load_settings
from tests.support.helpers import Server, bulwark, git

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]


def run(
    *args: str, env: dict[str, str], ok: bool = True, input: str | None = None, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; expect success (or with ``ok=False`` a failure that says why), never a traceback."""
    r = bulwark(*args, env=env, input=input)
    assert "Traceback" not in r.stderr, r.stderr
    if ok:
        assert r.returncode == 0, f"bulwark {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    else:
        assert r.returncode != 0, f"bulwark {' '.join(args)} should have failed:\n{r.stdout}"
        assert quiet or r.stderr.strip(), "a failure must say why on stderr"
    return r


def run_json(*args: str, env: dict[str, str]) -> Any:
    return json.loads(run(*args, "--json", env=env).stdout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh node's data dir, with its site admin 'admin', for commands to act on."""
    data_dir = tmp_path / "node"
    node = open_node(load_settings(overrides={"data_dir": data_dir}))
    try:
        node.accounts.bootstrap_admin(None)
    finally:
        node.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BULWARK_")}
    return {**base, "BULWARK_DATA_DIR": str(data_dir)}


def data_path(env: dict[str, str], full_name: str) -> Path:
    return Path(run_json("repo", "show", full_name, env=env)["path"])


# -- help --------------------------------------------------------------------------------


def _command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            paths += _command_paths(sub, (*prefix, name))
    return paths


def test_every_command_explains_itself() -> None:
    paths = _command_paths(typer.main.get_command(app))
    names = {" ".join(p) for p in paths}
    assert {"user create", "org add-member", "token revoke", "repo collaborator add", "maintenance on", "fsck"} <= names
    for path in paths:
        r = bulwark(*path, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, (path, r.stdout, r.stderr)
        command: Any = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]
        assert command.help, f"bulwark {' '.join(path)} has no help text"
        for param in command.params:
            if isinstance(param, TyperOption):
                assert param.help, f"bulwark {' '.join(path)} {param.opts[0]} has no help text"


# -- users -------------------------------------------------------------------------------


def test_user_lifecycle(env: dict[str, str]) -> None:
    r = run("user", "create", "alice", "--email", "alice@example.com", "--name", "Alice Liddell", env=env)
    assert "alice" in r.stdout
    run("user", "create", "bob", env=env)
    users = run_json("user", "list", env=env)
    assert [u["login"] for u in users] == ["admin", "alice", "bob"]
    assert users[1]["email"] == "alice@example.com" and not users[1]["site_admin"]
    assert "alice@example.com" in run("user", "list", env=env).stdout

    shown = run_json("user", "show", "alice", env=env)
    assert shown["name"] == "Alice Liddell" and shown["organizations"] == [] and shown["tokens"] == 0
    assert "Alice Liddell" in run("user", "show", "alice", env=env).stdout

    run("user", "suspend", "alice", env=env)
    assert run_json("user", "show", "alice", env=env)["suspended"]
    run("user", "unsuspend", "alice", env=env)
    assert not run_json("user", "show", "alice", env=env)["suspended"]

    run("user", "promote", "alice", env=env)
    assert run_json("user", "show", "alice", env=env)["site_admin"]
    run("user", "demote", "alice", env=env)
    assert not run_json("user", "show", "alice", env=env)["site_admin"]

    r = run("user", "create", "ALICE", env=env, ok=False)
    assert "already" in r.stderr
    run("user", "delete", "bob", "--yes", env=env)
    assert [u["login"] for u in run_json("user", "list", env=env)] == ["admin", "alice"]
    r = run("user", "show", "bob", env=env, ok=False)
    assert "bob" in r.stderr


def test_the_last_site_admin_stays(env: dict[str, str]) -> None:
    for command in (["demote", "admin"], ["delete", "admin", "--yes"], ["suspend", "admin"]):
        r = run("user", *command, env=env, ok=False)
        assert "last" in r.stderr and "administrator" in r.stderr
    run("user", "create", "root2", "--site-admin", env=env)
    run("user", "demote", "admin", env=env)
    r = run("user", "delete", "root2", "--yes", env=env, ok=False)
    assert "last" in r.stderr
    run("user", "promote", "admin", env=env)
    run("user", "delete", "root2", "--yes", env=env)


def test_delete_asks_first(env: dict[str, str]) -> None:
    run("user", "create", "alice", env=env)
    r = run("user", "delete", "alice", env=env, ok=False)  # stdin is not a terminal and no --yes
    assert "--yes" in r.stderr
    assert run_json("user", "show", "alice", env=env)["login"] == "alice"


def test_passwords_from_stdin(env: dict[str, str]) -> None:
    run("user", "create", "carol", "--password-stdin", env=env, input="first-password\n")
    run("user", "passwd", "carol", env=env, input="second-password\n")
    r = run("user", "passwd", "carol", env=env, input="short\n", ok=False)
    assert "8 characters" in r.stderr
    r = run("user", "passwd", "carol", env=env, input="", ok=False)
    assert "password" in r.stderr
    node = open_node(load_settings(overrides={"data_dir": Path(env["BULWARK_DATA_DIR"])}))
    try:
        assert node.accounts.authenticate_basic("carol", "second-password").account is not None
    finally:
        node.close()


# -- organizations -----------------------------------------------------------------------


def test_organizations_and_membership(env: dict[str, str]) -> None:
    for login in ("alice", "bob"):
        run("user", "create", login, env=env)
    run("org", "create", "acme", "--owner", "alice", "--name", "Acme Inc.", env=env)
    orgs = run_json("org", "list", env=env)
    assert [(o["login"], o["name"], o["members"]) for o in orgs] == [("acme", "Acme Inc.", 1)]
    assert run_json("org", "members", "acme", env=env) == [{"login": "alice", "role": "owner"}]

    run("org", "add-member", "acme", "bob", env=env)
    assert {"login": "bob", "role": "member"} in run_json("org", "members", "acme", env=env)
    assert run_json("user", "show", "bob", env=env)["organizations"] == ["acme"]
    r = run("org", "remove-member", "acme", "alice", env=env, ok=False)
    assert "owner" in r.stderr
    run("org", "add-member", "acme", "bob", "--role", "owner", env=env)
    run("org", "remove-member", "acme", "alice", env=env)
    assert run_json("org", "members", "acme", env=env) == [{"login": "bob", "role": "owner"}]

    assert run("org", "add-member", "acme", "bob", "--role", "boss", env=env, ok=False).returncode == 2
    assert "no user" in run("org", "create", "other", "--owner", "nobody", env=env, ok=False).stderr
    assert "no organization" in run("org", "members", "alice", env=env, ok=False).stderr

    run("repo", "create", "acme/site", env=env)
    path = data_path(env, "acme/site")
    run("org", "delete", "acme", "--yes", env=env)
    assert run_json("org", "list", env=env) == []
    assert not path.exists()


# -- tokens ------------------------------------------------------------------------------


def test_tokens_work_against_a_running_server(server: Server) -> None:
    env = server.env()
    run("user", "create", "alice", env=env)
    r = run("token", "create", "alice", "--note", "laptop", env=env)
    secret = r.stdout.strip()
    assert secret.startswith("bwk_") and "shown again" in r.stderr
    assert server.api("GET", "/user", token=secret).json()["login"] == "alice"

    issued = run_json("token", "create", "alice", "--scope", "repo", "--expires-in", "7", env=env)
    assert issued["scopes"] == ["repo"] and issued["expires_at"] and issued["token"].startswith("bwk_")

    listing = run("token", "list", "alice", env=env).stdout + run("token", "list", "alice", "--json", env=env).stdout
    assert secret not in listing and issued["token"] not in listing
    tokens = run_json("token", "list", "alice", env=env)
    assert [t["note"] for t in tokens] == ["laptop", ""]
    assert tokens[0]["scopes"] == ["read:org", "repo", "user"]
    assert secret.startswith(tokens[0]["prefix"]) and tokens[0]["last_used_at"]

    run("user", "suspend", "alice", env=env)
    assert server.api("GET", "/user", token=secret).status_code == 403
    run("user", "unsuspend", "alice", env=env)
    run("token", "revoke", "alice", str(tokens[0]["id"]), env=env)
    assert server.api("GET", "/user", token=secret).status_code == 401
    assert server.api("GET", "/user", token=issued["token"]).status_code == 200

    assert "unknown scope" in run("token", "create", "alice", "--scope", "everything", env=env, ok=False).stderr
    assert "no token" in run("token", "revoke", "alice", "9999", env=env, ok=False).stderr


# -- repositories ------------------------------------------------------------------------


def test_repository_lifecycle(env: dict[str, str]) -> None:
    for login in ("alice", "bob"):
        run("user", "create", login, env=env)
    run("org", "create", "acme", "--owner", "alice", env=env)
    run("repo", "create", "alice/tools", "--private", "--description", "Scripts", "--default-branch", "trunk", env=env)
    shown = run_json("repo", "show", "alice/tools", env=env)
    assert shown["visibility"] == "private" and shown["description"] == "Scripts"
    assert shown["default_branch"] == "trunk" and shown["data_present"] and shown["size_bytes"] > 0
    path = Path(shown["path"])
    assert (path / "HEAD").read_text().strip() == "ref: refs/heads/trunk"

    run("repo", "create", "bob/notes", env=env)
    listed = run_json("repo", "list", env=env)
    assert [(r["full_name"], r["visibility"]) for r in listed] == [("alice/tools", "private"), ("bob/notes", "public")]
    assert [r["full_name"] for r in run_json("repo", "list", "--owner", "bob", env=env)] == ["bob/notes"]
    assert shown["storage_id"] in run("repo", "list", env=env).stdout

    run("repo", "rename", "alice/tools", "scripts", env=env)
    run("repo", "transfer", "alice/scripts", "acme", env=env)
    moved = run_json("repo", "show", "acme/scripts", env=env)
    assert moved["storage_id"] == shown["storage_id"] and path.is_dir()  # data never moves
    assert "no repository" in run("repo", "show", "alice/tools", env=env, ok=False).stderr

    run("repo", "collaborator", "add", "acme/scripts", "bob", env=env)
    assert run_json("repo", "collaborator", "list", "acme/scripts", env=env) == [{"login": "bob", "permission": "push"}]
    run("repo", "collaborator", "add", "acme/scripts", "bob", "--permission", "admin", env=env)
    assert run_json("repo", "show", "acme/scripts", env=env)["collaborators"] == [
        {"login": "bob", "permission": "admin"}
    ]
    run("repo", "collaborator", "remove", "acme/scripts", "bob", env=env)
    assert run_json("repo", "collaborator", "list", "acme/scripts", env=env) == []
    r = run("repo", "collaborator", "add", "acme/scripts", "bob", "--permission", "owner", env=env, ok=False)
    assert "unknown permission" in r.stderr

    r = run("repo", "delete", "acme/scripts", env=env, ok=False)
    assert "--yes" in r.stderr and path.is_dir()
    run("repo", "delete", "acme/scripts", "--yes", env=env)
    assert not path.exists()
    assert [r["full_name"] for r in run_json("repo", "list", env=env)] == ["bob/notes"]


def test_deleting_a_user_deletes_their_repository_data(env: dict[str, str]) -> None:
    run("user", "create", "alice", env=env)
    run("repo", "create", "alice/tools", env=env)
    path = data_path(env, "alice/tools")
    run("user", "delete", "alice", "--yes", env=env)
    assert not path.exists()
    assert run_json("repo", "list", env=env) == []


# -- maintenance -------------------------------------------------------------------------


def test_maintenance_mode_takes_effect_on_a_running_server(server: Server, genv: dict[str, str]) -> None:
    env = server.env()
    run("repo", "create", "admin/site", env=env)
    git("ls-remote", server.remote("admin", "site", token=server.token), env=genv)
    assert run_json("maintenance", "status", env=env)["enabled"] is False
    assert "off" in run("maintenance", "status", env=env).stdout
    assert httpx.get(f"{server.url}/status").status_code == 200

    run("maintenance", "on", "--message", "upgrading, back at 10:00", env=env)
    state = run_json("maintenance", "status", env=env)
    assert state["enabled"] and state["message"] == "upgrading, back at 10:00" and state["since"]
    assert "ON" in run("maintenance", "status", env=env).stdout  # exit 0 either way
    assert httpx.get(f"{server.url}/status").status_code == 503
    r = server.api("GET", "/user")
    assert r.status_code == 503 and "upgrading" in r.text
    out = git("ls-remote", server.remote("admin", "site", token=server.token), env=genv, check=False)
    assert out.returncode != 0 and "503" in out.stderr + out.stdout

    run("maintenance", "off", env=env)
    assert httpx.get(f"{server.url}/status").status_code == 200
    assert server.api("GET", "/user").status_code == 200
    git("ls-remote", server.remote("admin", "site", token=server.token), env=genv)


# -- fsck --------------------------------------------------------------------------------


def _push_some_commits(genv: dict[str, str], work: Path, remote: str) -> None:
    git("init", "--quiet", "--initial-branch=main", str(work), env=genv)
    for i in range(3):
        (work / f"file{i}.txt").write_text(f"content {i}\n")
        git("add", ".", cwd=work, env=genv)
        git("commit", "--quiet", "-m", f"commit {i}", cwd=work, env=genv)
    git("push", "--quiet", remote, "main", cwd=work, env=genv)


def test_fsck_reports_corrupt_and_missing_repositories(server: Server, genv: dict[str, str], tmp_path: Path) -> None:
    env = server.env()
    run("user", "create", "alice", env=env)
    token = run("token", "create", "alice", env=env).stdout.strip()
    for name in ("good", "corrupt", "gone"):
        run("repo", "create", f"alice/{name}", env=env)
    for name in ("good", "corrupt"):
        _push_some_commits(genv, tmp_path / name, server.remote("alice", name, token=token))

    pushed = {r["full_name"]: r["pushed_at"] for r in run_json("repo", "list", env=env)}
    assert pushed["alice/good"] and pushed["alice/corrupt"] and pushed["alice/gone"] is None
    r = run("fsck", env=env)
    assert "3 repositories checked, 0 failed" in r.stdout

    # Few objects arrive loose; losing one is the corruption fsck exists to find.
    corrupt = data_path(env, "alice/corrupt")
    blob = git("rev-parse", "HEAD:file0.txt", cwd=tmp_path / "corrupt", env=genv).stdout.strip()
    (corrupt / "objects" / blob[:2] / blob[2:]).unlink()
    shutil.rmtree(data_path(env, "alice/gone"))
    assert "MISSING" in run("repo", "list", env=env).stdout

    r = run("fsck", env=env, ok=False, quiet=True)  # the report is the output
    assert r.returncode == 1
    assert "3 repositories checked, 2 failed" in r.stdout
    assert "alice/corrupt" in r.stdout and blob in r.stdout
    assert "alice/gone" in r.stdout and "MISSING" in r.stdout
    assert "alice/good" not in r.stdout

    report = json.loads(bulwark("fsck", "--json", env=env).stdout)
    by_name = {repo["full_name"]: repo for repo in report["repositories"]}
    assert (report["checked"], report["failed"]) == (3, 2)
    assert by_name["alice/good"]["ok"] and not by_name["alice/corrupt"]["ok"]
    assert by_name["alice/gone"]["missing"] and not by_name["alice/corrupt"]["missing"]

    assert "1 repository checked, 0 failed" in run("fsck", "alice/good", env=env).stdout
    assert run("fsck", "alice/good", "alice/corrupt", env=env, ok=False, quiet=True).returncode == 1
    assert "no repository" in run("fsck", "alice/nothing", env=env, ok=False).stderr


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "show", "nobody"], "nobody"),
        (["user", "create", "bad-"], "invalid login"),
        (["user", "create", "no spaces"], "invalid login"),
        (["token", "create", "nobody"], "nobody"),
        (["token", "create", "admin", "--scope", "root"], "unknown scope"),
        (["repo", "create", "admin"], "OWNER/NAME"),
        (["repo", "create", "admin/a/b"], "OWNER/NAME"),
        (["repo", "create", "admin/bad name"], "invalid repository name"),
        (["repo", "create", "nobody/repo"], "nobody"),
        (["repo", "show", "admin/missing"], "no repository"),
        (["repo", "collaborator", "add", "admin/missing", "admin", "--permission", "all"], "unknown permission"),
        (["org", "members", "nobody"], "nobody"),
    ],
)
def test_bad_input_is_a_clear_error(env: dict[str, str], args: list[str], message: str) -> None:
    r = run(*args, env=env, ok=False)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULWARK_")}
    for args in (["user", "list"], ["maintenance", "on"], ["fsck"]):
        r = run(*args, "--data-dir", str(tmp_path / "nothing"), env=env, ok=False)
        assert "no Bulwark data" in r.stderr
    assert not (tmp_path / "nothing").exists()
