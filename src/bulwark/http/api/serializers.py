"""GitHub REST v3 shapes of Bulwark's records."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bulwark.git.model import Commit, Person, Ref, TreeEntry
from bulwark.http.api.common import Ctx
from bulwark.models import Account, OrgRole, Permission, Repository, Token
from bulwark.webhooks import payloads

# The REST API's timestamps are the webhook payloads' (one function for both).
iso = payloads.iso


def sees_private_fields(ctx: Ctx, account: Account) -> bool:
    """Whether the caller may see what GitHub shows only to the account itself and to site
    administrators: an email address not made public, and whether the account is suspended."""
    caller = ctx.principal
    return caller.site_admin or (caller.account is not None and caller.account.id == account.id)


def account_json(ctx: Ctx, account: Account, *, full: bool = False) -> dict[str, Any]:
    api = ctx.url("/api/v3")
    kind = "orgs" if account.is_org else "users"
    data: dict[str, Any] = {
        "login": account.login,
        "id": account.id,
        "node_id": f"{kind}:{account.id}",
        "type": account.type.value,
        "site_admin": account.site_admin,
        "url": f"{api}/{kind}/{account.login}",
        "html_url": ctx.url(f"/{account.login}"),
        "repos_url": f"{api}/{kind}/{account.login}/repos",
        "avatar_url": "",
    }
    if full:
        private = sees_private_fields(ctx, account)
        data.update(
            name=account.name or None,
            # An organization's email is its public contact address, as on GitHub.
            email=account.email if account.email and (account.is_org or account.email_public or private) else None,
            created_at=iso(account.created_at),
            updated_at=iso(account.updated_at),
        )
        if private:
            data["suspended_at"] = iso(account.updated_at) if account.suspended else None
    return data


def emails_json(account: Account, *, public_only: bool = False) -> list[dict[str, Any]]:
    """GitHub's list of a user's email addresses: Bulwark keeps one, the primary."""
    if not account.email or (public_only and not account.email_public):
        return []
    visibility = "public" if account.email_public else "private"
    return [{"email": account.email, "primary": True, "verified": True, "visibility": visibility}]


def org_json(ctx: Ctx, org: Account) -> dict[str, Any]:
    api = ctx.url("/api/v3")
    return {
        "login": org.login,
        "id": org.id,
        "node_id": f"orgs:{org.id}",
        "url": f"{api}/orgs/{org.login}",
        "repos_url": f"{api}/orgs/{org.login}/repos",
        "members_url": f"{api}/orgs/{org.login}/members{{/member}}",
        "description": None,
        "name": org.name or None,
        "email": org.email or None,
        "type": "Organization",
        "created_at": iso(org.created_at),
        "updated_at": iso(org.updated_at),
        "avatar_url": "",
    }


def permissions_json(permission: Permission) -> dict[str, bool]:
    return {
        "admin": permission >= Permission.ADMIN,
        "maintain": permission >= Permission.ADMIN,
        "push": permission >= Permission.PUSH,
        "triage": permission >= Permission.PUSH,
        "pull": permission >= Permission.PULL,
    }


def repo_json(ctx: Ctx, repo: Repository, owner: Account, permission: Permission) -> dict[str, Any]:
    full_name = f"{owner.login}/{repo.name}"
    api = ctx.url(f"/api/v3/repos/{full_name}")
    data: dict[str, Any] = {
        "id": repo.id,
        "node_id": f"repos:{repo.id}",
        "name": repo.name,
        "full_name": full_name,
        "owner": account_json(ctx, owner),
        "private": repo.private,
        "visibility": repo.visibility.value,
        "description": repo.description or None,
        "fork": False,
        "url": api,
        "html_url": ctx.url(f"/{full_name}"),
        "clone_url": ctx.url(f"/{full_name}.git"),
        "git_url": ctx.url(f"/{full_name}.git"),
        "ssh_url": ctx.node.settings.ssh_clone_url(full_name),
        "branches_url": f"{api}/branches{{/branch}}",
        "collaborators_url": f"{api}/collaborators{{/collaborator}}",
        "commits_url": f"{api}/commits{{/sha}}",
        "contents_url": f"{api}/contents/{{+path}}",
        "default_branch": repo.default_branch,
        "allow_force_pushes": repo.allow_force_push,
        "archived": False,
        "disabled": False,
        "created_at": iso(repo.created_at),
        "updated_at": iso(repo.updated_at),
        "pushed_at": iso(repo.pushed_at),
    }
    if owner.is_org:
        data["organization"] = account_json(ctx, owner)
    if permission > Permission.NONE:
        data["permissions"] = permissions_json(permission)
    return data


def role_name(permission: Permission) -> str:
    return permission.label


def collaborator_json(ctx: Ctx, user: Account, permission: Permission) -> dict[str, Any]:
    return {**account_json(ctx, user), "permissions": permissions_json(permission), "role_name": role_name(permission)}


def invitation_json(
    ctx: Ctx, repo: dict[str, Any], invitee: Account, inviter: Account, permission: Permission
) -> dict[str, Any]:
    """GitHub answers an added collaborator with an invitation; Bulwark's is accepted at once."""
    return {
        "id": invitee.id,
        "node_id": f"invitations:{repo['id']}:{invitee.id}",
        "repository": repo,
        "invitee": account_json(ctx, invitee),
        "inviter": account_json(ctx, inviter),
        "permissions": role_name(permission),
        "created_at": iso(ctx.node.clock.now()),
        "expired": False,
        "url": f"{repo['url']}/collaborators/{invitee.login}",
        "html_url": repo["html_url"],
    }


