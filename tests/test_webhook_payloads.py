"""Webhook payloads checked against githubkit's models of GitHub's webhooks.

githubkit validates each payload the way a typed receiver would; on top of that every key sent
must be one GitHub documents for that event, so a typo or an invented field fails here too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from githubkit.webhooks import parse_obj
from githubkit_schemas.latest.models import (
    WebhookCreate,
    WebhookDelete,
    WebhookMemberAdded,
    WebhookMemberEdited,
    WebhookMemberRemoved,
    WebhookPing,
    WebhookPush,
    WebhookRepositoryCreated,
    WebhookRepositoryDeleted,
    WebhookRepositoryEdited,
    WebhookRepositoryPrivatized,
    WebhookRepositoryPublicized,
    WebhookRepositoryRenamed,
)
from pydantic import BaseModel

from bulwark.git.model import Commit, Person
from bulwark.git.runner import ZERO_OID
from bulwark.http.api import serializers
from bulwark.models import Account, AccountType, Permission, Repository, Visibility
from bulwark.webhooks.payloads import (
    MAX_PUSH_COMMITS,
    member_payload,
    org_json,
    ping_payload,
    push_payload,
    ref_payload,
    repository_json,
    repository_payload,
    user_json,
    with_organization,
)

BASE = "http://git.example.com"
API = f"{BASE}/api/v3"
WHEN = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))

ALICE = Account(
    id=1,
    login="alice",
    type=AccountType.USER,
    name="Alice",
    email="alice@private.example",
    created_at=WHEN,
    updated_at=WHEN,
)
BOB = Account(id=2, login="bob", type=AccountType.USER, email="bob@public.example", email_public=True)
ACME = Account(id=10, login="acme", type=AccountType.ORGANIZATION, name="Acme", email="info@acme.example")
REPO = Repository(
    id=7,
    owner_id=ALICE.id,
    name="widgets",
    storage_id="s7",
    description="Widgets and gadgets",
    created_at=WHEN,
    updated_at=WHEN + timedelta(hours=1),
    pushed_at=WHEN + timedelta(hours=2),
)
ORG_REPO = Repository(
    id=8,
    owner_id=ACME.id,
    name="tools",
    storage_id="s8",
    visibility=Visibility.PRIVATE,
    created_at=WHEN,
    updated_at=WHEN,
    pushed_at=None,
)
HTML = f"{BASE}/alice/widgets"


def sha(n: int) -> str:
    return f"{n:040x}"


def commit(n: int) -> Commit:
    author = Person(name="Dev", email="dev@commits.example", date=datetime(2024, 5, 1, 10, 0, n % 60, tzinfo=CEST))
    return Commit(
        sha=sha(n),
        tree=sha(n + 100_000),
        parents=(sha(n - 1),) if n > 1 else (),
        author=author,
        committer=author,
        message=f"change {n}\n",
    )


def unknown_keys(model: BaseModel, data: dict[str, Any], path: str = "") -> list[str]:
    """Keys of ``data`` that ``model``'s class does not declare, at any depth."""
    declared = {field.alias or name: name for name, field in type(model).model_fields.items()}
    unknown: list[str] = []
    for key, value in data.items():
        if key not in declared:
            unknown.append(path + key)
            continue
        parsed = getattr(model, declared[key])
        if isinstance(parsed, BaseModel) and isinstance(value, dict):
            unknown += unknown_keys(parsed, value, f"{path}{key}.")
        elif isinstance(parsed, list) and isinstance(value, list):
            for i, (item, raw) in enumerate(zip(parsed, value, strict=True)):
                if isinstance(item, BaseModel) and isinstance(raw, dict):
                    unknown += unknown_keys(item, raw, f"{path}{key}[{i}].")
    return unknown


def parse(event: str, payload: dict[str, Any], expected: type[BaseModel]) -> Any:
    """``payload`` parsed as GitHub's ``event``, which must give an ``expected`` model."""
    # Through JSON first, as a receiver gets it: this also proves the payload is JSON-able.
    data = json.loads(json.dumps(payload))
    model = parse_obj(event, data)
    assert type(model) is expected
    assert unknown_keys(model, data) == []
    return model


def push(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "pusher": ALICE,
        "sender": ALICE,
        "ref": "refs/heads/main",
        "before": sha(1),
        "after": sha(3),
        "commits": [commit(2), commit(3)],
        "head": commit(3),
        "forced": False,
    }
    args.update(overrides)
    return push_payload(BASE, REPO, ALICE, **args)


