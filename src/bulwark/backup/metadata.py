"""Metadata to and from a plain JSON document, through the store interface only.

The same document comes out of a SQLite store and an etcd store and goes into
either, which is what lets a standalone snapshot restore into a cluster and back.
Records keep their logins, names, storage ids, password and token hashes, SSH keys
and the server's SSH host keys (private keys: the document is as secret as the
server); numeric ids are assigned anew by the target store (every reference is
remapped), since the store interface hands out ids itself. Documents from before SSH
keys have no ``ssh_keys`` or ``ssh_host_keys`` and import as having none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bulwark.errors import InvalidInput
from bulwark.models import Account, AccountType, OrgRole, Permission, Scope, SshKey, Visibility
from bulwark.store import Store

FORMAT = 1


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def export(store: Store) -> dict[str, Any]:
    """Every account, membership, token, repository, collaborator and SSH key, in id order, and the
    SSH host keys."""
    accounts = store.list_accounts()
    users = [a for a in accounts if a.type is AccountType.USER]
    orgs = [a for a in accounts if a.type is AccountType.ORGANIZATION]
    repos = store.list_repos()
    return {
        "format": FORMAT,
        "accounts": [_account(store, a) for a in accounts],
        "memberships": [
            {"org_id": m.org_id, "user_id": m.user_id, "role": m.role.value}
            for org in orgs
            for m in store.list_members(org.id)
        ],
        "tokens": [
            {
                "user_id": t.user_id,
                "note": t.note,
                "token_hash": t.token_hash,
                "token_prefix": t.token_prefix,
                "scopes": sorted(s.value for s in t.scopes),
                "created_at": _time(t.created_at),
                "expires_at": _time(t.expires_at),
                "last_used_at": _time(t.last_used_at),
                "sessions_ended_at": _time(t.sessions_ended_at),
            }
            for user in users
            for t in store.list_tokens(user.id)
        ],
        "repositories": [
            {
                "id": r.id,
                "owner_id": r.owner_id,
                "name": r.name,
                "storage_id": r.storage_id,
                "visibility": r.visibility.value,
                "description": r.description,
                "default_branch": r.default_branch,
                "allow_force_push": r.allow_force_push,
                "created_at": _time(r.created_at),
                "pushed_at": _time(r.pushed_at),
            }
            for r in repos
        ],
        "collaborators": [
            {"repo_id": c.repo_id, "user_id": c.user_id, "permission": c.permission.value}
            for r in repos
            for c in store.list_collaborators(r.id)
        ],
        # Users' keys, then deploy keys. Their last use is left out: every SSH connection changes it,
        # and a backup point compares two exports.
        "ssh_keys": [
            *(_ssh_key(k) for u in users for k in store.list_ssh_keys(user_id=u.id)),
            *(_ssh_key(k) for r in repos for k in store.list_ssh_keys(repo_id=r.id)),
        ],
        "ssh_host_keys": [
            {"algorithm": h.algorithm, "private_key": h.private_key, "created_at": _time(h.created_at)}
            for h in store.get_ssh_host_keys()
        ],
    }


def _ssh_key(k: SshKey) -> dict[str, Any]:
    return {
        "fingerprint": k.fingerprint,
        "algorithm": k.algorithm,
        "key": k.key,
        "title": k.title,
        "user_id": k.user_id,
        "repo_id": k.repo_id,
        "read_only": k.read_only,
        "created_at": _time(k.created_at),
    }


def _account(store: Store, a: Account) -> dict[str, Any]:
    return {
        "id": a.id,
        "login": a.login,
        "type": a.type.value,
        "name": a.name,
        "email": a.email,
        "email_public": a.email_public,
        "site_admin": a.site_admin,
        "suspended": a.suspended,
        "created_at": _time(a.created_at),
        "password_hash": store.get_password_hash(a.id) if a.type is AccountType.USER else None,
    }


@dataclass
class Imported:
    """Old id -> new id for accounts and repositories, how many SSH keys were added, and the
    host keys the target kept."""

    accounts: dict[int, int] = field(default_factory=dict)
    repositories: dict[int, int] = field(default_factory=dict)
    ssh_keys: int = 0
    # Algorithms whose host key the target had already, different from the document's: a store keeps
    # the first host key of an algorithm, so the target's stays.
    host_keys_kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.accounts)} accounts, {len(self.repositories)} repositories, {self.ssh_keys} SSH keys"
        if self.host_keys_kept:
            text += f" (kept this instance's own SSH host keys for {', '.join(self.host_keys_kept)})"
        return text


def check(document: Any) -> dict[str, Any]:
    """Refuse what is not a metadata document this version can read."""
    if not isinstance(document, dict) or "format" not in document:
        raise InvalidInput("not a Bulwark metadata document")
    if not isinstance(document["format"], int) or document["format"] > FORMAT:
        raise InvalidInput(
            f"this metadata is in format {document['format']}, newer than this Bulwark reads ({FORMAT}); "
            "upgrade Bulwark to restore it"
        )
    for key in ("accounts", "memberships", "tokens", "repositories", "collaborators"):
        if not isinstance(document.get(key), list):
            raise InvalidInput(f"the metadata document has no valid {key!r} list")
    # Older documents have no SSH keys.
    for key in ("ssh_keys", "ssh_host_keys"):
        if not isinstance(document.get(key, []), list):
            raise InvalidInput(f"the metadata document has no valid {key!r} list")
    return document


def import_into(store: Store, document: dict[str, Any], *, skip_logins: Iterable[str] = ()) -> Imported:
    """Recreate every record of ``document`` in ``store``, which must hold none of them yet.

    ``skip_logins`` are accounts the target already has and keeps (a fresh node's ``admin``):
    their records are updated from the document instead of created.
    """
    check(document)
    done = Imported()
    keep = {login.lower() for login in skip_logins}
    accounts = document["accounts"]
    by_id = {a["id"]: a for a in accounts}
    owners: dict[int, int] = {}
    for m in document["memberships"]:
        if m["role"] == OrgRole.OWNER.value:
            owners.setdefault(m["org_id"], m["user_id"])
    # Users first: organizations need an owner.
    for a in accounts:
        if a["type"] != AccountType.USER.value:
            continue
        existing = store.get_account(a["login"]) if a["login"].lower() in keep else None
        user = existing or store.create_user(
            a["login"], name=a.get("name", ""), email=a.get("email", ""), site_admin=bool(a.get("site_admin")),
            password_hash=a.get("password_hash"),
        )
        user = store.save_account(
            _replace(user, name=a.get("name", ""), email=a.get("email", ""), site_admin=bool(a.get("site_admin")),
                     suspended=bool(a.get("suspended")), email_public=bool(a.get("email_public")))
        )
        if existing is not None:
            store.set_password_hash(user.id, a.get("password_hash"))
        done.accounts[a["id"]] = user.id
    for a in accounts:
        if a["type"] != AccountType.ORGANIZATION.value:
            continue
        owner_old = owners.get(a["id"])
        if owner_old is None or owner_old not in done.accounts:
            raise InvalidInput(f"organization {a['login']!r} has no owner in the metadata")
        org = store.create_org(a["login"], owner_id=done.accounts[owner_old], name=a.get("name", ""),
                               email=a.get("email", ""))
        done.accounts[a["id"]] = org.id
    for m in document["memberships"]:
        store.set_membership(done.accounts[m["org_id"]], done.accounts[m["user_id"]], OrgRole(m["role"]))
    for t in document["tokens"]:
        if t["user_id"] not in done.accounts:
            continue
        user_id = done.accounts[t["user_id"]]
        if any(existing.token_hash == t["token_hash"] for existing in store.list_tokens(user_id)):
            continue
        token = store.create_token(
            user_id, token_hash=t["token_hash"], token_prefix=t["token_prefix"],
            scopes={Scope(s) for s in t["scopes"]}, note=t.get("note", ""), expires_at=_parse_time(t.get("expires_at")),
        )
        last_used = _parse_time(t.get("last_used_at"))
        if last_used is not None:
            store.touch_token(token.id, last_used)
        # A status-page log-out stays one after a restore (older backups have none).
        ended = _parse_time(t.get("sessions_ended_at"))
        if ended is not None:
            store.end_token_sessions(token.id, ended)
    for r in document["repositories"]:
        if r["owner_id"] not in by_id:
            raise InvalidInput(f"repository {r['name']!r} has an owner missing from the metadata")
        repo = store.create_repo(
            done.accounts[r["owner_id"]], r["name"], storage_id=r["storage_id"],
            visibility=Visibility(r["visibility"]), description=r.get("description", ""),
            default_branch=r.get("default_branch", "main"),
        )
        repo = store.save_repo(_replace(repo, allow_force_push=bool(r.get("allow_force_push", True)),
                                        pushed_at=_parse_time(r.get("pushed_at"))))
        done.repositories[r["id"]] = repo.id
    for c in document["collaborators"]:
        permission = Permission(c["permission"])
        store.set_collaborator(done.repositories[c["repo_id"]], done.accounts[c["user_id"]], permission)
    for k in document.get("ssh_keys", []):
        # A user's key, or a deploy key of a repository.
        key_user: int | None = None
        key_repo: int | None = None
        if k.get("user_id") is not None:
            if k["user_id"] not in done.accounts:
                continue
            key_user = done.accounts[k["user_id"]]
        else:
            key_repo = done.repositories[k["repo_id"]]
        there = store.get_ssh_key_by_fingerprint(k["fingerprint"])
        if there is not None and (there.user_id, there.repo_id) == (key_user, key_repo):
            continue  # a kept account's key, there already
        store.create_ssh_key(
            fingerprint=k["fingerprint"], algorithm=k["algorithm"], key=k["key"], title=k.get("title", ""),
            user_id=key_user, repo_id=key_repo, read_only=bool(k.get("read_only")),
        )
        done.ssh_keys += 1
    for h in document.get("ssh_host_keys", []):
        stored = store.add_ssh_host_key(h["algorithm"], h["private_key"])
        if stored.private_key != h["private_key"]:
            done.host_keys_kept.append(h["algorithm"])
    return done


def _replace(record: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(record, **changes)
