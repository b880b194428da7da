"""The web interface against a real `bulwark serve`, spoken to over HTTP as a browser would.

The repository pushed here holds what a hostile contributor could put in one: HTML in file names,
in commit messages and author names, a README with scripts; every page must show them as text.
The browser tests (tests/test_web_browser.py) check the same in a real Chromium.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import Server, git, git_env
from tests.support.web_helpers import PAGE, post, set_password, signed_in, visitor

pytestmark = [pytest.mark.timeout(180), pytest.mark.system]

PASSWORD = "correct horse battery"
EVIL = '<img src=x onerror="window.pwned=1">'
README = f"""# Hello

Some *markdown* and a [link](https://example.com).

<script>window.pwned = 1</script>
<a href="javascript:alert(1)">click</a>
{EVIL}

| a | b |
|---|---|
| 1 | 2 |
"""


def _commit(work: Path, env: dict[str, str], files: dict[str, bytes | str], message: str) -> str:
    for name, content in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    git("add", "-A", cwd=work, env=env)
    git("commit", "-qm", message, cwd=work, env=env)
    return git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("web")
    server = Server(data_dir=root / "data").start()
    try:
        set_password(server, "admin", PASSWORD)
        alice = server.create_user("alice")
        set_password(server, "alice", PASSWORD)
        server.create_user("bob")
        set_password(server, "bob", PASSWORD)
        server.create_repo(alice, "hello")
        server.api("PATCH", "/repos/alice/hello", token=alice, json={"description": f"desc {EVIL}"})
        server.create_repo(alice, "secret", private=True)
        env = git_env(root / "home")
        (root / "home").mkdir()
        env["GIT_AUTHOR_NAME"] = f"Mallory {EVIL}"
        work = root / "work"
        git("init", "-q", "-b", "main", str(work), env=env)
        first = _commit(work, env, {"README.md": README, "src/app.py": "def main():\n    return '<b>hi</b>'\n"},
                        f"first {EVIL}")
        for i in range(34):
            _commit(work, env, {"log.txt": f"line {i}\n"}, f"change {i}")
        _commit(work, env, {f"{EVIL}.txt": "named badly\n", "data.bin": bytes(range(256)) * 4,
                            "big.txt": ("x" * 99 + "\n") * 6000, "docs/guide.md": "# Guide\n"}, "odd files")
        git("checkout", "-q", "-b", "feature/x", cwd=work, env=env)
        feature = _commit(work, env, {"src/app.py": "def main():\n    return 'feature'\n"}, "feature work")
        git("checkout", "-q", "main", cwd=work, env=env)
        git("tag", "v1.0", first, cwd=work, env=env)
        remote = server.remote("alice", "hello", token=alice)
        git("push", "-q", remote, "main", "feature/x", "v1.0", cwd=work, env=env)
        git("push", "-q", server.remote("alice", "secret", token=alice), "main", cwd=work, env=env)
        yield {"server": server, "alice": alice, "first": first, "feature": feature, "root": root}
    finally:
        server.stop()


def _server(site: dict[str, object]) -> Server:
    server = site["server"]
    assert isinstance(server, Server)
    return server


def _get(site: dict[str, object], path: str, client: httpx.Client | None = None) -> httpx.Response:
    if client is not None:
        return client.get(path)
    return httpx.get(_server(site).url + path, headers=PAGE, timeout=30)


def test_front_page_lists_public_repositories_only_to_visitors(site: dict[str, object]) -> None:
    r = _get(site, "/")
    assert r.status_code == 200
    assert "alice/hello" in r.text and "alice/secret" not in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    alice = signed_in(_server(site), "alice", PASSWORD)
    assert "alice/secret" in alice.get("/").text
    found = alice.get("/?q=SECR").text
    assert "alice/secret" in found and "alice/hello" not in found


def test_repository_page_shows_tree_readme_and_clone_url(site: dict[str, object]) -> None:
    r = _get(site, "/alice/hello")
    assert r.status_code == 200
    html = r.text
    assert 'href="/alice/hello/tree/main/src"' in html
    assert 'href="/alice/hello/blob/main/README.md"' in html
    assert f"{_server(site).url}/alice/hello.git" in html
    assert "<em>markdown</em>" in html and "<table>" in html
    # The README's script, handler and javascript: link are gone; the description and file name are text.
    assert "<script>window.pwned" not in html and "javascript:alert" not in html
    assert EVIL not in html
    assert "&lt;img src=x onerror=" in html


def test_private_repository_is_not_found_on_every_page(site: dict[str, object]) -> None:
    bob = signed_in(_server(site), "bob", PASSWORD)
    for path in ("/alice/secret", "/alice/secret/tree/main/src", "/alice/secret/blob/main/README.md",
                 "/alice/secret/raw/main/README.md", "/alice/secret/commits/main", "/alice/secret/branches",
                 "/alice/secret/tags", "/alice/secret/archive/main.zip", "/alice/secret/settings",
                 f"/alice/secret/commit/{site['first']}", "/alice/secret/compare/v1.0...main"):
        for client in (None, bob):
            r = _get(site, path, client)
            assert r.status_code == 404, (path, r.status_code)
            assert "There is no repository at alice/secret" in r.text
    assert "alice/secret" not in _get(site, "/alice").text
    assert "alice/secret" in _get(site, "/alice", signed_in(_server(site), "alice", PASSWORD)).text


def test_file_page_highlights_with_line_anchors(site: dict[str, object]) -> None:
    r = _get(site, "/alice/hello/blob/main/src/app.py")
    assert r.status_code == 200
    assert 'id="L1"' in r.text and 'href="#L2"' in r.text
    assert '<span class="k">def' in r.text  # Pygments' class for a keyword
    assert "&lt;b&gt;hi&lt;/b&gt;" in r.text
    big = _get(site, "/alice/hello/blob/main/big.txt")
    assert big.status_code == 200 and 'id="too-large"' in big.text and 'id="L1"' not in big.text
    binary = _get(site, "/alice/hello/blob/main/data.bin")
    assert 'id="binary"' in binary.text
    # A branch with a slash in its name.
    feature = _get(site, "/alice/hello/blob/feature/x/src/app.py")
    assert feature.status_code == 200 and "feature" in feature.text
    assert _get(site, "/alice/hello/blob/main/src").status_code == 302
    # The ref switcher without JavaScript: the same file at the chosen ref.
    switched = _get(site, "/alice/hello/blob/main/src/app.py?ref=feature/x")
    assert switched.status_code == 302 and switched.headers["location"] == "/alice/hello/blob/feature/x/src/app.py"


def test_blame_names_who_changed_each_line(site: dict[str, object]) -> None:
    r = _get(site, "/alice/hello/blame/main/src/app.py")
    assert r.status_code == 200 and 'id="L2"' in r.text
    assert f'href="/alice/hello/commit/{site["first"]}"' in r.text and "Mallory" in r.text
    assert 'id="too-large"' in _get(site, "/alice/hello/blame/main/data.bin").text
    assert _get(site, "/alice/hello/blame/main/nothing").status_code == 404
    assert _get(site, "/alice/secret/blame/main/README.md").status_code == 404


def test_raw_files_are_never_pages_of_the_site(site: dict[str, object]) -> None:
    r = _get(site, "/alice/hello/raw/main/README.md")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.text == README
    big = _get(site, "/alice/hello/raw/main/big.txt")
    assert len(big.content) == 600_000
    binary = _get(site, "/alice/hello/raw/main/data.bin")
    assert binary.headers["content-type"] == "application/octet-stream" and binary.content == bytes(range(256)) * 4


def test_history_is_paginated_and_filtered_by_path(site: dict[str, object]) -> None:
    first = _get(site, "/alice/hello/commits/main")
    assert first.status_code == 200
    assert first.text.count('class="sha"') == 30 and 'rel="next"' in first.text
    second = _get(site, "/alice/hello/commits/main?page=2")
    assert second.text.count('class="sha"') == 6 and 'rel="next"' not in second.text
    assert f"first {EVIL}" not in second.text and "first &lt;img" in second.text
    by_path = _get(site, "/alice/hello/commits/main/src/app.py")
    assert by_path.text.count('class="sha"') == 1
    assert _get(site, "/alice/hello/commits/feature/x/src").text.count('class="sha"') == 2


def test_commit_page_shows_each_file_diff(site: dict[str, object]) -> None:
    r = _get(site, f"/alice/hello/commit/{site['feature']}")
    assert r.status_code == 200
    assert "feature work" in r.text and "src/app.py" in r.text
    assert 'class="add"' in r.text and 'class="del"' in r.text
    first = _get(site, f"/alice/hello/commit/{site['first']}")
    assert first.status_code == 200 and "first &lt;img" in first.text and EVIL not in first.text
    assert _get(site, f"/alice/hello/commit/{str(site['first'])[:10]}").status_code == 200


def test_compare_branches_and_tags(site: dict[str, object]) -> None:
    r = _get(site, "/alice/hello/compare/main...feature/x")
    assert r.status_code == 200 and "feature work" in r.text and "1 commit" in r.text
    branches = _get(site, "/alice/hello/branches")
    assert "feature/x" in branches.text and 'href="/alice/hello/compare/main...feature/x"' in branches.text
    assert "v1.0" in _get(site, "/alice/hello/tags").text


def test_archives_in_both_formats(site: dict[str, object]) -> None:
    tgz = _get(site, "/alice/hello/archive/v1.0.tar.gz")
    assert tgz.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tgz.content)) as tar:
        assert "hello-v1.0/src/app.py" in tar.getnames()
    zipped = _get(site, "/alice/hello/archive/feature/x.zip")
    assert zipped.status_code == 200
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        assert "hello-feature-x/src/app.py" in zf.namelist()


@pytest.mark.parametrize("path", [
    "/alice/hello/tree/main/src/%2e%2e/%2e%2e", "/alice/hello/tree/main/%2e%2e/%2e%2e",
    "/alice/hello/blob/main/src/%00",
    "/alice/hello/tree/nope", "/alice/hello/blob/main//etc/passwd", "/alice/hello/tree/main/missing",
    "/alice/hello/commit/zzzz", "/alice/hello/commit/--output=x", "/alice/hello/tree/--output=x",
    "/alice/hello/compare/main", "/alice/hello/archive/main.rar", "/alice/hello/commits/main?page=abc",
    "/nobody", "/nobody/nothing", f"/{EVIL}", "/alice/hello/blob/main/%3Cscript%3E",
])
def test_odd_paths_get_friendly_html_errors(site: dict[str, object], path: str) -> None:
    r = _get(site, path)
    assert r.status_code == 404, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="error"' in r.text
    assert "<script>" not in r.text and EVIL not in r.text


def test_every_html_url_the_api_returns_resolves(site: dict[str, object]) -> None:
    server = _server(site)
    alice = str(site["alice"])
    urls = set()
    repo = server.api("GET", "/repos/alice/hello", token=alice).json()
    urls |= {repo["html_url"], repo["owner"]["html_url"]}
    for commit in server.api("GET", "/repos/alice/hello/commits?per_page=5", token=alice).json():
        urls |= {commit["html_url"], *[p["html_url"] for p in commit["parents"]]}
    for branch in server.api("GET", "/repos/alice/hello/branches", token=alice).json():
        one = server.api("GET", f"/repos/alice/hello/branches/{branch['name']}", token=alice).json()
        urls.add(one["_links"]["html"])
    for item in server.api("GET", "/repos/alice/hello/contents/src", token=alice).json():
        urls.add(item["html_url"])
    urls.add(server.api("GET", "/repos/alice/hello/contents/src", token=alice).json()[0]["_links"]["html"])
    urls.add(server.api("GET", "/repos/alice/hello/contents/docs", token=alice).json()[0]["html_url"])
    urls.add(server.api("GET", "/user", token=alice).json()["html_url"])
    assert len(urls) > 8
    for url in sorted(urls):
        r = httpx.get(url, headers=PAGE, timeout=30, follow_redirects=True)
        assert r.status_code == 200, url


def test_sign_in_sets_a_safe_cookie_and_refuses_forms_without_their_token(site: dict[str, object]) -> None:
    server = _server(site)
    client = visitor(server)
    refused = client.post("/login", data={"login": "alice", "password": PASSWORD})
    assert refused.status_code == 403 and "reload the page" in refused.text
    wrong = post(client, "/login", {"login": "alice", "password": "wrong password"})
    assert wrong.status_code == 401 and "Incorrect login or password." in wrong.text
    ok = post(client, "/login", {"login": "alice", "password": PASSWORD, "next": "//evil.example/"})
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert 'id="nav-profile"' in client.get("/").text
    # A form from another site carries no token, and a guessed one does not match the cookie.
    assert client.post("/settings", data={"action": "token", "note": "x", "csrf_token": "guess"}).status_code == 403
    assert client.post("/logout", data={}).status_code == 403
    assert post(client, "/logout", {}).status_code == 303
    assert 'id="sign-in"' in client.get("/").text


def test_creating_a_repository_with_a_readme_then_changing_it(site: dict[str, object]) -> None:
    server = _server(site)
    alice = signed_in(server, "alice", PASSWORD)
    assert alice.get("/new").status_code == 200
    r = post(alice, "/new", {"owner": "alice", "name": "made-here", "description": "from the form",
                             "visibility": "public", "readme": "1"})
    assert r.status_code == 303 and r.headers["location"] == "/alice/made-here"
    page = alice.get("/alice/made-here").text
    assert 'id="readme"' in page and "made-here" in page
    taken = post(alice, "/new", {"owner": "alice", "name": "made-here", "visibility": "public"})
    assert taken.status_code == 422 and "already exists" in taken.text
    bad = post(alice, "/new", {"owner": "alice", "name": "no spaces", "visibility": "public"})
    assert bad.status_code == 422 and "invalid repository name" in bad.text
    saved = post(alice, "/alice/made-here/settings", {"action": "update", "name": "renamed",
                                                      "description": "changed", "visibility": "private"})
    assert saved.status_code == 303 and saved.headers["location"].startswith("/alice/renamed/settings")
    assert _get(site, "/alice/renamed").status_code == 404  # private now
    assert server.api("GET", "/repos/alice/renamed").json()["description"] == "changed"
    added = post(alice, "/alice/renamed/settings", {"action": "add-collaborator", "login": "bob",
                                                    "permission": "read"})
    assert added.status_code == 303
    bob = signed_in(server, "bob", PASSWORD)
    assert bob.get("/alice/renamed").status_code == 200
    assert bob.get("/alice/renamed/settings").status_code == 403
    assert post(bob, "/alice/renamed/settings", {"action": "delete", "confirm": "alice/renamed"}).status_code == 403
    wrong = post(alice, "/alice/renamed/settings", {"action": "delete", "confirm": "renamed"})
    assert wrong.status_code == 422 and "to confirm" in wrong.text
    gone = post(alice, "/alice/renamed/settings", {"action": "delete", "confirm": "alice/renamed"})
    assert gone.status_code == 303
    assert server.api("GET", "/repos/alice/renamed").status_code == 404


def test_tokens_are_shown_once_and_work_and_a_new_password_ends_sessions(site: dict[str, object]) -> None:
    server = _server(site)
    set_password(server, "bob", PASSWORD)
    bob = signed_in(server, "bob", PASSWORD)
    other = signed_in(server, "bob", PASSWORD)
    r = post(bob, "/settings", {"action": "token", "note": "ci", "scope_repo": "1", "expires": "30"})
    assert r.status_code == 200
    secret = r.text.split('id="new-token" class="copy"')[0].rsplit('value="', 1)[1].split('"')[0]
    assert secret.startswith("bwk_")
    assert server.api("GET", "/user", token=secret).json()["login"] == "bob"
    assert secret not in bob.get("/settings").text
    token_id = str(server.api("GET", "/user", token=secret).status_code)  # still valid before revoking
    assert token_id == "200"
    changed = post(bob, "/settings", {"action": "password", "current": PASSWORD, "new": "another password",
                                      "confirm": "another password"})
    assert changed.status_code == 200 and "Password changed" in changed.text
    assert 'id="nav-profile"' in bob.get("/").text  # this browser got a fresh session
    assert 'id="sign-in"' in other.get("/").text  # the other one is signed out
    set_password(server, "bob", PASSWORD)


def test_site_admin_creates_suspends_and_switches_maintenance(site: dict[str, object]) -> None:
    server = _server(site)
    alice = signed_in(server, "alice", PASSWORD)
    assert alice.get("/site-admin").status_code == 403
    admin = signed_in(server, "admin", PASSWORD)
    page = admin.get("/site-admin")
    assert page.status_code == 200 and 'href="/manage/status"' in page.text
    assert post(admin, "/site-admin", {"action": "create-user", "login": "carol",
                                       "password": "carol password"}).status_code == 303
    carol = signed_in(server, "carol", "carol password")
    assert post(admin, "/site-admin", {"action": "suspend", "login": "carol"}).status_code == 303
    assert 'id="sign-in"' in carol.get("/").text
    assert post(admin, "/site-admin", {"action": "create-org", "login": "acme", "owner": "alice"}).status_code == 303
    assert "Organization" in _get(site, "/acme").text
    assert post(admin, "/site-admin", {"action": "maintenance", "enabled": "1",
                                       "message": "back soon"}).status_code == 303
    try:
        busy = _get(site, "/alice/hello")
        assert busy.status_code == 503 and "back soon" in busy.text
        assert admin.get("/site-admin").status_code == 200
    finally:
        assert post(admin, "/site-admin", {"action": "maintenance", "enabled": "0"}).status_code == 303
    assert _get(site, "/alice/hello").status_code == 200


def test_git_clients_and_the_api_still_get_their_own_errors(site: dict[str, object]) -> None:
    server = _server(site)
    r = httpx.get(f"{server.url}/api/v3/repos/alice/secret", timeout=30, headers=PAGE)
    assert r.status_code == 404 and r.json()["message"]
    plain = httpx.get(f"{server.url}/alice/secret/info/refs?service=git-upload-pack", timeout=30)
    assert plain.status_code in (401, 404) and not plain.headers["content-type"].startswith("text/html")
