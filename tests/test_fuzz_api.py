"""Property-based fuzzing of every API and management route of a real node.

The routes come from the application itself, so a new route is fuzzed the day it lands. Each
example is one request: any method a route takes, path parameters, query strings, JSON (and
not-JSON) bodies and credentials of every kind. The answer must come within the timeout, be
below 500, and, for an error, carry GitHub's ``message``; a private repository's name never
shows to someone who may not see it. Afterwards the node still answers and what its owner
stored is intact. ``FUZZ_EXAMPLES`` sets how many requests (``make fuzz`` runs many more).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute, Mount, Route

from bulwark.http import api, backup, pages, replication, status
from tests.support.helpers import Server, git, git_env

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
pytestmark = [pytest.mark.timeout(900), pytest.mark.system]

# The private repository whose name must never show to the fuzzer's principals.
KEEPER, SECRET = "keeper", "vault-7f3q"
# Routes that change what the node is (its mode, its data from a backup, its peers): fuzzed
# with every principal but the site administrator, who would legitimately take the node away.
# Health checks answer 503 by design: "do not send traffic here" (a standalone node is no replica).
HEALTH_CHECKS = ("/status", "/status/fallback", "/status/replication")
STATUS_PAGE = pages.PAGE_PATH  # the status page and its log-in answer in HTML, as pages do
OPERATIONS = ("/manage/v1/maintenance", "/manage/v1/backup/restore", "/manage/v1/replication/")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # a template: /repos/{owner}/{repo}

    @property
    def params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{") and part.endswith("}")]


def _walk(routes: list[BaseRoute], prefix: str) -> Iterator[Endpoint]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                yield Endpoint(method, prefix + route.path)


ENDPOINTS = sorted(
    {*_walk(list(api.routes), "/api/v3"), *_walk([*replication.routes, *backup.routes], "/manage/v1"),
     *_walk(list(pages.routes), ""), *_walk(list(status.routes), "")},
    key=lambda e: (e.path, e.method),
)

NAMES = ["alice", "acme", "admin", "open", "empty", "main", "heads/main", "refs/heads/main", "tags/v1", "1", "0",
         "-1", "ghost", "..", ".", "a" * 300, "naïve", "x y", "%00", "name.git", "UPPER", KEEPER, SECRET]


def _segment(param: str) -> st.SearchStrategy[str]:
    """A path parameter, percent-encoded; ``{ref:path}`` parameters may hold slashes."""
    raw = st.one_of(st.sampled_from(NAMES), st.text(max_size=80))
    safe = "/" if param.endswith(":path") else ""
    return raw.map(lambda text: quote(text, safe=safe) or "x")


QUERY_KEYS = ["per_page", "page", "sort", "direction", "type", "visibility", "affiliation", "since", "ref", "path",
              "sha", "recursive", "q", "role", "filter", "since_seq", "limit", "wait", "epoch", "format"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "public", "private", "internal", "admin", "write", "read", "maintain", "triage", "member",
                     "main", "refs/heads/main", "0" * 40, "repo", "user", "site_admin", "x" * 5000]),
)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)
BODY_KEYS = ["name", "login", "email", "description", "homepage", "private", "visibility", "default_branch",
             "permission", "role", "ref", "sha", "force", "scopes", "note", "password", "new_owner", "new_name",
             "auto_init", "allow_force_pushes", "reason", "expires_at", "url", "node_id", "epoch", "by", "admin",
             "suspended", "token", "source", "rebuild", "message", "branch", "lines", "txn"]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes | None, str | None]:
    """(body, Content-Type): mostly JSON objects with the fields handlers read, else anything."""
    kind = draw(st.sampled_from(["object", "object", "object", "value", "bytes", "form", "none"]))
    if kind == "none":
        return None, None
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(st.sampled_from(["application/json", None, "text/plain"]))
    if kind == "form":
        return b"login=alice&password=x&token=y", "application/x-www-form-urlencoded"
    data: Any = (draw(st.dictionaries(st.sampled_from(BODY_KEYS) | st.text(max_size=8), JSON_VALUES, max_size=6))
                 if kind == "object" else draw(JSON_VALUES))
    return json.dumps(data).encode(), "application/json"


@dataclass
class Site:
    server: Server
    tokens: dict[str, str] = field(repr=False)  # principal -> token
    keeper_refs: str = field(repr=False)
    genv: dict[str, str] = field(repr=False)

    def authorization(self, who: str) -> str | None:
        if who in self.tokens:
            return f"token {self.tokens[who]}"
        return {
            "anonymous": None,
            "garbage": "token 0123456789abcdef0123456789abcdef01234567",
            "malformed": "Tokenish ;;; \t x",
            "wrong password": "Basic " + base64.b64encode(b"alice:not-her-password").decode(),
            "not base64": "Basic %%%",
        }[who]


def ls_remote(server: Server, token: str, genv: dict[str, str]) -> str:
    return git("ls-remote", server.remote(KEEPER, SECRET, token=token), env=genv).stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = Path(tmp_path_factory.mktemp("fuzz-api"))
    (root / "home").mkdir()
    genv = git_env(root / "home")
    # The fuzzer sends bad requests, from one address, and nothing else: pacing (tests/test_pacing.py) would
    # only make it slow.
    srv = Server(data_dir=root / "node", extra_env={"BULWARK_BAD_REQUEST_BURST": "0"}).start()
    alice = srv.create_user("alice")
    keeper = srv.create_user(KEEPER)
    srv.create_repo(alice, "open")
    srv.create_repo(alice, "empty")
    assert srv.api("POST", "/admin/organizations", json={"login": "acme", "admin": "alice"}).status_code == 201
    srv.create_repo(keeper, SECRET, private=True)
    work = root / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    (work / "README").write_text("kept\n")
    git("add", "README", cwd=work, env=genv)
    git("commit", "-q", "-m", "kept", cwd=work, env=genv)
    for owner, repo, token in (("alice", "open", alice), (KEEPER, SECRET, keeper)):
        git("push", "-q", srv.remote(owner, repo, token=token), "HEAD:refs/heads/main", cwd=work, env=genv)
        git("push", "-q", srv.remote(owner, repo, token=token), "HEAD:refs/tags/v1", cwd=work, env=genv)
    try:
        yield Site(srv, {"admin": srv.token, "alice": alice, KEEPER: keeper}, ls_remote(srv, keeper, genv), genv)
    finally:
        srv.stop()


PRINCIPALS = ["anonymous", "alice", "admin", "garbage", "malformed", "wrong password", "not base64"]


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    who=st.sampled_from(PRINCIPALS),
    data=st.data(),
    query=st.dictionaries(st.sampled_from(QUERY_KEYS) | st.text(max_size=8),
                          SCALARS.map(lambda v: json.dumps(v) if not isinstance(v, str) else v), max_size=4),
    body=bodies(),
    accept=st.sampled_from([None, "application/vnd.github+json", "text/html", "*/*", "application/json; q=0"]),
)
def test_no_request_makes_a_route_fail_hang_or_leak(
    site: Site, endpoint: Endpoint, who: str, data: st.DataObject, query: dict[str, str],
    body: tuple[bytes | None, str | None], accept: str | None,
) -> None:
    path = endpoint.path
    for param in endpoint.params:
        path = path.replace("{" + param + "}", data.draw(_segment(param), label=param), 1)
    if who == "admin" and (path.startswith(OPERATIONS) or KEEPER in path or SECRET in path):
        who = "alice"  # the administrator may take these away; nobody else may
    content, content_type = body
    headers = {}
    if (auth := site.authorization(who)) is not None:
        headers["Authorization"] = auth
    if content_type:
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    request = httpx.Request(endpoint.method, f"{site.server.url}{path}", params=query, content=content,
                            headers=headers)
    with httpx.Client(timeout=30) as client:
        answer = client.send(request)
    said = f"{endpoint.method} {request.url} as {who}: {answer.status_code} {answer.text[:400]}"
    sent = request.url.path  # as the client sent it: ".." segments are resolved before sending
    assert answer.status_code < 500 or (answer.status_code == 503 and sent in HEALTH_CHECKS), said
    api_error = sent.startswith(("/api/", "/manage/")) and not sent.startswith(STATUS_PAGE)  # the page is HTML
    if answer.status_code >= 400 and endpoint.method != "HEAD" and api_error:
        assert answer.headers.get("content-type", "").startswith("application/json"), said
        error = answer.json()
        assert isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"], said
    asked = f"{request.url} {content!r}"
    if who not in ("admin", KEEPER) and SECRET not in asked:
        assert SECRET not in answer.text, said


def test_after_the_fuzzing_the_node_answers_and_what_was_stored_is_intact(site: Site) -> None:
    assert httpx.get(f"{site.server.url}/status", timeout=10).status_code == 200
    keeper = site.tokens[KEEPER]
    repo = site.server.api("GET", f"/repos/{KEEPER}/{SECRET}", token=keeper)
    assert repo.status_code == 200 and repo.json()["private"] is True, repo.text
    assert site.server.api("GET", f"/repos/{KEEPER}/{SECRET}", token="").status_code == 404
    assert ls_remote(site.server, keeper, site.genv) == site.keeper_refs
    assert "Traceback" not in site.server.log_path.read_text(errors="replace")
