"""GitHub REST v3 shapes of Bulwark's records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bulwark.http.api.common import Ctx
from bulwark.models import Account, Permission, Repository


def iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


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
        data.update(
            name=account.name or None,
            email=account.email or None,
            suspended_at=iso(account.updated_at) if account.suspended else None,
            created_at=iso(account.created_at),
            updated_at=iso(account.updated_at),
        )
    return data


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
    if permission > Permission.NONE:
        data["permissions"] = permissions_json(permission)
    return data
