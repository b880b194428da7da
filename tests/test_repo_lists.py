"""Repository lists in name order over HTTP: pages by number and by the cursor of the next link,
across owners, organizations and collaborations, while others write; bad cursors and pages past
the end."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.helpers import Server

pytestmark = [pytest.mark.timeout(180), pytest.mark.system]

_ids = itertools.count()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(data_dir=tmp_path_factory.mktemp("lists") / "node").start()
    try:
        yield server
    finally:
        server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def next_link(r: httpx.Response) -> str | None:
    found = re.findall(r'<([^>]+)>; rel="next"', r.headers.get("link", ""))
    return found[0] if found else None


def by_links(srv: Server, path: str, token: str) -> list[str]:
    """Every page, following the next links as GitHub's client libraries do."""
    seen: list[str] = []
    url: str | None = f"{srv.url}/api/v3{path}"
    while url is not None:
        r = httpx.get(url, headers={"Authorization": f"token {token}"} if token else {}, timeout=30)
        assert r.status_code == 200, r.text
        seen += [repo["full_name"] for repo in r.json()]
        url = next_link(r)
    return seen


def by_numbers(srv: Server, path: str, token: str) -> list[str]:
    seen: list[str] = []
    for page in itertools.count(1):
        r = srv.api("GET", f"{path}&page={page}", token=token)
        assert r.status_code == 200, r.text
        seen += [repo["full_name"] for repo in r.json()]
        if next_link(r) is None:
            return seen
    raise AssertionError("unreachable")


def in_list_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda full: tuple(full.lower().split("/")))


@pytest.fixture(scope="module")
def world(srv: Server) -> dict[str, str]:
    """A user with repositories of their own, two organizations (one a member of, one an owner of)
    and collaborations on another user's repositories; names of mixed case."""
    me, friend, stranger = unique("Walker"), unique("ally"), unique("zed")
    tokens = {login: srv.create_user(login) for login in (me, friend, stranger)}
    member_of, owner_of = unique("aorg"), unique("Morg")
    for org, admin in ((member_of, stranger), (owner_of, me)):
        assert srv.api("POST", "/admin/organizations", json={"login": org, "admin": admin}).status_code == 201
    r = srv.api("PUT", f"/orgs/{member_of}/memberships/{me}", token=tokens[stranger], json={"role": "member"})
    assert r.status_code == 200, r.text
    for i in range(23):
        srv.create_repo(tokens[me], f"{'Mine' if i % 2 else 'mine'}{i:02d}", private=i % 3 == 0)
    for i in range(9):
        srv.create_repo(tokens[stranger], f"team{i}", private=i % 2 == 0, org=member_of)
        srv.create_repo(tokens[me], f"Own{i}", private=i % 2 == 1, org=owner_of)
    for i in range(6):
        srv.create_repo(tokens[friend], f"lib{i}", private=i < 4)
        srv.create_repo(tokens[stranger], f"solo{i}", private=True)  # none of mine
    for name in ("lib0", "lib2", "lib5"):
        r = srv.api("PUT", f"/repos/{friend}/{name}/collaborators/{me}", token=tokens[friend])
        assert r.status_code == 201, r.text
    # A collaboration on a repository of an organization I belong to is listed once.
    r = srv.api("PUT", f"/repos/{member_of}/team3/collaborators/{me}", token=tokens[stranger])
    assert r.status_code == 201, r.text
    return {"me": me, "friend": friend, "stranger": stranger, "member_of": member_of, "owner_of": owner_of,
            **{f"token:{login}": token for login, token in tokens.items()}}


def test_the_own_list_is_the_same_by_links_and_by_page_numbers(srv: Server, world: dict[str, str]) -> None:
    me, token = world["me"], world[f"token:{world['me']}"]
    expected = in_list_order(
        [f"{me}/{'Mine' if i % 2 else 'mine'}{i:02d}" for i in range(23)]
        + [f"{world['member_of']}/team{i}" for i in range(9)]
        + [f"{world['owner_of']}/Own{i}" for i in range(9)]
        + [f"{world['friend']}/lib{i}" for i in (0, 2, 5)]
    )
    for per_page in (1, 4, 7, 100):
        assert by_links(srv, f"/user/repos?per_page={per_page}", token) == expected
        assert by_numbers(srv, f"/user/repos?per_page={per_page}", token) == expected
    # Filters apply to every page, by either way.
    public = [f for f in expected if srv.api("GET", f"/repos/{f}", token="").status_code != 404]
    assert by_links(srv, "/user/repos?per_page=5&visibility=public", token) == public
    assert by_numbers(srv, "/user/repos?per_page=5&visibility=public", token) == public
    owned = [f for f in expected if f.startswith(f"{me}/")]
    assert by_links(srv, "/user/repos?per_page=6&affiliation=owner", token) == owned
    member = [f for f in expected if not f.startswith(f"{me}/")]  # an organization's owner is a member
    assert by_numbers(srv, "/user/repos?per_page=6&affiliation=collaborator,organization_member", token) == member