def hook_json(hook_type: str, url: str) -> dict[str, Any]:
    return {
        "type": hook_type,
        "id": 42,
        "name": "web",
        "active": True,
        "events": ["push", "create"],
        "config": {"content_type": "json", "insecure_ssl": "0", "url": "https://ci.example.com/hook"},
        "updated_at": "2024-05-01T12:00:00Z",
        "created_at": "2024-05-01T12:00:00Z",
        "url": url,
        "ping_url": f"{url}/pings",
        "deliveries_url": f"{url}/deliveries",
        "last_response": {"code": None, "status": "unused", "message": None},
    }


# -- push ----------------------------------------------------------------------------


def test_push_to_a_branch() -> None:
    event = parse("push", push(), WebhookPush)
    assert (event.created, event.deleted, event.forced) == (False, False, False)
    assert event.compare == f"{HTML}/compare/{sha(1)[:12]}...{sha(3)[:12]}"
    assert [c.id for c in event.commits] == [sha(2), sha(3)]
    assert event.head_commit is not None and event.head_commit.id == sha(3)
    assert event.head_commit.url == f"{HTML}/commit/{sha(3)}"
    assert event.head_commit.tree_id == sha(100_003)
    assert event.head_commit.timestamp == datetime(2024, 5, 1, 10, 0, 3, tzinfo=CEST)
    assert event.repository.html_url == HTML
    assert event.repository.master_branch == "main"
    assert event.pusher.name == "alice"


def test_push_repository_uses_integer_timestamps() -> None:
    repository = push()["repository"]
    assert repository["created_at"] == int(WHEN.timestamp())
    assert repository["pushed_at"] == int((WHEN + timedelta(hours=2)).timestamp())
    assert repository["updated_at"] == "2024-05-01T13:00:00Z"
    assert repository["stargazers"] == 0


def test_push_creating_a_branch() -> None:
    payload = push(ref="refs/heads/feature/x", before=ZERO_OID, commits=[commit(1)], head=commit(1))
    event = parse("push", payload, WebhookPush)
    assert (event.created, event.deleted) == (True, False)
    assert event.compare == f"{HTML}/compare/feature/x"


def test_push_creating_a_tag() -> None:
    payload = push(ref="refs/tags/v1.0", before=ZERO_OID, commits=[], head=commit(3), base_ref="refs/heads/main")
    event = parse("push", payload, WebhookPush)
    assert event.created is True
    assert event.base_ref == "refs/heads/main"
    assert event.compare == f"{HTML}/compare/v1.0"


def test_push_deleting_a_branch() -> None:
    payload = push(ref="refs/heads/old", before=sha(3), after=ZERO_OID, commits=[], head=None)
    event = parse("push", payload, WebhookPush)
    assert (event.created, event.deleted) == (False, True)
    assert event.head_commit is None
    assert event.commits == []
    assert event.compare == f"{HTML}/compare/{sha(3)[:12]}...000000000000"


def test_push_head_is_dropped_for_a_deleted_ref() -> None:
    assert push(after=ZERO_OID, commits=[], head=commit(3))["head_commit"] is None


def test_forced_push() -> None:
    event = parse("push", push(before=sha(9), forced=True), WebhookPush)
    assert event.forced is True


def test_push_keeps_the_newest_commits_up_to_githubs_cap() -> None:
    commits = [commit(n) for n in range(1, MAX_PUSH_COMMITS + 3)]
    payload = push(before=ZERO_OID, after=commits[-1].sha, commits=commits, head=commits[-1])
    event = parse("push", payload, WebhookPush)
    assert len(event.commits) == MAX_PUSH_COMMITS == 2048
    assert event.commits[0].id == commits[2].sha
    assert event.commits[-1].id == commits[-1].sha


def test_push_names_the_accounts_of_known_commit_emails() -> None:
    event = parse("push", push(usernames={"Dev@Commits.example": "dev"}), WebhookPush)
    assert event.commits[0].author.username == "dev"
    assert event.commits[0].committer.username == "dev"
    assert "username" not in push()["commits"][0]["author"]


def test_pusher_email_only_when_public() -> None:
    assert push(pusher=ALICE)["pusher"] == {"name": "alice", "email": None}
    assert push(pusher=BOB)["pusher"] == {"name": "bob", "email": "bob@public.example"}


def test_push_to_an_organization_repository() -> None:
    payload = push_payload(
        BASE,
        ORG_REPO,
        ACME,
        pusher=ALICE,
        sender=ALICE,
        ref="refs/heads/main",
        before=sha(1),
        after=sha(2),
        commits=[commit(2)],
        head=commit(2),
        forced=False,
    )
    event = parse("push", with_organization(payload, BASE, ACME), WebhookPush)
    assert event.organization is not None and event.organization.login == "acme"
    assert event.repository.organization == "acme"
    assert event.repository.private is True
    assert event.repository.pushed_at is None


