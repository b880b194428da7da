"""Repositories: their records, their data on disk, and who may reach them."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from bulwark.clock import Clock
from bulwark.errors import BulwarkError, Forbidden, GitError, InvalidInput, NotFound
from bulwark.git.runner import GitRunner
from bulwark.models import ALL_SCOPES, Account, Collaborator, Permission, Repository, Scope, Visibility
from bulwark.names import MAX_REPO_DESCRIPTION, check_branch_name, check_repo_name, check_text
from bulwark.services.permissions import Principal, repo_permission
from bulwark.store import Store

log = logging.getLogger("bulwark.repos")


def _check_description(description: str) -> str:
    return check_text(description, resource="Repository", field="description", limit=MAX_REPO_DESCRIPTION)


@dataclass(frozen=True)
class RepoAccess:
    """A repository as one caller sees it."""

    repo: Repository
    owner: Account
    permission: Permission

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.repo.name}"


class RepoEvents(Protocol):
    """Where repository and member events go (webhooks/service.py), inside the change's transaction."""

    def repository(self, action: str, repo: Repository, sender: Account,
                   changes: dict[str, Any] | None = None) -> int: ...

    def member(self, action: str, repo: Repository, sender: Account, member: Account,
               permission: Permission | None = None, old_permission: Permission | None = None) -> int: ...

    def forget(self, *, repo_id: int | None = None, org_id: int | None = None) -> None:
        """A repository or organization is gone: so are its hooks (a store without cascades)."""
        ...


def _repository_action(before: Repository, after: Repository) -> tuple[str, dict[str, Any] | None] | None:
    """The webhook ``repository`` action of an update, with GitHub's ``changes``."""
    if before.name != after.name:
        return "renamed", {"repository": {"name": {"from": before.name}}}
    if before.visibility is not after.visibility:
        return ("privatized" if after.private else "publicized"), None
    edited = {f: {"from": getattr(before, f)} for f in ("description", "default_branch")
              if getattr(before, f) != getattr(after, f)}
    return ("edited", edited) if edited else None