def test_a_token_limited_to_public_repositories_lists_only_those(srv: Server, world: dict[str, str]) -> None:
    me = world["me"]
    r = srv.api("POST", f"/admin/users/{me}/authorizations", json={"scopes": ["public_repo"]})
    assert r.status_code == 201, r.text
    weak = r.json()["token"]
    full = by_links(srv, "/user/repos?per_page=100", world[f"token:{me}"])
    public = [f for f in full if srv.api("GET", f"/repos/{f}", token="").status_code == 200]
    assert by_links(srv, "/user/repos?per_page=3", weak) == public
    assert by_numbers(srv, "/user/repos?per_page=3", weak) == public


def test_a_walk_by_links_while_others_write(srv: Server, world: dict[str, str]) -> None:
    """Repositories created and deleted behind and ahead of the walk: every one there throughout is
    listed once, in order, and so is every one created ahead of where the walk is."""
    owner = unique("busy")
    token = srv.create_user(owner)
    for i in range(0, 40, 2):
        srv.create_repo(token, f"r{i:02d}")
    seen: list[str] = []
    url: str | None = f"{srv.url}/api/v3/user/repos?per_page=6"
    created_ahead: list[str] = []
    deleted: list[str] = []
    while url is not None:
        r = httpx.get(url, headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        names = [repo["name"] for repo in r.json()]
        seen += names
        url = next_link(r)
        if url and names:
            last = names[-1]
            srv.create_repo(token, f"{last}x")  # just ahead of the cursor
            created_ahead.append(f"{last}x")
            srv.create_repo(token, f"a{last}")  # behind it
            gone = seen[0] if seen[0] not in deleted else None
            if gone and srv.api("DELETE", f"/repos/{owner}/{gone}", token=token).status_code == 204:
                deleted.append(gone)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, key=str.lower)
    lasting = [f"r{i:02d}" for i in range(0, 40, 2)]
    assert set(lasting) | set(created_ahead) <= set(seen)


def test_bad_cursors_are_refused_with_a_clear_422(srv: Server, world: dict[str, str]) -> None:
    me, token = world["me"], world[f"token:{world['me']}"]
    first = srv.api("GET", "/user/repos?per_page=2", token=token)
    link = next_link(first)
    assert link is not None
    cursor = parse_qs(urlsplit(link).query)["cursor"][0]
    other_list = srv.api("GET", f"/users/{me}/repos?per_page=2&cursor={cursor}", token=token)
    other_filter = srv.api("GET", f"/user/repos?per_page=2&visibility=public&cursor={cursor}", token=token)
    for r in (
        other_list,
        other_filter,
        srv.api("GET", "/user/repos?cursor=%%%", token=token),
        srv.api("GET", "/user/repos?cursor=", token=token),
        srv.api("GET", "/user/repos?cursor=bm90IGpzb24", token=token),  # base64 of "not json"
        srv.api("GET", "/user/repos?cursor=W10", token=token),  # []
        srv.api("GET", f"/user/repos?cursor={'A' * 5000}", token=token),
    ):
        assert r.status_code == 422, r.text
        body = r.json()
        assert "cursor" in body["message"] and body["errors"][0]["field"] == "cursor"
    # The cursor of the right list works, and so does the page number alone.
    assert srv.api("GET", f"/user/repos?per_page=2&cursor={cursor}", token=token).status_code == 200


def test_pages_past_the_end_are_empty(srv: Server, world: dict[str, str]) -> None:
    me, token = world["me"], world[f"token:{world['me']}"]
    for path in ("/user/repos", f"/users/{me}/repos", f"/users/{me}/repos?visibility=private"):
        sep = "&" if "?" in path else "?"
        for caller in (token, ""):
            if path.startswith("/user/") and not caller:
                continue
            r = srv.api("GET", f"{path}{sep}per_page=100&page=1000000", token=caller)
            assert r.status_code == 200 and r.json() == [], r.text
            assert next_link(r) is None
    assert srv.api("GET", "/user/repos?page=0", token=token).status_code == 422
    many = srv.api("GET", "/user/repos?per_page=5000", token=token)
    assert many.status_code == 200 and len(many.json()) == 44  # per_page is clamped to 100, as GitHub does
