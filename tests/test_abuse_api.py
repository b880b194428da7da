"""The REST API against hostile and clumsy clients: oversized text, strings and numbers that are
not what they claim, cross-site form posts, forged Host headers and curious anonymous callers.

Every test here failed on the code before the fix it covers, against a real `bulwark serve`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.helpers import Server, bulwark

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]

_ids = itertools.count()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(data_dir=tmp_path_factory.mktemp("abuse") / "node").start()
    try:
        yield server
    finally:
        server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def raw(srv: Server, method: str, path: str, body: bytes, *, token: str | None = None,
        content_type: str | None = "application/json") -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return srv.api(method, path, token=token, content=body, headers=headers)


def validation_failed(r: httpx.Response, field: str) -> dict[str, Any]:
    """The one error of a GitHub "Validation Failed" answer, which must name ``field``."""
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["message"] == "Validation Failed" and body["documentation_url"]
    [error] = body["errors"]
    assert error["field"] == field and error["resource"] and error["code"] and error["message"], error
    return dict(error)


# -- length limits -----------------------------------------------------------------------------


def test_every_text_field_has_githubs_length_limit(srv: Server) -> None:
    login = unique("long")
    token = srv.create_user(login)
    org = unique("longorg")
    assert srv.api("POST", "/admin/organizations", json={"login": org, "admin": login}).status_code == 201
    srv.create_repo(token, "target")
    cases: list[tuple[str, str, str | None, dict[str, Any], str, str]] = [
        # method, path, token (None: the admin's), body, field, resource
        ("POST", "/user/repos", token, {"name": "d", "description": "x" * 351}, "description", "Repository"),
        ("PATCH", f"/repos/{login}/target", token, {"description": "x" * 351}, "description", "Repository"),
        ("PATCH", f"/repos/{login}/target", token, {"default_branch": "b" * 256}, "default_branch", "Repository"),
        ("POST", f"/repos/{login}/target/git/refs", token, {"ref": "refs/heads/" + "b" * 250, "sha": "0" * 40},
         "ref", "Reference"),
        ("PATCH", "/user", token, {"name": "n" * 256}, "name", "User"),
        ("PATCH", "/user", token, {"email": "e" * 250 + "@x.io"}, "email", "User"),
        ("PATCH", f"/orgs/{org}", token, {"name": "n" * 256}, "name", "Organization"),
        ("PATCH", f"/orgs/{org}", token, {"email": "e" * 250 + "@x.io"}, "email", "Organization"),
        ("POST", "/admin/users", None, {"login": unique("u"), "name": "n" * 256}, "name", "User"),
        ("POST", "/admin/users", None, {"login": unique("u"), "email": "e" * 250 + "@x.io"}, "email", "User"),
        ("POST", "/admin/organizations", None, {"login": unique("o"), "admin": login, "profile_name": "n" * 256},
         "name", "Organization"),
        ("POST", f"/admin/users/{login}/authorizations", None, {"scopes": ["repo"], "note": "n" * 101}, "note",
         "Token"),
    ]
    for method, path, tok, body, field, resource in cases:
        error = validation_failed(srv.api(method, path, token=tok, json=body), field)
        assert error["resource"] == resource and "too long" in error["message"], (path, error)
    # Names and logins had their limits already; they still answer 422 naming the field.
    r = srv.api("POST", "/user/repos", token=token, json={"name": "r" * 101})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name"
    r = srv.api("POST", "/admin/users", json={"login": "l" * 40})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "login"
    assert len(r.json()["message"]) < 200  # the refused value is not repeated in full
    # At the limit, everything is taken.
    assert srv.api("POST", "/user/repos", token=token, json={"name": "d", "description": "x" * 350}).status_code == 201
    assert srv.api("PATCH", "/user", token=token, json={"name": "n" * 255}).status_code == 200
    r = srv.api("POST", f"/admin/users/{login}/authorizations", json={"scopes": ["repo"], "note": "n" * 100})
    assert r.status_code == 201
    # Nothing refused was stored.
    assert srv.api("GET", f"/repos/{login}/target", token=token).json()["description"] is None


def test_a_megabyte_description_is_refused_not_stored(srv: Server) -> None:
    """1 MiB descriptions made one anonymous listing of 100 repositories weigh 105 MB."""
    login = unique("mega")
    token = srv.create_user(login)
    r = srv.api("POST", "/user/repos", token=token, json={"name": "big", "description": "x" * (1024 * 1024 - 100)})
    validation_failed(r, "description")
    listing = srv.api("GET", f"/users/{login}/repos", token="")
    assert listing.status_code == 200 and listing.json() == []


# -- strings and numbers that are not what they seem ------------------------------------------------


def test_a_lone_surrogate_anywhere_is_a_422_naming_the_field(srv: Server) -> None:
    login = unique("surr")
    token = srv.create_user(login)
    srv.create_repo(token, "target")
    cases = [
        ("POST", "/user/repos", token, b'{"name": "s", "description": "a\\ud800b"}', "description"),
        ("PATCH", f"/repos/{login}/target", token, b'{"description": "\\udfff"}', "description"),
        ("PATCH", "/user", token, b'{"name": "\\ud800"}', "name"),
        ("POST", "/admin/users", None, b'{"login": "x", "name": "\\ud83d"}', "name"),
        ("POST", f"/admin/users/{login}/authorizations", None, b'{"scopes": ["repo", "\\ud800"]}', "scopes"),
        ("POST", "/user/repos", token, b'{"name": "s", "nested": {"deep": ["\\udc00"]}}', "nested"),
    ]
    for method, path, tok, body, field in cases:
        validation_failed(raw(srv, method, path, body, token=tok), field)
    # A proper pair is an emoji, and is stored.
    r = raw(srv, "PATCH", f"/repos/{login}/target", b'{"description": "\\ud83d\\ude00"}', token=token)
    assert r.status_code == 200 and r.json()["description"] == "\U0001f600"


def test_huge_json_numbers_are_a_422(srv: Server) -> None:
    """A JSON integer of more than 4,300 digits raised an uncaught ValueError (500)."""
    login = unique("num")
    token = srv.create_user(login)
    for digits in ("9" * 5000, "-" + "9" * 5000, "9" * 25, str(2**63)):
        r = raw(srv, "POST", "/user/repos", b'{"name": "n", "x": ' + digits.encode() + b"}", token=token)
        assert r.status_code == 422 and "64 bits" in r.json()["message"], (digits[:10], r.text)
    r = raw(srv, "POST", "/user/repos", b'{"name": "n", "x": 1e999999}', token=token)
    assert r.status_code == 201  # an ignored field; an infinite float is still JSON Python reads
    assert srv.api("GET", "/users", token="").status_code == 200


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59.999999-00:01",
                                  "0001-01-01T00:00:00+14:00"])
def test_expiry_at_the_end_of_time_is_a_422(srv: Server, when: str) -> None:
    login = unique("exp")
    srv.create_user(login)
    r = srv.api("POST", f"/admin/users/{login}/authorizations", json={"scopes": ["repo"], "expires_at": when})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "expires_at", r.text


def test_expiry_at_the_last_representable_instant_is_taken(srv: Server) -> None:
    login = unique("exp")
    srv.create_user(login)
    r = srv.api("POST", f"/admin/users/{login}/authorizations",
                json={"scopes": ["repo"], "expires_at": "9999-12-31T23:59:59+00:00"})
    assert r.status_code == 201 and r.json()["expires_at"] == "9999-12-31T23:59:59Z"
    assert srv.api("GET", "/user", token=r.json()["token"]).status_code == 200


# -- cross-site posts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/jsonx", "text/json"])
def test_a_body_that_is_not_json_is_refused_before_anything_happens(srv: Server, content_type: str | None) -> None:
    """What a page on another site can make a browser send, with the Basic credentials it cached."""
    login = unique("csrf")
    token = srv.create_user(login)
    body = json.dumps({"name": "planted"}).encode()
    r = raw(srv, "POST", "/user/repos", body, token=token, content_type=content_type)
    assert r.status_code == 415, r.text
    assert "Content-Type" in r.json()["message"] and r.json()["documentation_url"]
    assert srv.api("GET", f"/repos/{login}/planted", token=token).status_code == 404
    # Refused before the credentials are looked at: no 401 for a bad token either.
    assert raw(srv, "POST", "/user/repos", body, token="bwk_" + "0" * 40, content_type=content_type).status_code == 415


def test_json_types_and_bodiless_requests_are_accepted(srv: Server) -> None:
    login = unique("json")
    token = srv.create_user(login)
    for i, content_type in enumerate(["application/json", "application/json; charset=utf-8",
                                      "application/vnd.github+json", "Application/JSON"]):
        r = raw(srv, "POST", "/user/repos", json.dumps({"name": f"r{i}"}).encode(), token=token,
                content_type=content_type)
        assert r.status_code == 201, (content_type, r.text)
    victim = unique("victim")
    srv.create_user(victim)
    # No body and no type: a PUT as GitHub's own examples send it.
    r = httpx.put(f"{srv.url}/api/v3/users/{victim}/suspended", headers={"Authorization": f"token {srv.token}"})
    assert r.status_code == 204
    r = httpx.delete(f"{srv.url}/api/v3/repos/{login}/r0", headers={"Authorization": f"token {token}"})
    assert r.status_code == 204
    # Reads are never refused, whatever they say.
    r = httpx.get(f"{srv.url}/api/v3/users/{login}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200


# -- self-links ------------------------------------------------------------------------------------------


def test_links_ignore_a_forged_host_header(srv: Server) -> None:
    """With public_url unset, the Host header went into every URL and Link header."""
    login = unique("host")
    token = srv.create_user(login)
    srv.create_repo(token, "r")
    for _ in range(2):
        srv.create_user(unique("page"))
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    r = httpx.get(f"{srv.url}/api/v3/users?per_page=1&page=2", headers=forged)
    assert r.status_code == 200
    assert "evil" not in r.headers["link"] and f"<{srv.url}/api/v3/users?" in r.headers["link"]
    r = httpx.get(f"{srv.url}/api/v3/repos/{login}/r", headers=forged)
    assert "evil" not in r.text and r.json()["clone_url"] == f"{srv.url}/{login}/r.git"


def test_links_use_public_url_when_set(tmp_path: Any) -> None:
    server = Server(data_dir=tmp_path / "node", extra_env={"BULWARK_PUBLIC_URL": "https://git.example.com/"})
    server.start()
    try:
        r = httpx.get(f"{server.url}/api/v3/users/admin", headers={"Host": "evil.example"})
        assert r.json()["url"] == "https://git.example.com/api/v3/users/admin"
    finally:
        server.stop()


# -- privacy ----------------------------------------------------------------------------------------------


def stored_hashes(srv: Server) -> tuple[dict[str, str], list[str]]:
    """Password hashes by login, and every text of the change log, read from the node's database."""
    with contextlib.closing(sqlite3.connect(f"file:{srv.data_dir / 'metadata.db'}?mode=ro", uri=True)) as conn:
        current = dict(conn.execute("SELECT login, password_hash FROM accounts WHERE password_hash IS NOT NULL"))
        log = [row[0] for row in conn.execute("SELECT row_json FROM changes WHERE row_json IS NOT NULL")]
    return current, log