# -- create and delete ------------------------------------------------------------------


@pytest.mark.parametrize("ref_type", ["branch", "tag"])
def test_create(ref_type: str) -> None:
    payload = ref_payload("create", BASE, REPO, ALICE, sender=ALICE, ref="v1.0", ref_type=ref_type)
    event = parse("create", payload, WebhookCreate)
    assert (event.ref, event.ref_type) == ("v1.0", ref_type)
    assert event.master_branch == "main"
    assert event.description == "Widgets and gadgets"
    assert event.pusher_type == "user"


@pytest.mark.parametrize("ref_type", ["branch", "tag"])
def test_delete(ref_type: str) -> None:
    payload = ref_payload("delete", BASE, REPO, ALICE, sender=ALICE, ref="topic", ref_type=ref_type)
    event = parse("delete", payload, WebhookDelete)
    assert (event.ref, event.ref_type, event.pusher_type) == ("topic", ref_type, "user")
    assert "master_branch" not in payload


def test_ref_payload_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError):
        ref_payload("push", BASE, REPO, ALICE, sender=ALICE, ref="main", ref_type="branch")
    with pytest.raises(ValueError):
        ref_payload("create", BASE, REPO, ALICE, sender=ALICE, ref="main", ref_type="note")


# -- repository ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "changes", "model"),
    [
        ("created", None, WebhookRepositoryCreated),
        ("deleted", None, WebhookRepositoryDeleted),
        ("renamed", {"repository": {"name": {"from": "gizmos"}}}, WebhookRepositoryRenamed),
        ("publicized", None, WebhookRepositoryPublicized),
        ("privatized", None, WebhookRepositoryPrivatized),
        ("edited", {"description": {"from": "old words"}}, WebhookRepositoryEdited),
        ("edited", None, WebhookRepositoryEdited),
    ],
)
def test_repository_events(action: str, changes: dict[str, Any] | None, model: type[BaseModel]) -> None:
    event = parse("repository", repository_payload(action, BASE, REPO, ALICE, sender=ALICE, changes=changes), model)
    assert event.repository.full_name == "alice/widgets"


def test_renamed_repository_carries_the_old_name() -> None:
    payload = repository_payload(
        "renamed", BASE, REPO, ALICE, sender=ALICE, changes={"repository": {"name": {"from": "gizmos"}}}
    )
    assert parse("repository", payload, WebhookRepositoryRenamed).changes.repository.name.from_ == "gizmos"
    with pytest.raises(ValueError):
        repository_payload("renamed", BASE, REPO, ALICE, sender=ALICE)
    with pytest.raises(ValueError):
        repository_payload("starred", BASE, REPO, ALICE, sender=ALICE)


def test_organization_repository_event() -> None:
    payload = with_organization(repository_payload("created", BASE, ORG_REPO, ACME, sender=ALICE), BASE, ACME)
    event = parse("repository", payload, WebhookRepositoryCreated)
    assert event.organization.login == "acme"
    assert event.organization.url == f"{API}/orgs/acme"
    assert event.repository.owner.type == "Organization"


def test_with_organization_leaves_the_payload_alone() -> None:
    payload = repository_payload("created", BASE, REPO, ALICE, sender=ALICE)
    assert with_organization(payload, BASE, None) is payload
    assert "organization" in with_organization(payload, BASE, ACME)
    assert "organization" not in payload


# -- member ---------------------------------------------------------------------------


@pytest.mark.parametrize(("permission", "label"), [(Permission.PULL, "read"), (Permission.PUSH, "write")])
def test_member_added(permission: Permission, label: str) -> None:
    payload = member_payload("added", BASE, REPO, ALICE, sender=ALICE, member=BOB, permission=permission)
    event = parse("member", payload, WebhookMemberAdded)
    assert event.member is not None and event.member.login == "bob"
    assert event.changes.permission.to == label
    assert event.changes.role_name.to == label


def test_member_added_as_admin() -> None:
    payload = member_payload("added", BASE, REPO, ALICE, sender=ALICE, member=BOB, permission=Permission.ADMIN)
    assert payload["changes"]["permission"] == {"to": "admin"}
    assert parse("member", payload, WebhookMemberAdded).changes.permission.to == "admin"


