"""GitHub-shaped webhook payloads built from Bulwark's records.

Every builder is pure and returns a JSON-able dict. URLs and node ids are the ones the REST API
serves (bulwark.http.api.serializers), so a receiver can follow them or match them against API
answers; the HTTP layer is not imported, callers pass the site's base URL instead
(e.g. "http://git.example.com", no trailing slash).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from bulwark.git.model import Commit, Person
from bulwark.git.runner import ZERO_OID
from bulwark.models import Account, AccountType, Permission, Repository

# GitHub lists at most this many commits in a push payload.
MAX_PUSH_COMMITS = 2048

REF_KINDS = frozenset({"create", "delete"})
REF_TYPES = frozenset({"branch", "tag"})
REPOSITORY_ACTIONS = frozenset({"created", "deleted", "renamed", "publicized", "privatized", "edited"})
MEMBER_ACTIONS = frozenset({"added", "removed", "edited"})


def iso(when: datetime | None) -> str | None:
    """The REST API's timestamp form: UTC, whole seconds, "Z"."""
    if when is None:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def unix(when: datetime | None) -> int | None:
    """Seconds since the epoch, as GitHub sends some push-event timestamps."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # stored times without a zone are UTC, as iso() assumes
    return int(when.timestamp())


def short_ref(ref: str) -> str:
    """A branch or tag's short name: "refs/heads/main" -> "main"; any other ref is unchanged."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    return ref


def _api(base_url: str) -> str:
    return f"{base_url}/api/v3"


def _node_id(kind: str, record_id: int) -> str:
    # The same ids the REST serializers give, so one record has one node id everywhere.
    return f"{kind}:{record_id}"


# The pusher and sender of events no account caused: ref moves the server found unannounced
# after a crash or a promotion (who pushed is not known then), and what the administrator does at
# the command line. Not a valid login, so no account can be taken for it.
SERVER = Account(id=0, login="bulwark[bot]", type=AccountType.USER, name="Bulwark")


def user_json(base_url: str, account: Account) -> dict[str, Any]:
    """GitHub's simple-user shape. No email: a payload goes to whoever runs the receiver."""
    kind = "orgs" if account.is_org else "users"
    url = f"{_api(base_url)}/{kind}/{account.login}"
    return {
        "login": account.login,
        "id": account.id,
        "node_id": _node_id(kind, account.id),
        "avatar_url": "",
        "gravatar_id": "",
        "url": url,
        "html_url": f"{base_url}/{account.login}",
        "followers_url": f"{url}/followers",
        "following_url": f"{url}/following{{/other_user}}",
        "gists_url": f"{url}/gists{{/gist_id}}",
        "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{url}/subscriptions",
        "organizations_url": f"{url}/orgs",
        "repos_url": f"{url}/repos",
        "events_url": f"{url}/events{{/privacy}}",
        "received_events_url": f"{url}/received_events",
        "type": account.type.value,
        "site_admin": account.site_admin,
        "user_view_type": "public",
    }


def org_json(base_url: str, org: Account) -> dict[str, Any]:
    """GitHub's organization-simple shape, as webhooks carry it in ``organization``."""
    url = f"{_api(base_url)}/orgs/{org.login}"
    return {
        "login": org.login,
        "id": org.id,
        "node_id": _node_id("orgs", org.id),
        "url": url,
        "repos_url": f"{url}/repos",
        "events_url": f"{url}/events",
        "hooks_url": f"{url}/hooks",
        "issues_url": f"{url}/issues",
        "members_url": f"{url}/members{{/member}}",
        "public_members_url": f"{url}/public_members{{/member}}",
        "avatar_url": "",
        "description": None,
    }


def _default_ssh_url(base_url: str, full_name: str) -> str:
    host = urlsplit(base_url).hostname or base_url
    return f"git@{host}:{full_name}.git"


