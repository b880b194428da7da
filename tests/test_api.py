"""The REST API over HTTP: status codes, error bodies, pagination, permissions and bad input."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers import Server, bulwark, git, git_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]

_ids = itertools.count()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only add data; each test uses logins of its own."""
    server = Server(data_dir=tmp_path_factory.mktemp("api") / "node").start()
    try:
        yield server
    finally:
        server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def links(r: httpx.Response) -> dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', r.headers.get("link", ""))}


def error_fields(r: httpx.Response) -> list[str]:
    return [e.get("field") for e in r.json().get("errors", [])]


def push(server: Server, tmp: Path, owner: str, repo: str, token: str, files: dict[str, bytes],
         branches: tuple[str, ...] = ("main",), message: str = "add files") -> str:
    """Commit ``files`` on top of what ``tmp`` holds, push ``branches`` with the real git client; the new sha."""
    env = git_env(tmp / "home")
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    work = tmp / "work"
    if not (work / ".git").exists():
        git("init", "-q", "-b", "main", str(work), env=env)
    for name, content in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    git("add", "-A", cwd=work, env=env)
    git("commit", "-q", "-m", message, cwd=work, env=env)
    remote = server.remote(owner, repo, user=owner, token=token)
    git("push", "-q", remote, *[f"HEAD:refs/heads/{b}" for b in branches], cwd=work, env=env)
    return git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()


# -- authentication and headers ------------------------------------------------------------


def test_anonymous_and_bad_credentials(srv: Server) -> None:
    r = srv.api("GET", "/user", token="")
    assert r.status_code == 401
    assert r.json()["message"] and "documentation_url" in r.json()
    assert "www-authenticate" in r.headers
    assert srv.api("GET", "/user", token="bwk_" + "f" * 40).status_code == 401
    assert srv.api("GET", "/user", token="nonsense").status_code == 401
    r = httpx.get(f"{srv.url}/api/v3/user", headers={"Authorization": "Digest abc"})
    assert r.status_code == 401


def test_scopes_header_on_every_authenticated_response(srv: Server) -> None:
    login = unique("scoped")
    token = srv.create_user(login, scopes=["public_repo", "user"])
    r = srv.api("GET", "/user", token=token)
    assert r.status_code == 200
    assert r.headers["x-oauth-scopes"] == "public_repo, user"
    missing = srv.api("GET", f"/repos/{login}/nothing", token=token)
    assert missing.status_code == 404 and missing.headers["x-oauth-scopes"] == "public_repo, user"
    assert "x-oauth-scopes" not in srv.api("GET", "/users", token="").headers


def test_unknown_route_is_json_404(srv: Server) -> None:
    r = srv.api("GET", "/no/such/thing")
    assert r.status_code == 404 and r.json()["message"] == "Not Found"