def membership_json(ctx: Ctx, org: Account, user: Account, role: OrgRole) -> dict[str, Any]:
    api = ctx.url("/api/v3")
    return {
        "url": f"{api}/orgs/{org.login}/memberships/{user.login}",
        "state": "active",
        "role": role.value,
        "organization_url": f"{api}/orgs/{org.login}",
        "organization": org_json(ctx, org),
        "user": account_json(ctx, user),
    }


def token_json(token: Token, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": token.id,
        "scopes": sorted(s.value for s in token.scopes),
        "note": token.note or None,
        "created_at": iso(token.created_at),
        "updated_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "token_last_eight": secret[-8:] if secret else None,
    }
    if secret is not None:
        data["token"] = secret  # shown here once; only its hash is stored
    return data


# -- git data ------------------------------------------------------------------------


def repo_api(ctx: Ctx, full_name: str) -> str:
    return ctx.url(f"/api/v3/repos/{full_name}")


def person_json(person: Person) -> dict[str, Any]:
    return {"name": person.name, "email": person.email, "date": iso(person.date)}


def commit_json(ctx: Ctx, full_name: str, commit: Commit) -> dict[str, Any]:
    api = repo_api(ctx, full_name)
    return {
        "sha": commit.sha,
        "node_id": f"commits:{commit.sha}",
        "url": f"{api}/commits/{commit.sha}",
        "html_url": ctx.url(f"/{full_name}/commit/{commit.sha}"),
        "comments_url": f"{api}/commits/{commit.sha}/comments",
        "commit": {
            "url": f"{api}/git/commits/{commit.sha}",
            "author": person_json(commit.author),
            "committer": person_json(commit.committer),
            "message": commit.message,
            "tree": {"sha": commit.tree, "url": f"{api}/git/trees/{commit.tree}"},
            "comment_count": 0,
            "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None},
        },
        # Git identities are not mapped to accounts.
        "author": None,
        "committer": None,
        "parents": [
            {"sha": p, "url": f"{api}/commits/{p}", "html_url": ctx.url(f"/{full_name}/commit/{p}")}
            for p in commit.parents
        ],
    }


def branch_json(ctx: Ctx, full_name: str, name: str, commit: dict[str, Any]) -> dict[str, Any]:
    api = repo_api(ctx, full_name)
    quoted = quote(name, safe="/")
    return {
        "name": name,
        "commit": commit,
        "protected": False,
        "protection": {"enabled": False, "required_status_checks": {"enforcement_level": "off", "contexts": []}},
        "protection_url": f"{api}/branches/{quoted}/protection",
        "_links": {"self": f"{api}/branches/{quoted}", "html": ctx.url(f"/{full_name}/tree/{quoted}")},
    }


def ref_json(ctx: Ctx, full_name: str, ref: Ref) -> dict[str, Any]:
    api = repo_api(ctx, full_name)
    return {
        "ref": ref.name,
        "node_id": f"refs:{ref.name}",
        "url": f"{api}/git/{quote(ref.name, safe='/')}",
        "object": {"sha": ref.oid, "type": ref.type, "url": f"{api}/git/{ref.type}s/{ref.oid}"},
    }


def content_json(ctx: Ctx, full_name: str, entry: TreeEntry, ref: str, *, listing: bool) -> dict[str, Any]:
    """A contents entry; a symlink reads as a file in listings, as GitHub does."""
    api = repo_api(ctx, full_name)
    kinds = {"tree": "dir", "commit": "submodule"}
    kind = kinds.get(entry.type, "symlink" if entry.mode == "120000" and not listing else "file")
    path = quote(entry.path)
    self_url = f"{api}/contents/{path}?ref={quote(ref, safe='')}"
    html_url = ctx.url(f"/{full_name}/{'tree' if kind == 'dir' else 'blob'}/{quote(ref)}/{path}")
    git_url = f"{api}/git/{'trees' if kind == 'dir' else 'blobs'}/{entry.sha}"
    return {
        "type": kind,
        "name": entry.name,
        "path": entry.path,
        "sha": entry.sha,
        "size": entry.size,
        "url": self_url,
        "html_url": html_url,
        "git_url": git_url,
        "download_url": None,
        "_links": {"self": self_url, "git": git_url, "html": html_url},
    }