def repository_json(base_url: str, repo: Repository, owner: Account, *, ssh_url: str | None = None) -> dict[str, Any]:
    """The ``repository`` object of GitHub's webhooks. Features Bulwark lacks (issues, wiki, stars,
    forks...) are reported off or zero so that receivers do not wait for them."""
    full_name = f"{owner.login}/{repo.name}"
    api = f"{_api(base_url)}/repos/{full_name}"
    html_url = f"{base_url}/{full_name}"
    clone_url = f"{base_url}/{full_name}.git"
    return {
        "id": repo.id,
        "node_id": _node_id("repos", repo.id),
        "name": repo.name,
        "full_name": full_name,
        "private": repo.private,
        "owner": user_json(base_url, owner),
        "html_url": html_url,
        "description": repo.description or None,
        "fork": False,
        "url": api,
        "forks_url": f"{api}/forks",
        "keys_url": f"{api}/keys{{/key_id}}",
        "collaborators_url": f"{api}/collaborators{{/collaborator}}",
        "teams_url": f"{api}/teams",
        "hooks_url": f"{api}/hooks",
        "issue_events_url": f"{api}/issues/events{{/number}}",
        "events_url": f"{api}/events",
        "assignees_url": f"{api}/assignees{{/user}}",
        "branches_url": f"{api}/branches{{/branch}}",
        "tags_url": f"{api}/tags",
        "blobs_url": f"{api}/git/blobs{{/sha}}",
        "git_tags_url": f"{api}/git/tags{{/sha}}",
        "git_refs_url": f"{api}/git/refs{{/sha}}",
        "trees_url": f"{api}/git/trees{{/sha}}",
        "statuses_url": f"{api}/statuses/{{sha}}",
        "languages_url": f"{api}/languages",
        "stargazers_url": f"{api}/stargazers",
        "contributors_url": f"{api}/contributors",
        "subscribers_url": f"{api}/subscribers",
        "subscription_url": f"{api}/subscription",
        "commits_url": f"{api}/commits{{/sha}}",
        "git_commits_url": f"{api}/git/commits{{/sha}}",
        "comments_url": f"{api}/comments{{/number}}",
        "issue_comment_url": f"{api}/issues/comments{{/number}}",
        "contents_url": f"{api}/contents/{{+path}}",
        "compare_url": f"{api}/compare/{{base}}...{{head}}",
        "merges_url": f"{api}/merges",
        "archive_url": f"{api}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{api}/downloads",
        "issues_url": f"{api}/issues{{/number}}",
        "pulls_url": f"{api}/pulls{{/number}}",
        "milestones_url": f"{api}/milestones{{/number}}",
        "notifications_url": f"{api}/notifications{{?since,all,participating}}",
        "labels_url": f"{api}/labels{{/name}}",
        "releases_url": f"{api}/releases{{/id}}",
        "deployments_url": f"{api}/deployments",
        "created_at": iso(repo.created_at),
        "updated_at": iso(repo.updated_at),
        "pushed_at": iso(repo.pushed_at),
        # Bulwark serves git over HTTP, not git://, so git_url is the HTTP clone URL as in the REST API.
        "git_url": clone_url,
        "ssh_url": ssh_url if ssh_url is not None else _default_ssh_url(base_url, full_name),
        "clone_url": clone_url,
        "svn_url": html_url,
        "homepage": None,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": None,
        "has_issues": False,
        "has_projects": False,
        "has_downloads": True,
        "has_wiki": False,
        "has_pages": False,
        "has_discussions": False,
        "forks_count": 0,
        "mirror_url": None,
        "archived": False,
        "disabled": False,
        "open_issues_count": 0,
        "license": None,
        "allow_forking": False,
        "is_template": False,
        "web_commit_signoff_required": False,
        "topics": [],
        "visibility": repo.visibility.value,
        "forks": 0,
        "open_issues": 0,
        "watchers": 0,
        "default_branch": repo.default_branch,
    }


def _commit_time(when: datetime) -> str:
    # A commit keeps its committer's UTC offset, as GitHub shows it ("2024-05-01T10:00:00+02:00").
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat(timespec="seconds")


def _person_json(person: Person, usernames: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"name": person.name, "email": person.email}
    # GitHub names the account only when the commit's email belongs to one.
    username = usernames.get(person.email.lower())
    if username is not None:
        data["username"] = username
    return data


def _push_commit(html_url: str, commit: Commit, usernames: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": commit.sha,
        "tree_id": commit.tree,
        "distinct": True,
        "message": commit.message,
        "timestamp": _commit_time(commit.committer.date),
        "url": f"{html_url}/commit/{commit.sha}",
        "author": _person_json(commit.author, usernames),
        "committer": _person_json(commit.committer, usernames),
        # File lists would need a diff per commit; GitHub allows them to be empty.
        "added": [],
        "removed": [],
        "modified": [],
    }


def _compare_url(html_url: str, ref: str, before: str, after: str) -> str:
    if before == ZERO_OID:
        # GitHub compares a new ref with the default branch, and the URL names only the new ref.
        return f"{html_url}/compare/{quote(short_ref(ref), safe='/')}"
    return f"{html_url}/compare/{before[:12]}...{after[:12]}"