def test_garbage_input_is_never_a_server_error(srv: Server) -> None:
    login = unique("fuzz")
    token = srv.create_user(login)
    srv.create_repo(token, "target")
    org = unique("fuzzorg")
    srv.api("POST", "/admin/organizations", json={"login": org, "admin": login})
    routes = [
        ("PATCH", "/user"), ("POST", "/user/repos"), ("POST", f"/orgs/{org}/repos"), ("PATCH", f"/orgs/{org}"),
        ("PUT", f"/orgs/{org}/memberships/{login}"), ("PATCH", f"/repos/{login}/target"),
        ("POST", f"/repos/{login}/target/transfer"), ("PUT", f"/repos/{login}/target/collaborators/admin"),
        ("POST", f"/repos/{login}/target/git/refs"), ("PATCH", f"/repos/{login}/target/git/refs/heads/main"),
        ("POST", "/admin/users"), ("PATCH", f"/admin/users/{login}"), ("POST", "/admin/organizations"),
        ("POST", f"/admin/users/{login}/authorizations"), ("PUT", f"/users/{login}/suspended"),
    ]
    wrong = {k: v for k, v in [("name", ["x"]), ("login", {"a": 1}), ("private", "true"), ("visibility", 1),
                               ("description", 2), ("default_branch", False), ("allow_force_pushes", "no"),
                               ("new_owner", 1), ("permission", None), ("role", 3), ("ref", 1.5), ("sha", []),
                               ("force", "yes"), ("scopes", {"repo": 1}), ("expires_at", 0), ("email", 1),
                               ("admin", []), ("note", [])]}
    bodies: list[bytes] = [b"{", b"[" * 100_000, b'"str"', b"null", b"\xff", json_bytes(wrong), b"{}" + b" " * 10]
    for method, path in routes:
        for body in bodies:
            r = srv.api(method, path, token=token, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (method, path, body[:20], r.text)
            assert r.status_code == 204 or r.headers["content-type"].startswith("application/json"), (method, path)
    for query in ["page=0", "page=" + "9" * 30, "per_page=x", "page=-1", "per_page=" + "9" * 5000]:
        assert srv.api("GET", f"/users?{query}").status_code == 422, query
    assert srv.api("GET", f"/repos/{login}/target/contents/a%00b").status_code in (404, 422)
    assert srv.api("GET", f"/repos/{login}/target/commits?sha=a%00b").status_code in (404, 409)
    # Nothing of it stuck.
    assert srv.api("GET", f"/repos/{login}/target").json()["description"] is None
    assert srv.api("GET", f"/users/{login}").json()["suspended_at"] is None


def json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


# -- users -----------------------------------------------------------------------------------


def test_users_pagination_links(srv: Server) -> None:
    for _ in range(3):
        srv.create_user(unique("pager"))
    first = srv.api("GET", "/users?per_page=2")
    assert first.status_code == 200 and len(first.json()) == 2
    rels = links(first)
    assert set(rels) == {"next"} and "page=2" in rels["next"] and "per_page=2" in rels["next"]
    second = httpx.get(rels["next"], headers={"Authorization": f"token {srv.token}"})
    assert second.status_code == 200 and len(second.json()) == 2
    assert {"prev", "first"} <= set(links(second))
    assert {u["login"] for u in first.json()}.isdisjoint(u["login"] for u in second.json())
    assert srv.api("GET", "/users?page=0").status_code == 422
    assert srv.api("GET", "/users?per_page=abc").status_code == 422
    assert len(srv.api("GET", "/users?per_page=1000").json()) <= 100


def test_get_and_update_user(srv: Server) -> None:
    login = unique("patcher")
    token = srv.create_user(login)
    r = srv.api("GET", f"/users/{login}")
    assert r.status_code == 200 and r.json()["login"] == login and r.json()["type"] == "User"
    assert srv.api("GET", "/users/no-such-user-here").status_code == 404
    r = srv.api("PATCH", "/user", token=token, json={"name": "Pat Cher", "email": "pat@example.org"})
    assert r.status_code == 200 and r.json()["name"] == "Pat Cher" and r.json()["email"] == "pat@example.org"
    r = srv.api("PATCH", "/user", token=token, json={"name": 5})
    assert r.status_code == 422 and error_fields(r) == ["name"]
    assert srv.api("PATCH", "/user", token=token, json={"email": "not an email"}).status_code == 422
    assert srv.api("GET", "/user", token=token).json()["name"] == "Pat Cher"
    no_user_scope = srv.create_user(unique("noscope"), scopes=["repo"])
    assert srv.api("PATCH", "/user", token=no_user_scope, json={"name": "x"}).status_code == 403


# -- repositories ------------------------------------------------------------------------------


def test_create_repo_and_bad_input(srv: Server) -> None:
    login = unique("maker")
    token = srv.create_user(login)
    r = srv.api("POST", "/user/repos", token=token, json={"name": "tool", "description": "a tool"})
    assert r.status_code == 201
    body = r.json()
    assert body["full_name"] == f"{login}/tool" and body["private"] is False and body["permissions"]["admin"]
    assert body["owner"]["login"] == login and body["description"] == "a tool"
    dup = srv.api("POST", "/user/repos", token=token, json={"name": "TOOL"})
    assert dup.status_code == 422 and dup.json()["message"] == "name already exists on this account"
    for bad in ["..", ".", "a/b", "../x", "x.git", "", "a b", "é", "x" * 101]:
        r = srv.api("POST", "/user/repos", token=token, json={"name": bad})
        assert r.status_code == 422, (bad, r.text)
    r = srv.api("POST", "/user/repos", token=token, json={})
    assert r.status_code == 422 and error_fields(r) == ["name"]
    r = srv.api("POST", "/user/repos", token=token, json={"name": 7})
    assert r.status_code == 422 and error_fields(r) == ["name"]
    r = srv.api("POST", "/user/repos", token=token, json={"name": "p", "private": "yes"})
    assert r.status_code == 422 and error_fields(r) == ["private"]
    r = srv.api("POST", "/user/repos", token=token, json={"name": "v", "visibility": "internal"})
    assert r.status_code == 422
    as_json = {"Content-Type": "application/json"}
    r = srv.api("POST", "/user/repos", token=token, content=b'{"name": ', headers=as_json)
    assert r.status_code == 400 and r.json()["message"].startswith("Problems parsing JSON")
    assert srv.api("POST", "/user/repos", token=token, content=b"[1, 2]", headers=as_json).status_code == 400
    assert srv.api("POST", "/user/repos", token=token, content=b"\xff\xfe", headers=as_json).status_code == 400
    assert srv.api("POST", "/user/repos", token="", json={"name": "anon"}).status_code == 401
    # Nothing of the failed attempts was stored.
    names = [repo["name"] for repo in srv.api("GET", "/user/repos", token=token).json()]
    assert names == ["tool"]


def test_private_repos_are_invisible_without_access(srv: Server) -> None:
    owner, other = unique("priv"), unique("peek")
    token, other_token = srv.create_user(owner), srv.create_user(other)
    srv.create_repo(token, "secret", private=True)
    srv.create_repo(token, "open")
    assert srv.api("GET", f"/repos/{owner}/secret", token=token).status_code == 200
    assert srv.api("GET", f"/repos/{owner}/secret", token=other_token).status_code == 404
    assert srv.api("GET", f"/repos/{owner}/secret", token="").status_code == 404
    assert srv.api("GET", f"/repos/{owner}/open", token="").status_code == 200
    # Visible but not theirs: 403, not 404.
    assert srv.api("PATCH", f"/repos/{owner}/open", token=other_token, json={"description": "x"}).status_code == 403
    assert srv.api("DELETE", f"/repos/{owner}/open", token=other_token).status_code == 403
    for caller in (other_token, ""):
        names = [r["name"] for r in srv.api("GET", f"/users/{owner}/repos", token=caller).json()]
        assert names == ["open"]
    assert [r["name"] for r in srv.api("GET", f"/users/{owner}/repos", token=token).json()] == ["open", "secret"]
    # A token without the repo scope sees only public repositories, even of its own account.
    public_only = srv.api("POST", f"/admin/users/{owner}/authorizations", json={"scopes": ["public_repo"]})
    weak = public_only.json()["token"]
    assert srv.api("GET", f"/repos/{owner}/secret", token=weak).status_code == 404
    assert srv.api("POST", "/user/repos", token=weak, json={"name": "p2", "private": True}).status_code == 403
    assert srv.api("POST", "/user/repos", token=weak, json={"name": "p3"}).status_code == 201
    assert srv.api("PATCH", f"/repos/{owner}/p3", token=weak, json={"private": True}).status_code == 403
    assert srv.api("PATCH", f"/repos/{owner}/p3", token=weak, json={"description": "ok"}).status_code == 200


def test_update_rename_and_delete_repo(srv: Server) -> None:
    login = unique("editor")
    token = srv.create_user(login)
    srv.create_repo(token, "first")
    srv.create_repo(token, "taken")
    r = srv.api("PATCH", f"/repos/{login}/first", token=token,
                json={"description": "new", "private": True, "allow_force_pushes": False})
    assert r.status_code == 200
    assert r.json()["private"] is True and r.json()["visibility"] == "private" and r.json()["description"] == "new"
    assert r.json()["allow_force_pushes"] is False
    r = srv.api("PATCH", f"/repos/{login}/first", token=token, json={"name": "taken"})
    assert r.status_code == 422 and r.json()["message"] == "name already exists on this account"
    assert srv.api("PATCH", f"/repos/{login}/first", token=token, json={"name": "../x"}).status_code == 422
    assert srv.api("PATCH", f"/repos/{login}/first", token=token, json={"private": "no"}).status_code == 422
    assert srv.api("PATCH", f"/repos/{login}/first", token=token,
                   json={"private": True, "visibility": "public"}).status_code == 422
    r = srv.api("PATCH", f"/repos/{login}/first", token=token, json={"default_branch": "bad..name"})
    assert r.status_code == 422
    r = srv.api("PATCH", f"/repos/{login}/first", token=token, json={"name": "second"})
    assert r.status_code == 200 and r.json()["full_name"] == f"{login}/second"
    assert srv.api("GET", f"/repos/{login}/first", token=token).status_code == 404
    assert srv.api("GET", f"/repos/{login}/second", token=token).json()["description"] == "new"
    # Deleting takes the delete_repo scope as well as admin access.
    no_delete = srv.api("POST", f"/admin/users/{login}/authorizations", json={"scopes": ["repo"]}).json()["token"]
    r = srv.api("DELETE", f"/repos/{login}/second", token=no_delete)
    assert r.status_code == 403 and "delete_repo" in r.json()["message"]
    assert srv.api("DELETE", f"/repos/{login}/second", token=token).status_code == 204
    assert srv.api("GET", f"/repos/{login}/second", token=token).status_code == 404
    assert srv.api("DELETE", f"/repos/{login}/second", token=token).status_code == 404


def test_list_own_repos_filters_and_pagination(srv: Server) -> None:
    login, friend = unique("lister"), unique("friend")
    token, friend_token = srv.create_user(login), srv.create_user(friend)
    for i in range(3):
        srv.create_repo(token, f"r{i}", private=i == 0)
    srv.create_repo(friend_token, "shared", private=True)
    assert srv.api("PUT", f"/repos/{friend}/shared/collaborators/{login}", token=friend_token).status_code == 201
    everything = [r["full_name"] for r in srv.api("GET", "/user/repos", token=token).json()]
    assert everything == sorted([f"{login}/r0", f"{login}/r1", f"{login}/r2", f"{friend}/shared"], key=str.lower)
    owned = [r["name"] for r in srv.api("GET", "/user/repos?affiliation=owner", token=token).json()]
    assert owned == ["r0", "r1", "r2"]
    assert [r["name"] for r in srv.api("GET", "/user/repos?type=member", token=token).json()] == ["shared"]
    private = [r["name"] for r in srv.api("GET", "/user/repos?visibility=private", token=token).json()]
    assert sorted(private) == ["r0", "shared"]
    page = srv.api("GET", "/user/repos?per_page=3", token=token)
    assert len(page.json()) == 3 and "next" in links(page)
    last = srv.api("GET", "/user/repos?per_page=3&page=2", token=token)
    assert len(last.json()) == 1 and "next" not in links(last) and "prev" in links(last)
    assert srv.api("GET", "/user/repos?visibility=secret", token=token).status_code == 422
    assert srv.api("GET", "/user/repos?sort=stars", token=token).status_code == 422
    assert srv.api("GET", "/user/repos", token="").status_code == 401


def test_a_long_list_of_one_owner_pages_in_name_order_for_everyone(srv: Server) -> None:
    """The pages are read from the store in name order, a chunk at a time: more repositories than a
    chunk, mostly private, so the public ones of a page come from several chunks."""
    owner, friend = unique("hoarder"), unique("pal")
    token, friend_token = srv.create_user(owner), srv.create_user(friend)
    names = [f"{'Rp' if i % 2 else 'rp'}{i:03d}{'.x' if i % 3 == 0 else ''}" for i in range(150)]
    for i, name in enumerate(names):
        srv.create_repo(token, name, private=i % 5 != 0)
    shared = names[7]  # private, and the friend may read it
    assert srv.api("PUT", f"/repos/{owner}/{shared}/collaborators/{friend}", token=token).status_code == 201

    def every_page(caller: str, query: str = "") -> list[str]:
        seen, page = [], 1
        while True:
            r = srv.api("GET", f"/users/{owner}/repos?per_page=20&page={page}{query}", token=caller)
            assert r.status_code == 200, r.text
            seen += [repo["name"] for repo in r.json()]
            if "next" not in links(r):
                return seen
            assert len(r.json()) == 20
            page += 1

    in_order = sorted(names, key=str.lower)
    public = [n for n in in_order if names.index(n) % 5 == 0]
    assert every_page(token) == in_order
    assert every_page("") == public  # anonymous
    assert every_page(friend_token) == sorted([*public, shared], key=str.lower)
    assert every_page(token, "&visibility=private") == [n for n in in_order if n not in public]
    # Another order is sorted whole, as before.
    newest = [r["name"] for r in srv.api("GET", f"/users/{owner}/repos?sort=created&per_page=3", token=token).json()]
    assert newest == names[::-1][:3]


# -- organizations -----------------------------------------------------------------------------


def test_organizations_and_memberships(srv: Server) -> None:
    owner, member, outsider = unique("boss"), unique("staff"), unique("guest")
    owner_t, member_t, outsider_t = (srv.create_user(u) for u in (owner, member, outsider))
    org = unique("org")
    r = srv.api("POST", "/admin/organizations", json={"login": org, "admin": owner, "profile_name": "The Org"})
    assert r.status_code == 201 and r.json()["login"] == org and r.json()["name"] == "The Org"
    assert srv.api("POST", "/admin/organizations", json={"login": org, "admin": owner}).status_code == 422
    assert srv.api("POST", "/admin/organizations", json={"login": unique("o"), "admin": "nobody-x"}).status_code == 422
    assert srv.api("POST", "/admin/organizations", json={"login": "bad login", "admin": owner}).status_code == 422
    assert srv.api("GET", f"/orgs/{org}", token=outsider_t).json()["type"] == "Organization"
    assert srv.api("GET", f"/orgs/{owner}").status_code == 404  # a user is not an organization
    assert org in [o["login"] for o in srv.api("GET", "/organizations?per_page=100").json()]

    r = srv.api("PUT", f"/orgs/{org}/memberships/{member}", token=owner_t, json={"role": "member"})
    assert r.status_code == 200 and r.json()["role"] == "member" and r.json()["state"] == "active"
    assert srv.api("PUT", f"/orgs/{org}/memberships/{outsider}", token=member_t, json={}).status_code == 403
    r = srv.api("PUT", f"/orgs/{org}/memberships/{outsider}", token=owner_t, json={"role": "boss"})
    assert r.status_code == 422 and error_fields(r) == ["role"]
    assert srv.api("PUT", f"/orgs/{org}/memberships/{org}", token=owner_t, json={}).status_code == 404
    assert [o["login"] for o in srv.api("GET", "/user/orgs", token=member_t).json()] == [org]
    assert srv.api("GET", f"/orgs/{org}/memberships/{member}", token=member_t).json()["role"] == "member"
    assert srv.api("GET", f"/orgs/{org}/memberships/{member}", token=outsider_t).status_code == 404

    members = {m["login"] for m in srv.api("GET", f"/orgs/{org}/members", token=member_t).json()}
    assert members == {owner, member}
    admins = [m["login"] for m in srv.api("GET", f"/orgs/{org}/members?role=admin", token=member_t).json()]
    assert admins == [owner]
    assert srv.api("GET", f"/orgs/{org}/members", token=outsider_t).json() == []
    assert srv.api("GET", f"/orgs/{org}/members/{member}", token=owner_t).status_code == 204
    assert srv.api("GET", f"/orgs/{org}/members/{outsider}", token=owner_t).status_code == 404

    assert srv.api("PATCH", f"/orgs/{org}", token=member_t, json={"name": "x"}).status_code == 403
    r = srv.api("PATCH", f"/orgs/{org}", token=owner_t, json={"name": "Renamed", "email": "org@example.com"})
    assert r.status_code == 200 and r.json()["name"] == "Renamed"

    # Members may create repositories and administer the ones they create; outsiders may not.
    r = srv.api("POST", f"/orgs/{org}/repos", token=member_t, json={"name": "tool", "private": True})
    assert r.status_code == 201 and r.json()["permissions"]["admin"] is True
    assert srv.api("POST", f"/orgs/{org}/repos", token=outsider_t, json={"name": "x"}).status_code == 403
    srv.create_repo(owner_t, "internal", org=org, private=True)
    names = [r["name"] for r in srv.api("GET", f"/orgs/{org}/repos", token=member_t).json()]
    assert sorted(names) == ["internal", "tool"]
    assert srv.api("GET", f"/orgs/{org}/repos", token=outsider_t).json() == []
    assert srv.api("GET", f"/repos/{org}/internal", token=member_t).json()["permissions"]["push"] is False

    # The last owner cannot leave; members can.
    assert srv.api("DELETE", f"/orgs/{org}/memberships/{owner}", token=owner_t).status_code == 422
    assert srv.api("DELETE", f"/orgs/{org}/members/{owner}", token=member_t).status_code == 403
    assert srv.api("DELETE", f"/orgs/{org}/memberships/{member}", token=member_t).status_code == 204
    assert srv.api("GET", "/user/orgs", token=member_t).json() == []

    assert srv.api("DELETE", f"/orgs/{org}", token=member_t).status_code == 403
    assert srv.api("DELETE", f"/orgs/{org}", token=owner_t).status_code == 202
    assert srv.api("GET", f"/orgs/{org}").status_code == 404
    assert srv.api("GET", f"/repos/{org}/internal").status_code == 404


def test_transfer(srv: Server) -> None:
    alice, bob = unique("giver"), unique("taker")
    alice_t, bob_t = srv.create_user(alice), srv.create_user(bob)
    org = unique("dest")
    srv.api("POST", "/admin/organizations", json={"login": org, "admin": alice})
    srv.create_repo(alice_t, "moving")
    srv.create_repo(alice_t, "other")
    srv.create_repo(bob_t, "moving")
    # Not to someone else's account: that would need their consent.
    assert srv.api("POST", f"/repos/{alice}/moving/transfer", token=alice_t, json={"new_owner": bob}).status_code == 403
    assert srv.api("POST", f"/repos/{alice}/moving/transfer", token=bob_t, json={"new_owner": bob}).status_code == 403
    r = srv.api("POST", f"/repos/{alice}/moving/transfer", token=alice_t, json={"new_owner": "nobody-zz"})
    assert r.status_code == 422
    r = srv.api("POST", f"/repos/{alice}/moving/transfer", token=alice_t, json={})
    assert r.status_code == 422 and error_fields(r) == ["new_owner"]
    r = srv.api("POST", f"/repos/{alice}/moving/transfer", token=alice_t, json={"new_owner": org})
    assert r.status_code == 202 and r.json()["full_name"] == f"{org}/moving"
    assert srv.api("GET", f"/repos/{alice}/moving").status_code == 404
    assert srv.api("GET", f"/repos/{org}/moving").status_code == 200
    # A site admin may move it anywhere, but not onto a taken name.
    r = srv.api("POST", f"/repos/{org}/moving/transfer", json={"new_owner": bob})
    assert r.status_code == 422 and r.json()["message"] == "name already exists on this account"
    r = srv.api("POST", f"/repos/{org}/moving/transfer", json={"new_owner": bob, "new_name": "moved"})
    assert r.status_code == 202 and r.json()["full_name"] == f"{bob}/moved"


# -- collaborators -----------------------------------------------------------------------------


def test_collaborator_rules(srv: Server) -> None:
    owner, reader, writer = unique("own"), unique("read"), unique("write")
    owner_t, reader_t, writer_t = (srv.create_user(u) for u in (owner, reader, writer))
    srv.create_repo(owner_t, "team", private=True)
    base = f"/repos/{owner}/team/collaborators"
    r = srv.api("PUT", f"{base}/{reader}", token=owner_t, json={"permission": "pull"})
    assert r.status_code == 201 and r.json()["invitee"]["login"] == reader
    assert srv.api("PUT", f"{base}/{reader}", token=owner_t, json={"permission": "triage"}).status_code == 204
    assert srv.api("PUT", f"{base}/{writer}", token=owner_t, json={"permission": "write"}).status_code == 201
    r = srv.api("PUT", f"{base}/{writer}", token=owner_t, json={"permission": "god"})
    assert r.status_code == 422 and error_fields(r) == ["permission"]
    assert srv.api("PUT", f"{base}/{owner}", token=owner_t, json={}).status_code == 422
    assert srv.api("PUT", f"{base}/no-such-person", token=owner_t, json={}).status_code == 404
    assert srv.api("PUT", f"{base}/{reader}", token=writer_t, json={"permission": "admin"}).status_code == 403
    # Listing takes push access, as on GitHub.
    assert srv.api("GET", base, token=reader_t).status_code == 403
    people = {c["login"]: c["permissions"] for c in srv.api("GET", base, token=writer_t).json()}
    assert set(people) == {owner, reader, writer}
    assert people[writer]["push"] and not people[writer]["admin"] and not people[reader]["push"]
    assert srv.api("GET", f"{base}/{reader}", token=reader_t).status_code == 204
    outsider_t = srv.create_user(unique("out"))
    assert srv.api("GET", f"{base}/{reader}", token=outsider_t).status_code == 404  # cannot see the repo
    perm = srv.api("GET", f"{base}/{writer}/permission", token=reader_t).json()
    assert perm["permission"] == "write" and perm["user"]["login"] == writer
    assert srv.api("GET", f"{base}/{owner}/permission", token=reader_t).json()["permission"] == "admin"
    # The reader can read but not write.
    assert srv.api("PATCH", f"/repos/{owner}/team", token=reader_t, json={"description": "x"}).status_code == 403
    assert srv.api("DELETE", f"{base}/{writer}", token=reader_t).status_code == 403
    assert srv.api("DELETE", f"{base}/{reader}", token=reader_t).status_code == 204  # leaving is allowed
    assert srv.api("GET", f"/repos/{owner}/team", token=reader_t).status_code == 404
    assert srv.api("DELETE", f"{base}/{writer}", token=owner_t).status_code == 204
    assert srv.api("DELETE", f"{base}/{writer}", token=owner_t).status_code == 404


# -- site administration -------------------------------------------------------------------------


def test_admin_endpoints_need_a_site_admin_with_the_scope(srv: Server) -> None:
    user_t = srv.create_user(unique("plain"))
    for method, path, body in [
        ("POST", "/admin/users", {"login": unique("x")}),
        ("POST", "/admin/organizations", {"login": unique("x"), "admin": "admin"}),
        ("POST", "/admin/users/admin/authorizations", {"scopes": ["repo"]}),
        ("DELETE", "/admin/users/admin/authorizations", None),
        ("PUT", "/users/admin/suspended", None),
        ("DELETE", "/admin/users/admin", None),
    ]:
        assert srv.api(method, path, token=user_t, json=body).status_code == 403, path
        assert srv.api(method, path, token="", json=body).status_code == 401, path
    admin_repo_only = srv.api("POST", "/admin/users/admin/authorizations", json={"scopes": ["repo"]}).json()["token"]
    r = srv.api("POST", "/admin/users", token=admin_repo_only, json={"login": unique("x")})
    assert r.status_code == 403 and "site_admin" in r.json()["message"]


def test_admin_user_lifecycle(srv: Server) -> None:
    login = unique("life")
    r = srv.api("POST", "/admin/users", json={"login": login, "email": "l@example.com", "name": "Life"})
    assert r.status_code == 201 and r.json()["login"] == login and r.json()["name"] == "Life"
    assert srv.api("POST", "/admin/users", json={"login": login.upper()}).status_code == 422
    for bad in ["-x", "a--b", "x" * 40, "a/b", "../x", "api"]:
        assert srv.api("POST", "/admin/users", json={"login": bad}).status_code == 422, bad
    assert srv.api("POST", "/admin/users", json={"login": 3}).status_code == 422
    assert srv.api("POST", "/admin/users", json={}).status_code == 422

    base = f"/admin/users/{login}/authorizations"
    r = srv.api("POST", base, json={"scopes": ["repo", "user"], "note": "ci"})
    assert r.status_code == 201
    tok = r.json()
    assert tok["token"].startswith("bwk_") and tok["token_last_eight"] == tok["token"][-8:]
    assert tok["scopes"] == ["repo", "user"] and tok["note"] == "ci" and tok["id"] and tok["created_at"]
    assert srv.api("GET", "/user", token=tok["token"]).json()["login"] == login
    assert srv.api("POST", base, json={"scopes": ["everything"]}).status_code == 422
    assert srv.api("POST", base, json={"scopes": "repo"}).status_code == 422
    assert srv.api("POST", base, json={"scopes": [1]}).status_code == 422
    assert srv.api("POST", base, json={}).status_code == 422
    assert srv.api("POST", base, json={"scopes": [], "expires_at": "tomorrow"}).status_code == 422
    assert srv.api("POST", base, json={"scopes": [], "expires_at": "2001-01-01T00:00:00Z"}).status_code == 422
    r = srv.api("POST", base, json={"scopes": [], "expires_at": "2999-01-01T00:00:00Z"})
    assert r.status_code == 201 and r.json()["expires_at"] == "2999-01-01T00:00:00Z"
    assert srv.api("POST", "/admin/users/nobody-q/authorizations", json={"scopes": []}).status_code == 404

    # Suspension locks the user out and is undone cleanly.
    assert srv.api("PUT", f"/users/{login}/suspended", json={"reason": "testing"}).status_code == 204
    r = srv.api("GET", "/user", token=tok["token"])
    assert r.status_code in (401, 403)
    assert srv.api("GET", f"/users/{login}").json()["suspended_at"] is not None
    assert srv.api("DELETE", f"/users/{login}/suspended").status_code == 204
    assert srv.api("GET", "/user", token=tok["token"]).status_code == 200

    # Revoking every token of the user.
    assert srv.api("DELETE", base).status_code == 204
    assert srv.api("GET", "/user", token=tok["token"]).status_code == 401

    renamed = unique("renamed")
    r = srv.api("PATCH", f"/admin/users/{login}", json={"login": renamed})
    assert r.status_code == 202 and r.json()["url"].endswith(f"/users/{renamed}")
    assert srv.api("GET", f"/users/{login}").status_code == 404
    assert srv.api("PATCH", f"/admin/users/{renamed}", json={"login": "admin"}).status_code == 422
    assert srv.api("PATCH", f"/admin/users/{renamed}", json={"login": "no good"}).status_code == 422


def test_organizations_cannot_be_suspended_or_get_tokens(srv: Server) -> None:
    owner = unique("orgowner")
    srv.create_user(owner)
    org = unique("acme")
    srv.api("POST", "/admin/organizations", json={"login": org, "admin": owner})
    assert srv.api("PUT", f"/users/{org}/suspended").status_code in (404, 422)
    assert srv.api("POST", f"/admin/users/{org}/authorizations", json={"scopes": []}).status_code in (404, 422)


def test_maintenance_mode_leaves_site_admin_routes_to_site_admins(server: Server) -> None:
    token = server.create_user("worker")
    assert bulwark("maintenance", "on", "-m", "upgrading", env=server.env()).returncode == 0
    try:
        r = server.api("POST", "/user/repos", token=token, json={"name": "x"})
        assert r.status_code == 503 and r.json()["message"] == "upgrading" and "retry-after" in r.headers
        assert server.api("GET", "/user", token=token).status_code == 503
        assert server.api("GET", "/users").status_code == 503  # even site admins, outside the admin API
        assert server.api("POST", "/admin/users", token=token, json={"login": "nope"}).status_code == 503
        assert server.api("POST", "/admin/users", json={"login": "during"}).status_code == 201
        assert server.api("PUT", "/users/worker/suspended").status_code == 204
    finally:
        assert bulwark("maintenance", "off", env=server.env()).returncode == 0
    assert server.api("GET", "/users/during").status_code == 200


def test_deleting_users_removes_their_repositories(server: Server) -> None:
    token = server.create_user("doomed")
    server.create_repo(token, "data")
    repo_dirs = list((server.data_dir / "repositories").rglob("*.git"))
    assert len(repo_dirs) == 1
    # The one site admin cannot delete itself, nor be suspended.
    assert server.api("DELETE", "/admin/users/admin").status_code == 403
    assert server.api("PUT", "/users/admin/suspended").status_code == 403
    assert server.api("DELETE", "/admin/users/doomed").status_code == 204
    assert server.api("GET", "/users/doomed").status_code == 404
    assert server.api("GET", "/repos/doomed/data").status_code == 404
    assert not any(d.exists() for d in repo_dirs)
    assert server.api("GET", "/user", token=token).status_code == 401
    assert server.api("DELETE", "/admin/users/doomed").status_code == 404
    # With a second site admin, the first may go.
    server.create_user("second", site_admin=True, scopes=["site_admin"])
    assert server.api("DELETE", "/admin/users/admin").status_code == 204


# -- git data: branches, refs, commits, contents -------------------------------------------------


@pytest.fixture
def pushed(srv: Server, tmp_path: Path) -> dict[str, Any]:
    """A repository with two commits on main and feature/deep/branch, pushed with git."""
    login = unique("coder")
    token = srv.create_user(login)
    srv.create_repo(token, "code")
    first = push(srv, tmp_path, login, "code", token, {"README.md": b"# hello\n", "src/app.py": b"print(1)\n"})
    second = push(srv, tmp_path, login, "code", token, {"src/app.py": b"print(2)\n"},
                  branches=("main", "feature/deep/branch"), message="second")
    return {"login": login, "token": token, "first": first, "second": second, "tmp": tmp_path}


def test_empty_repository(srv: Server) -> None:
    login = unique("empty")
    token = srv.create_user(login)
    srv.create_repo(token, "void")
    base = f"/repos/{login}/void"
    r = srv.api("GET", f"{base}/contents/README.md", token=token)
    assert r.status_code == 404 and r.json()["message"] == "This repository is empty."
    assert srv.api("GET", f"{base}/branches", token=token).json() == []
    assert srv.api("GET", f"{base}/commits", token=token).status_code == 409
    assert srv.api("GET", f"{base}/git/refs", token=token).status_code == 409


def test_branches(srv: Server, pushed: dict[str, Any]) -> None:
    base = f"/repos/{pushed['login']}/code"
    r = srv.api("GET", f"{base}/branches")
    assert r.status_code == 200
    assert {b["name"]: b["commit"]["sha"] for b in r.json()} == {
        "main": pushed["second"], "feature/deep/branch": pushed["second"]}
    page = srv.api("GET", f"{base}/branches?per_page=1")
    assert len(page.json()) == 1 and "next" in links(page)
    r = srv.api("GET", f"{base}/branches/feature/deep/branch")
    assert r.status_code == 200 and r.json()["name"] == "feature/deep/branch"
    assert r.json()["commit"]["sha"] == pushed["second"]
    assert r.json()["commit"]["parents"][0]["sha"] == pushed["first"]
    assert srv.api("GET", f"{base}/branches/feature").status_code == 404
    assert srv.api("GET", f"{base}/branches/--all").status_code == 404
    assert srv.api("GET", f"{base}/branches/..%2F..").status_code == 404


def test_refs_read(srv: Server, pushed: dict[str, Any]) -> None:
    base = f"/repos/{pushed['login']}/code/git"
    refs = srv.api("GET", f"{base}/refs").json()
    assert {r["ref"] for r in refs} == {"refs/heads/main", "refs/heads/feature/deep/branch"}
    exact = srv.api("GET", f"{base}/refs/heads/main").json()
    assert exact["ref"] == "refs/heads/main" and exact["object"] == {
        "sha": pushed["second"], "type": "commit", "url": exact["object"]["url"]}
    prefix = srv.api("GET", f"{base}/refs/heads/feat").json()
    assert isinstance(prefix, list) and [r["ref"] for r in prefix] == ["refs/heads/feature/deep/branch"]
    assert len(srv.api("GET", f"{base}/refs/heads").json()) == 2
    assert srv.api("GET", f"{base}/refs/heads/nothing").status_code == 404
    assert srv.api("GET", f"{base}/ref/heads/main").json()["ref"] == "refs/heads/main"
    assert srv.api("GET", f"{base}/ref/heads/feat").status_code == 404
    assert srv.api("GET", f"{base}/matching-refs/heads/nothing").json() == []


def test_refs_write(srv: Server, pushed: dict[str, Any]) -> None:
    login, token = pushed["login"], pushed["token"]
    base = f"/repos/{login}/code/git/refs"
    r = srv.api("POST", base, token=token, json={"ref": "refs/heads/old", "sha": pushed["first"]})
    assert r.status_code == 201 and r.json()["object"]["sha"] == pushed["first"]
    dup = srv.api("POST", base, token=token, json={"ref": "refs/heads/old", "sha": pushed["first"]})
    assert dup.status_code == 422 and dup.json()["message"] == "Reference already exists"
    for bad in ["heads/x", "refs/heads/a..b", "refs/heads/x.lock", "refs/x", "refs/heads/a b", "refs/heads/-/../x",
                "refs/heads/main/sub", "refs/heads/.hidden", "refs/heads/x~1"]:
        r = srv.api("POST", base, token=token, json={"ref": bad, "sha": pushed["first"]})
        assert r.status_code == 422, (bad, r.text)
    for bad_sha in ["0" * 40, "HEAD", "--all", pushed["first"][:10], 5]:
        r = srv.api("POST", base, token=token, json={"ref": "refs/heads/y", "sha": bad_sha})
        assert r.status_code == 422, bad_sha
    assert srv.api("POST", base, token=token, json={"ref": "refs/heads/y"}).status_code == 422

    # Fast-forward: fine. Backwards: refused unless forced.
    r = srv.api("PATCH", f"{base}/heads/old", token=token, json={"sha": pushed["second"]})
    assert r.status_code == 200 and r.json()["object"]["sha"] == pushed["second"]
    r = srv.api("PATCH", f"{base}/heads/old", token=token, json={"sha": pushed["first"]})
    assert r.status_code == 422 and r.json()["message"] == "Update is not a fast forward"
    r = srv.api("PATCH", f"{base}/heads/old", token=token, json={"sha": pushed["first"], "force": True})
    assert r.status_code == 200 and r.json()["object"]["sha"] == pushed["first"]
    assert srv.api("PATCH", f"{base}/heads/nothing", token=token, json={"sha": pushed["first"]}).status_code == 422
    assert srv.api("PATCH", f"{base}/heads/old", token=token, json={"sha": pushed["second"], "force": "yes"}
                   ).status_code == 422
    # A repository that forbids force pushes refuses forced updates too.
    srv.api("PATCH", f"/repos/{login}/code", token=token, json={"allow_force_pushes": False})
    srv.api("PATCH", f"{base}/heads/old", token=token, json={"sha": pushed["second"]})
    r = srv.api("PATCH", f"{base}/heads/old", token=token, json={"sha": pushed["first"], "force": True})
    assert r.status_code == 422
    assert srv.api("GET", f"{base}/heads/old").json()["object"]["sha"] == pushed["second"]

    # Deleting: not the default branch.
    assert srv.api("DELETE", f"{base}/heads/main", token=token).status_code == 422
    assert srv.api("DELETE", f"{base}/heads/old", token=token).status_code == 204
    assert srv.api("DELETE", f"{base}/heads/old", token=token).status_code == 422
    assert srv.api("GET", f"{base}/heads/old").status_code == 404

    # Readers cannot write refs; strangers cannot either.
    reader = unique("reader")
    reader_t = srv.create_user(reader)
    srv.api("PUT", f"/repos/{login}/code/collaborators/{reader}", token=token, json={"permission": "pull"})
    r = srv.api("POST", base, token=reader_t, json={"ref": "refs/heads/z", "sha": pushed["first"]})
    assert r.status_code == 403
    assert srv.api("DELETE", f"{base}/heads/feature/deep/branch", token=reader_t).status_code == 403
    assert srv.api("POST", base, token="", json={"ref": "refs/heads/z", "sha": pushed["first"]}).status_code == 401


def test_concurrent_ref_updates_never_lose_one(srv: Server, pushed: dict[str, Any]) -> None:
    """Many writers move one ref from the same base to different children: one wins, the rest are told."""
    login, token, tmp = pushed["login"], pushed["token"], pushed["tmp"]
    env = git_env(tmp / "home")
    work = tmp / "work"
    children = []
    for i in range(8):
        git("checkout", "-q", "--detach", pushed["second"], cwd=work, env=env)
        (work / f"child{i}.txt").write_text(str(i))
        git("add", "-A", cwd=work, env=env)
        git("commit", "-q", "-m", f"child {i}", cwd=work, env=env)
        children.append(git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip())
    remote = srv.remote(login, "code", user=login, token=token)
    git("push", "-q", remote, *[f"{c}:refs/heads/child{i}" for i, c in enumerate(children)], cwd=work, env=env)
    base = f"/repos/{login}/code/git/refs"
    srv.api("POST", base, token=token, json={"ref": "refs/heads/race", "sha": pushed["second"]})

    def move(sha: str) -> tuple[str, int]:
        return sha, srv.api("PATCH", f"{base}/heads/race", token=token, json={"sha": sha}).status_code

    with ThreadPoolExecutor(len(children)) as pool:
        results = list(pool.map(move, children))
    winners = [sha for sha, status in results if status == 200]
    assert all(status in (200, 409, 422) for _, status in results), results
    assert len(winners) == 1, results
    assert srv.api("GET", f"{base}/heads/race").json()["object"]["sha"] == winners[0]


def test_commits(srv: Server, pushed: dict[str, Any]) -> None:
    base = f"/repos/{pushed['login']}/code/commits"
    r = srv.api("GET", base)
    assert r.status_code == 200 and [c["sha"] for c in r.json()] == [pushed["second"], pushed["first"]]
    page = srv.api("GET", f"{base}?per_page=1")
    assert [c["sha"] for c in page.json()] == [pushed["second"]] and "next" in links(page)
    page2 = srv.api("GET", f"{base}?per_page=1&page=2")
    assert [c["sha"] for c in page2.json()] == [pushed["first"]] and "next" not in links(page2)
    assert [c["sha"] for c in srv.api("GET", f"{base}?path=README.md").json()] == [pushed["first"]]
    assert [c["sha"] for c in srv.api("GET", f"{base}?sha={pushed['first']}").json()] == [pushed["first"]]
    assert len(srv.api("GET", f"{base}?sha=feature/deep/branch").json()) == 2
    assert srv.api("GET", f"{base}?sha=nothing").status_code == 404
    assert srv.api("GET", f"{base}?sha=--all").status_code == 404
    assert srv.api("GET", f"{base}?path=../etc").status_code == 422

    one = srv.api("GET", f"{base}/{pushed['second']}").json()
    assert one["sha"] == pushed["second"] and one["commit"]["message"] == "second"
    assert [p["sha"] for p in one["parents"]] == [pushed["first"]]
    assert one["commit"]["author"]["email"] == "author@example.com"
    assert one["commit"]["committer"]["name"] == "Test Committer"
    assert re.fullmatch(r"[0-9a-f]{40}", one["commit"]["tree"]["sha"])
    assert srv.api("GET", f"{base}/feature/deep/branch").json()["sha"] == pushed["second"]
    assert srv.api("GET", f"{base}/{'0' * 40}").status_code == 404
    assert srv.api("GET", f"{base}/main~1").status_code == 404  # no revision expressions


def test_contents(srv: Server, pushed: dict[str, Any]) -> None:
    import base64

    login, token = pushed["login"], pushed["token"]
    base = f"/repos/{login}/code/contents"
    r = srv.api("GET", f"{base}/src/app.py")
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "file" and body["encoding"] == "base64" and body["size"] == 9
    assert base64.b64decode(body["content"]) == b"print(2)\n" and body["path"] == "src/app.py"
    old = srv.api("GET", f"{base}/src/app.py?ref={pushed['first']}").json()
    assert base64.b64decode(old["content"]) == b"print(1)\n"
    root = srv.api("GET", base).json()
    assert sorted((e["name"], e["type"]) for e in root) == [("README.md", "file"), ("src", "dir")]
    assert [e["path"] for e in srv.api("GET", f"{base}/src").json()] == ["src/app.py"]
    assert srv.api("GET", f"{base}/missing.txt").status_code == 404
    assert srv.api("GET", f"{base}/src/app.py?ref=nothing").status_code == 404
    # Clients normalise "..", so these come encoded, the way an attacker would send them.
    for bad in ["..%2F..%2Fetc%2Fpasswd", "src%2F..%2FREADME.md", "src%2F.%2Fapp.py", "src%2F%2Fapp.py"]:
        assert srv.api("GET", f"{base}/{bad}").status_code == 422, bad

    push(srv, pushed["tmp"], login, "code", token, {"big.bin": b"x" * (1024 * 1024 + 1)}, message="big")
    r = srv.api("GET", f"{base}/big.bin")
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "too_large"


def test_writes_to_a_missing_or_hidden_repo_are_404(srv: Server) -> None:
    login = unique("hider")
    token = srv.create_user(login)
    srv.create_repo(token, "hidden", private=True)
    other = srv.create_user(unique("seeker"))
    for method, path in [("POST", "/git/refs"), ("PATCH", "/git/refs/heads/main"), ("DELETE", "/git/refs/heads/x"),
                         ("GET", "/branches"), ("GET", "/commits"), ("GET", "/contents/x"),
                         ("PUT", "/collaborators/admin"), ("POST", "/transfer")]:
        r = srv.api(method, f"/repos/{login}/hidden{path}", token=other, json={})
        assert r.status_code == 404, (method, path, r.text)


def test_git_client_is_real(srv: Server, pushed: dict[str, Any], tmp_path: Path) -> None:
    """What the API reports is what a fresh clone through the server sees."""
    env = git_env(pushed["tmp"] / "home")
    clone = tmp_path / "clone"
    remote = srv.remote(pushed["login"], "code", user=pushed["login"], token=pushed["token"])
    git("clone", "-q", remote, str(clone), env=env)
    head = git("rev-parse", "HEAD", cwd=clone, env=env).stdout.strip()
    assert head == srv.api("GET", f"/repos/{pushed['login']}/code/branches/main").json()["commit"]["sha"]
    assert subprocess.run(["git", "-C", str(clone), "fsck", "--no-progress"], env=env).returncode == 0