def test_a_password_change_leaves_no_old_hash_in_the_change_log(srv: Server) -> None:
    login = unique("pw")
    env = srv.env()
    assert bulwark("user", "create", login, "--password-stdin", env=env, input="first password\n").returncode == 0
    first = stored_hashes(srv)[0][login]
    assert bulwark("user", "passwd", login, env=env, input="second password\n").returncode == 0
    current, log = stored_hashes(srv)
    assert current[login] != first
    assert not [text for text in log if first in text]
    assert sum(current[login] in text for text in log) == 1  # what a replica still needs
    me = f"{srv.url}/api/v3/user"
    assert httpx.get(me, auth=(login, "second password")).status_code == 200
    assert httpx.get(me, auth=(login, "first password")).status_code == 401


def test_others_see_neither_a_private_email_nor_a_suspension(srv: Server) -> None:
    """Anonymous callers saw every user's email address and whether they were suspended."""
    login = unique("private")
    token = srv.create_user(login)  # with the email {login}@example.com, never made public
    other = srv.create_user(unique("other"))
    for caller in ("", other):
        body = srv.api("GET", f"/users/{login}", token=caller).json()
        assert body["login"] == login and body["email"] is None and "suspended_at" not in body, body
    assert srv.api("GET", f"/users/{login}", token=token).json()["email"] == f"{login}@example.com"
    assert srv.api("GET", f"/users/{login}").json()["email"] == f"{login}@example.com"  # a site admin
    assert srv.api("GET", "/user/public_emails", token=token).json() == []
    # The user shows it; everyone sees it.
    r = srv.api("PATCH", "/user/email/visibility", token=token, json={"visibility": "public"})
    assert r.status_code == 200 and r.json() == [
        {"email": f"{login}@example.com", "primary": True, "verified": True, "visibility": "public"}
    ]
    assert srv.api("GET", f"/users/{login}", token="").json()["email"] == f"{login}@example.com"
    assert srv.api("GET", "/user/public_emails", token=token).json()[0]["email"] == f"{login}@example.com"
    r = srv.api("PATCH", "/user/email/visibility", token=token, json={"visibility": "secret"})
    assert r.status_code == 422
    srv.api("PATCH", "/user/email/visibility", token=token, json={"visibility": "private"})
    assert srv.api("GET", f"/users/{login}", token="").json()["email"] is None
    # A suspension is for site administrators to see.
    assert srv.api("PUT", f"/users/{login}/suspended").status_code == 204
    assert "suspended_at" not in srv.api("GET", f"/users/{login}", token="").json()
    assert srv.api("GET", f"/users/{login}").json()["suspended_at"] is not None
