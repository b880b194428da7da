"""PyGithub, unchanged, against a real server: the API must look like GitHub's to a GitHub client."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import github
import pytest
from github import Auth, Github

from tests.support.helpers import Server, git, git_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(data_dir=tmp_path_factory.mktemp("pygithub") / "node").start()
    try:
        server.create_user("alice")  # PyGithub clients get tokens of their own below
        server.create_user("bob")
        r = server.api("POST", "/admin/organizations", json={"login": "acme", "admin": "alice"})
        assert r.status_code == 201, r.text
        yield server
    finally:
        server.stop()


SCOPES = ["repo", "user", "admin:org", "delete_repo"]


def client(srv: Server, login: str) -> Github:
    r = srv.api("POST", f"/admin/users/{login}/authorizations", json={"scopes": SCOPES})
    assert r.status_code == 201, r.text
    return Github(base_url=f"{srv.url}/api/v3", auth=Auth.Token(r.json()["token"]), retry=None)


@pytest.fixture(scope="module")
def alice(srv: Server) -> Github:
    return client(srv, "alice")


@pytest.fixture(scope="module")
def bob(srv: Server) -> Github:
    return client(srv, "bob")


def test_users(alice: Github, bob: Github) -> None:
    me = alice.get_user()
    assert me.login == "alice" and me.type == "User" and me.email == "alice@example.com"
    me.edit(name="Alice Liddell")
    assert alice.get_user().name == "Alice Liddell"
    other = alice.get_user("bob")
    assert other.login == "bob" and other.id != me.id
    with pytest.raises(github.UnknownObjectException):
        alice.get_user("nobody-at-all")
    assert {u.login for u in alice.get_users()} >= {"admin", "alice", "bob"}


def test_organizations(srv: Server, alice: Github, bob: Github) -> None:
    org = alice.get_organization("acme")
    assert org.login == "acme" and org.type == "Organization"
    assert [o.login for o in alice.get_user().get_orgs()] == ["acme"]
    assert list(bob.get_user().get_orgs()) == []
    org.add_to_members(bob.get_user("bob"), role="member")
    try:
        assert [o.login for o in bob.get_user().get_orgs()] == ["acme"]
        assert org.has_in_members(alice.get_user("bob"))
        assert {m.login for m in org.get_members()} == {"alice", "bob"}
        assert bob.get_user().get_organization_membership("acme").role == "member"
        with pytest.raises(github.GithubException) as exc:
            bob.get_organization("acme").edit(description="not an owner")
        assert exc.value.status == 403
        org.edit(name="Acme Corp")
        assert alice.get_organization("acme").name == "Acme Corp"
    finally:
        org.remove_from_membership(alice.get_user("bob"))
    assert list(bob.get_user().get_orgs()) == []


def test_repository_lifecycle(alice: Github, bob: Github) -> None:
    me = alice.get_user()
    repo = me.create_repo("lifecycle", description="first", private=True)
    assert repo.full_name == "alice/lifecycle" and repo.private and repo.owner.login == "alice"
    assert repo.permissions.admin and repo.default_branch == "main"
    with pytest.raises(github.GithubException) as exc:
        me.create_repo("lifecycle")
    assert exc.value.status == 422 and exc.value.data["message"] == "name already exists on this account"

    got = alice.get_repo("alice/lifecycle")
    assert got.id == repo.id and got.description == "first"
    with pytest.raises(github.UnknownObjectException):
        bob.get_repo("alice/lifecycle")  # private: as if it did not exist

    got.edit(description="second", private=False)
    assert got.description == "second" and not got.private
    assert bob.get_repo("alice/lifecycle").description == "second"
    got.edit(name="renamed")
    assert alice.get_repo("alice/renamed").id == repo.id
    with pytest.raises(github.UnknownObjectException):
        alice.get_repo("alice/lifecycle")

    assert "renamed" in [r.name for r in me.get_repos()]
    assert "renamed" in [r.name for r in bob.get_user("alice").get_repos()]
    with pytest.raises(github.GithubException) as exc:
        bob.get_repo("alice/renamed").delete()
    assert exc.value.status == 403
    alice.get_repo("alice/renamed").delete()
    with pytest.raises(github.UnknownObjectException):
        alice.get_repo("alice/renamed")


def test_organization_repositories(alice: Github, bob: Github) -> None:
    org = alice.get_organization("acme")
    repo = org.create_repo("platform", description="shared", private=True)
    assert repo.full_name == "acme/platform" and repo.organization.login == "acme"
    assert [r.name for r in org.get_repos()] == ["platform"]
    assert list(bob.get_organization("acme").get_repos()) == []  # private, and bob is not a member
    with pytest.raises(github.GithubException) as exc:
        bob.get_organization("acme").create_repo("intruder")
    assert exc.value.status == 403
    repo.delete()
    assert list(org.get_repos()) == []


def test_collaborators(alice: Github, bob: Github) -> None:
    repo = alice.get_user().create_repo("together", private=True)
    try:
        assert not repo.has_in_collaborators("bob")
        assert repo.get_collaborator_permission("bob") == "none"
        invitation = repo.add_to_collaborators("bob", permission="push")
        assert invitation is not None and invitation.invitee.login == "bob"
        assert repo.has_in_collaborators("bob")
        assert repo.get_collaborator_permission("bob") == "write"
        assert {c.login for c in repo.get_collaborators()} == {"alice", "bob"}
        seen_by_bob = bob.get_repo("alice/together")
        assert seen_by_bob.permissions.push and not seen_by_bob.permissions.admin
        assert "alice/together" in [r.full_name for r in bob.get_user().get_repos()]

        repo.add_to_collaborators("bob", permission="admin")  # already there: a change of permission
        assert repo.get_collaborator_permission("bob") == "admin"
        with pytest.raises(github.GithubException) as exc:
            repo.add_to_collaborators("bob", permission="overlord")
        assert exc.value.status == 422

        repo.remove_from_collaborators("bob")
        assert not repo.has_in_collaborators("bob")
        with pytest.raises(github.UnknownObjectException):
            bob.get_repo("alice/together")
    finally:
        repo.delete()


def test_branches_commits_and_contents_after_a_real_push(srv: Server, alice: Github, tmp_path: Path) -> None:
    repo = alice.get_user().create_repo("pushed")
    assert list(repo.get_branches()) == []
    # A real git client pushes through the server with a token of alice.
    token = srv.api("POST", "/admin/users/alice/authorizations", json={"scopes": ["repo"]}).json()["token"]
    env = git_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=env)
    (work / "README.md").write_text("# pushed\n")
    git("add", "README.md", cwd=work, env=env)
    git("commit", "-q", "-m", "first", cwd=work, env=env)
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text("read me\n")
    git("add", "-A", cwd=work, env=env)
    git("commit", "-q", "-m", "second", cwd=work, env=env)
    head = git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()
    remote = srv.remote("alice", "pushed", user="alice", token=token)
    git("push", "-q", remote, "HEAD:refs/heads/main", "HEAD~1:refs/heads/release/1.0", cwd=work, env=env)

    branches = {b.name: b.commit.sha for b in repo.get_branches()}
    parent = git("rev-parse", "HEAD~1", cwd=work, env=env).stdout.strip()
    assert branches == {"main": head, "release/1.0": parent}
    main = repo.get_branch("main")
    assert main.commit.sha == head and main.commit.commit.message == "second" and not main.protected
    assert [p.sha for p in main.commit.parents] == [parent]
    assert repo.get_branch("release/1.0").commit.sha == parent
    with pytest.raises(github.GithubException) as exc:
        repo.get_branch("nope")
    assert exc.value.status == 404

    assert [c.sha for c in repo.get_commits()] == [head, parent]
    assert repo.get_commit(head).commit.author.email == "author@example.com"
    readme = repo.get_contents("README.md")
    assert not isinstance(readme, list)
    assert readme.decoded_content == b"# pushed\n" and readme.encoding == "base64"
    assert base64.b64decode(readme.content) == b"# pushed\n"
    listing = repo.get_contents("")
    assert isinstance(listing, list) and sorted(f.path for f in listing) == ["README.md", "docs"]
    old = repo.get_contents("README.md", ref="release/1.0")
    assert not isinstance(old, list) and old.decoded_content == b"# pushed\n"

    ref = repo.get_git_ref("heads/main")
    assert ref.object.sha == head
    created = repo.create_git_ref("refs/heads/topic", parent)
    created.edit(head)  # a fast-forward
    assert repo.get_branch("topic").commit.sha == head
    created.delete()
    assert "topic" not in [b.name for b in repo.get_branches()]
    repo.delete()


def test_an_email_is_private_until_its_user_shows_it(srv: Server, bob: Github) -> None:
    srv.create_user("carol")  # the admin API gives carol an email address nobody else sees
    carol = client(srv, "carol")
    anonymous = Github(base_url=f"{srv.url}/api/v3", retry=None)
    admin = Github(base_url=f"{srv.url}/api/v3", auth=Auth.Token(srv.token), retry=None)
    assert carol.get_user().email == "carol@example.com"
    assert admin.get_user("carol").email == "carol@example.com"
    assert bob.get_user("carol").email is None and anonymous.get_user("carol").email is None
    [address] = carol.get_user().get_emails()
    assert (address.email, address.primary, address.visibility) == ("carol@example.com", True, "private")
    # GitHub's email in PATCH /user is the publicly visible one.
    carol.get_user().edit(email="carol@wonderland.example")
    assert anonymous.get_user("carol").email == "carol@wonderland.example"
    assert carol.get_user().get_emails()[0].visibility == "public"