def test_member_removed() -> None:
    event = parse(
        "member", member_payload("removed", BASE, REPO, ALICE, sender=ALICE, member=BOB), WebhookMemberRemoved
    )
    assert event.member is not None and event.member.id == BOB.id


def test_member_edited() -> None:
    payload = member_payload(
        "edited",
        BASE,
        REPO,
        ALICE,
        sender=ALICE,
        member=BOB,
        permission=Permission.ADMIN,
        old_permission=Permission.PUSH,
    )
    event = parse("member", payload, WebhookMemberEdited)
    assert event.changes.old_permission.from_ == "write"
    assert (event.changes.permission.from_, event.changes.permission.to) == ("write", "admin")


# -- ping -----------------------------------------------------------------------------


def test_ping_for_a_repository_hook() -> None:
    hook = hook_json("Repository", f"{API}/repos/alice/widgets/hooks/42")
    payload = ping_payload(
        hook,
        zen="Keep it logically awesome.",
        hook_id=42,
        repo_json=repository_json(BASE, REPO, ALICE),
        sender=user_json(BASE, ALICE),
    )
    event = parse("ping", payload, WebhookPing)
    assert (event.zen, event.hook_id) == ("Keep it logically awesome.", 42)
    assert event.repository is not None and event.repository.html_url == HTML
    assert "organization" not in payload


def test_ping_for_an_organization_hook() -> None:
    hook = hook_json("Organization", f"{API}/orgs/acme/hooks/43")
    payload = ping_payload(
        hook, zen="Design for failure.", hook_id=43, org_json=org_json(BASE, ACME), sender=user_json(BASE, ALICE)
    )
    event = parse("ping", payload, WebhookPing)
    assert event.organization is not None and event.organization.login == "acme"
    assert "repository" not in payload


# -- shapes shared with the REST API ------------------------------------------------------


def test_repository_urls() -> None:
    data = repository_json(BASE, REPO, ALICE)
    assert data["html_url"] == HTML
    assert data["url"] == f"{API}/repos/alice/widgets"
    assert data["clone_url"] == f"{HTML}.git"
    assert data["ssh_url"] == "git@git.example.com:alice/widgets.git"
    assert data["owner"]["html_url"] == f"{BASE}/alice"
    assert data["created_at"] == "2024-05-01T12:00:00Z"
    given = repository_json(BASE, REPO, ALICE, ssh_url="ssh://git.example.com:2222/alice/widgets.git")
    assert given["ssh_url"] == "ssh://git.example.com:2222/alice/widgets.git"


def test_matches_the_rest_serializers() -> None:
    ssh_url = "git@git.example.com:alice/widgets.git"
    settings = SimpleNamespace(base_url=BASE, ssh_clone_url=lambda full_name: ssh_url)
    node = SimpleNamespace(settings=settings)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(node=node)))
    ctx: Any = SimpleNamespace(request=request, node=node, url=lambda path: f"{BASE}{path}")

    for account in (ALICE, ACME):
        rest, hook = serializers.account_json(ctx, account), user_json(BASE, account)
        assert {key: hook[key] for key in rest} == rest
    rest_org, hook_org = serializers.org_json(ctx, ACME), org_json(BASE, ACME)
    assert {key: rest_org[key] for key in hook_org.keys() & rest_org.keys()} == {
        key: hook_org[key] for key in hook_org.keys() & rest_org.keys()
    }
    rest_repo = serializers.repo_json(ctx, REPO, ALICE, Permission.NONE)
    hook_repo = repository_json(BASE, REPO, ALICE, ssh_url=ssh_url)
    shared = (hook_repo.keys() & rest_repo.keys()) - {"owner"}
    assert shared >= {"url", "html_url", "clone_url", "git_url", "branches_url", "contents_url", "node_id"}
    assert {key: hook_repo[key] for key in shared} == {key: rest_repo[key] for key in shared}


def test_no_account_email_leaks() -> None:
    assert "email" not in user_json(BASE, ALICE)
    built = [
        user_json(BASE, ALICE),
        user_json(BASE, ACME),
        org_json(BASE, ACME),
        push(),
        with_organization(repository_payload("created", BASE, ORG_REPO, ACME, sender=ALICE), BASE, ACME),
        ref_payload("create", BASE, REPO, ALICE, sender=ALICE, ref="main", ref_type="branch"),
        member_payload("added", BASE, REPO, ALICE, sender=ALICE, member=ALICE, permission=Permission.PUSH),
    ]
    for payload in built:
        text = json.dumps(payload)
        assert ALICE.email not in text
        assert ACME.email not in text