def push_payload(
    base_url: str,
    repo: Repository,
    owner: Account,
    *,
    pusher: Account,
    sender: Account,
    ref: str,
    before: str,
    after: str,
    commits: list[Commit],
    head: Commit | None,
    forced: bool,
    base_ref: str | None = None,
    usernames: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """GitHub's ``push`` event for one ref update.

    ``ref`` is the full name ("refs/heads/main"); ``commits`` are the pushed commits, oldest first;
    ``head`` is the commit ``after`` names. ``usernames`` maps commit emails (in any case) to the
    logins of the accounts they belong to, for the commits' ``username`` fields.
    """
    known = {email.lower(): login for email, login in (usernames or {}).items()}
    deleted = after == ZERO_OID
    repository = repository_json(base_url, repo, owner)
    html_url: str = repository["html_url"]
    # The push event keeps GitHub's older repository shape: integer timestamps and a few extra fields.
    repository.update(
        created_at=unix(repo.created_at),
        pushed_at=unix(repo.pushed_at),
        stargazers=0,
        master_branch=repo.default_branch,
    )
    if owner.is_org:
        repository["organization"] = owner.login
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "repository": repository,
        # Only an address the pusher made public: receivers are not all entitled to a private one.
        "pusher": {"name": pusher.login, "email": pusher.email if pusher.email_public and pusher.email else None},
        "sender": user_json(base_url, sender),
        "created": before == ZERO_OID,
        "deleted": deleted,
        "forced": forced,
        "base_ref": base_ref,
        "compare": _compare_url(html_url, ref, before, after),
        # The newest commits when there are too many, as GitHub keeps them.
        "commits": [_push_commit(html_url, commit, known) for commit in commits[-MAX_PUSH_COMMITS:]],
        "head_commit": None if deleted or head is None else _push_commit(html_url, head, known),
    }


def ref_payload(
    kind: str,
    base_url: str,
    repo: Repository,
    owner: Account,
    *,
    sender: Account,
    ref: str,
    ref_type: str,
) -> dict[str, Any]:
    """GitHub's ``create`` or ``delete`` event (``kind``) for a branch or tag; ``ref`` is its short name."""
    if kind not in REF_KINDS:
        raise ValueError(f"unknown ref event {kind!r}: use create or delete")
    if ref_type not in REF_TYPES:
        raise ValueError(f"unknown ref type {ref_type!r}: use branch or tag")
    payload: dict[str, Any] = {"ref": ref, "ref_type": ref_type}
    if kind == "create":
        payload["master_branch"] = repo.default_branch
        payload["description"] = repo.description or None
    payload["pusher_type"] = "user"
    payload["repository"] = repository_json(base_url, repo, owner)
    payload["sender"] = user_json(base_url, sender)
    return payload


def repository_payload(
    action: str,
    base_url: str,
    repo: Repository,
    owner: Account,
    *,
    sender: Account,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GitHub's ``repository`` event. ``renamed`` needs ``changes`` ({"repository": {"name": {"from": old}}});
    ``edited`` takes e.g. {"description": {"from": old}}."""
    if action not in REPOSITORY_ACTIONS:
        raise ValueError(f"unknown repository action {action!r}")
    if action == "renamed" and changes is None:
        raise ValueError("a renamed event needs the old name in changes")
    payload: dict[str, Any] = {"action": action}
    if changes is not None:
        payload["changes"] = changes
    elif action == "edited":
        payload["changes"] = {}  # GitHub always sends changes with edited
    payload["repository"] = repository_json(base_url, repo, owner)
    payload["sender"] = user_json(base_url, sender)
    return payload


def member_payload(
    action: str,
    base_url: str,
    repo: Repository,
    owner: Account,
    *,
    sender: Account,
    member: Account,
    permission: Permission | None = None,
    old_permission: Permission | None = None,
) -> dict[str, Any]:
    """GitHub's ``member`` event: a collaborator ``added``, ``removed`` or ``edited`` (from
    ``old_permission`` to ``permission``). Permissions are named read, write or admin, as GitHub does."""
    if action not in MEMBER_ACTIONS:
        raise ValueError(f"unknown member action {action!r}")
    new = permission.label if permission is not None and permission > Permission.NONE else None
    old = old_permission.label if old_permission is not None and old_permission > Permission.NONE else None
    payload: dict[str, Any] = {"action": action}
    if action == "added" and new is not None:
        payload["changes"] = {"permission": {"to": new}, "role_name": {"to": new}}
    elif action == "edited":
        changes: dict[str, Any] = {}
        if old is not None:
            changes["old_permission"] = {"from": old}
        if old is not None or new is not None:
            changes["permission"] = {"from": old, "to": new}
        payload["changes"] = changes
    payload["member"] = user_json(base_url, member)
    payload["repository"] = repository_json(base_url, repo, owner)
    payload["sender"] = user_json(base_url, sender)
    return payload


def ping_payload(
    hook: dict[str, Any],
    *,
    zen: str,
    hook_id: int,
    repo_json: dict[str, Any] | None = None,
    org_json: dict[str, Any] | None = None,
    sender: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GitHub's ``ping`` event, sent when a hook is created: a repository hook's carries
    ``repo_json``, an organization hook's ``org_json``."""
    payload: dict[str, Any] = {"zen": zen, "hook_id": hook_id, "hook": hook}
    if repo_json is not None:
        payload["repository"] = repo_json
    if org_json is not None:
        payload["organization"] = org_json
    if sender is not None:
        payload["sender"] = sender
    return payload


def with_organization(payload: dict[str, Any], base_url: str, org: Account | None) -> dict[str, Any]:
    """``payload`` with GitHub's ``organization`` field when the repository belongs to ``org``.
    Returns a new dict; ``payload`` is left as it was."""
    if org is None:
        return payload
    return {**payload, "organization": org_json(base_url, org)}