class RepositoryService:
    def __init__(self, store: Store, git: GitRunner, clock: Clock, events: RepoEvents | None = None) -> None:
        self.store = store
        self.git = git
        self.clock = clock
        # Set where webhooks exist; a change made on behalf of a ``sender`` then queues its event.
        self.events = events

    # -- access ----------------------------------------------------------------------

    def permission(self, principal: Principal, repo: Repository, owner: Account) -> Permission:
        user = principal.account
        membership = collaborator = None
        # An owner, a site admin and a suspended user need no look-ups: the answer is theirs already.
        owns = user is not None and not owner.is_org and owner.id == user.id
        if user is not None and not (owns or principal.site_admin or user.suspended):
            if owner.is_org:
                membership = self.store.get_membership(owner.id, user.id)
            collaborator = self.store.get_collaborator(repo.id, user.id)
        return repo_permission(principal, repo, owner=owner, membership=membership, collaborator=collaborator)

    def find(self, principal: Principal, owner_login: str, name: str) -> RepoAccess:
        """The repository as ``principal`` sees it; ``NotFound`` if it cannot see it at all.

        A private repository the caller may not read is reported exactly like a
        missing one, so its existence does not leak.
        """
        owner = self.store.get_account(owner_login)
        repo = self.store.get_repo(owner.id, name) if owner else None
        if owner is None or repo is None:
            raise NotFound("repository not found")
        access = RepoAccess(repo, owner, self.permission(principal, repo, owner))
        if access.permission < Permission.PULL:
            raise NotFound("repository not found")
        return access

    def require(self, access: RepoAccess, needed: Permission) -> None:
        if access.permission < needed:
            raise Forbidden(f"you need {needed.label} access to {access.full_name}")

    def visible_to(self, principal: Principal, repos: list[Repository]) -> list[RepoAccess]:
        """The repositories of ``repos`` that ``principal`` may see, with its permission on each.

        The caller's memberships and collaborations are read once for the whole list (a look-up
        per repository costs a round trip each on etcd: seconds for a page of a large list).
        """
        user = principal.account
        memberships = {} if user is None else {m.org_id: m for m in self.store.list_memberships_of(user.id)}
        collaborations = {} if user is None else {c.repo_id: c for c in self.store.list_collaborations_of(user.id)}
        result = []
        owners: dict[int, Account | None] = {}
        for repo in repos:
            if repo.owner_id not in owners:
                owners[repo.owner_id] = self.store.get_account_by_id(repo.owner_id)
            owner = owners[repo.owner_id]
            if owner is None:
                continue
            perm = repo_permission(principal, repo, owner=owner,
                                   membership=memberships.get(owner.id) if owner.is_org else None,
                                   collaborator=collaborations.get(repo.id))
            if perm >= Permission.PULL:
                result.append(RepoAccess(repo, owner, perm))
        return result

    def accessible_by(self, user: Account) -> list[Repository]:
        """Repositories ``user`` owns, collaborates on, or reaches through an organization."""
        seen: dict[int, Repository] = {r.id: r for r in self.store.list_repos(user.id)}
        for repo in self.store.get_repos([c.repo_id for c in self.store.list_collaborations_of(user.id)]):
            seen[repo.id] = repo
        for membership in self.store.list_memberships_of(user.id):
            for repo in self.store.list_repos(membership.org_id):
                seen[repo.id] = repo
        return [seen[k] for k in sorted(seen)]

    # -- lifecycle ---------------------------------------------------------------------

    def create(
        self,
        owner: Account,
        name: str,
        *,
        visibility: Visibility = Visibility.PUBLIC,
        description: str = "",
        default_branch: str = "main",
        sender: Account | None = None,
    ) -> Repository:
        check_repo_name(name)
        _check_description(description)
        check_branch_name(default_branch)
        storage_id = uuid.uuid4().hex
        # The record first: it is where uniqueness is decided. Its data follows, and a
        # failure to create the data takes the record back out.
        with self.store.transaction():
            repo = self.store.create_repo(
                owner.id,
                name,
                storage_id=storage_id,
                visibility=visibility,
                description=description,
                default_branch=default_branch,
            )
            if self.events is not None and sender is not None:
                self.events.repository("created", repo, sender)
        try:
            self.git.init_bare(storage_id, default_branch)
        except Exception:
            self.store.delete_repo(repo.id)
            self.git.remove(storage_id)
            raise
        return repo

    def update(
        self,
        repo: Repository,
        *,
        name: str | None = None,
        description: str | None = None,
        visibility: Visibility | None = None,
        default_branch: str | None = None,
        allow_force_push: bool | None = None,
        sender: Account | None = None,
    ) -> Repository:
        changes: dict[str, object] = {}
        if name is not None and name != repo.name:
            changes["name"] = check_repo_name(name)
        if description is not None:
            changes["description"] = _check_description(description)
        if visibility is not None:
            changes["visibility"] = visibility
        if allow_force_push is not None:
            changes["allow_force_push"] = allow_force_push
        if default_branch is not None and default_branch != repo.default_branch:
            check_branch_name(default_branch)
            self._set_head(repo, default_branch)
            changes["default_branch"] = default_branch
        if not changes:
            return repo
        with self.store.transaction():
            saved = self.store.save_repo(dataclasses.replace(repo, **changes))  # type: ignore[arg-type]
            action = _repository_action(repo, saved)
            if self.events is not None and sender is not None and action is not None:
                self.events.repository(action[0], saved, sender, action[1])
        return saved

    def _set_head(self, repo: Repository, branch: str) -> None:
        has_branches = bool(self.git.refs(repo.storage_id, "refs/heads/"))
        if has_branches and not self.git.refs(repo.storage_id, f"refs/heads/{branch}"):
            raise InvalidInput(f"branch {branch!r} does not exist", field="default_branch")
        try:
            self.git.set_head(repo.storage_id, branch)
        except GitError as exc:
            raise InvalidInput(f"cannot set default branch: {exc.message}", field="default_branch") from exc

    def transfer(self, repo: Repository, new_owner: Account, new_name: str | None = None) -> Repository:
        # Owner and name change in one save, so the repository is never reachable under a mix of both.
        name = check_repo_name(new_name) if new_name is not None else repo.name
        return self.store.save_repo(dataclasses.replace(repo, owner_id=new_owner.id, name=name))

    def delete(self, repo: Repository, sender: Account | None = None) -> None:
        with self.store.transaction():
            if self.events is not None and sender is not None:
                self.events.repository("deleted", repo, sender)
            deleted = self.store.delete_repo(repo.id)
        if deleted:
            self._forget(repo_id=repo.id)
            self.git.remove(repo.storage_id)

    def delete_account(self, account: Account) -> None:
        for repo in self.store.delete_account(account.id):
            self._forget(repo_id=repo.id)
            self.git.remove(repo.storage_id)
        if account.is_org:
            self._forget(org_id=account.id)

    def _forget(self, *, repo_id: int | None = None, org_id: int | None = None) -> None:
        if self.events is None:
            return
        try:
            self.events.forget(repo_id=repo_id, org_id=org_id)
        except BulwarkError as exc:  # the deletion stands; the hooks are never read again
            log.warning("could not remove the hooks of a deleted %s: %s", "repository" if repo_id else "account",
                        exc.message)

    def record_push(self, repo: Repository) -> None:
        current = self.store.get_repo_by_id(repo.id)
        if current is not None:
            self.store.save_repo(dataclasses.replace(current, pushed_at=self.clock.now()))

    # -- collaborators -----------------------------------------------------------------

    def add_collaborator(self, repo: Repository, user: Account, permission: Permission,
                         sender: Account | None = None) -> Collaborator:
        if user.is_org:
            raise InvalidInput("an organization cannot be a collaborator")
        if permission is Permission.NONE:
            raise InvalidInput("permission must be pull, push or admin", field="permission")
        with self.store.transaction():
            known = self.store.get_collaborator(repo.id, user.id)
            collaborator = self.store.set_collaborator(repo.id, user.id, permission)
            if self.events is not None and sender is not None and (known is None or known.permission != permission):
                self.events.member("added" if known is None else "edited", repo, sender, user, permission,
                                   known.permission if known is not None else None)
        return collaborator

    def remove_collaborator(self, repo: Repository, user: Account, sender: Account | None = None) -> None:
        with self.store.transaction():
            if not self.store.remove_collaborator(repo.id, user.id):
                raise NotFound(f"{user.login!r} is not a collaborator")
            if self.events is not None and sender is not None:
                self.events.member("removed", repo, sender, user)

    def user_permission(
        self, repo: Repository, owner: Account, user: Account, *, via_visibility: bool = True
    ) -> Permission:
        """What ``user`` may do to ``repo`` by its own standing, whatever credential it uses.

        Ownership, organization membership and collaboration count, and the
        repository being public counts unless ``via_visibility`` is false.
        Site-admin powers do not: they belong to a credential, not to the account.
        """
        seen = repo if via_visibility else dataclasses.replace(repo, visibility=Visibility.PRIVATE)
        principal = Principal(account=user, scopes=ALL_SCOPES - {Scope.SITE_ADMIN})
        return self.permission(principal, seen, owner)

    def people(self, repo: Repository, owner: Account) -> list[tuple[Account, Permission]]:
        """Everyone with access of their own: the owner, the owning organization's members, collaborators."""
        ids = {c.user_id for c in self.store.list_collaborators(repo.id)}
        if owner.is_org:
            ids |= {m.user_id for m in self.store.list_members(owner.id)}
        else:
            ids.add(owner.id)
        result = []
        for user_id in sorted(ids):
            user = self.store.get_account_by_id(user_id)
            if user is None:
                continue
            permission = self.user_permission(repo, owner, user, via_visibility=False)
            if permission > Permission.NONE:
                result.append((user, permission))
        return result

    def collaborators(self, repo: Repository) -> list[tuple[Account, Permission]]:
        result = []
        for c in self.store.list_collaborators(repo.id):
            user = self.store.get_account_by_id(c.user_id)
            if user is not None:
                result.append((user, c.permission))
        return result

    # -- administration ----------------------------------------------------------------

    def get_by_name(self, owner_login: str, name: str) -> RepoAccess:
        """``owner/name`` with no access check, for the node's own administration tools."""
        owner = self.store.get_account(owner_login)
        repo = self.store.get_repo(owner.id, name) if owner else None
        if owner is None or repo is None:
            raise NotFound(f"no repository {owner_login}/{name}")
        return RepoAccess(repo, owner, Permission.ADMIN)
