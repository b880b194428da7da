"""Pages of repository lists in name order, read from the store a page at a time.

A list is a run of sources, one per owner, in the order of the owners' logins: all of an owner's
repositories (a user's own, an organization's, or whichever of them the caller may see), or just
the ones a caller collaborates on. A page starts either at an offset (``page=N``) or after the
last repository of the previous page (a cursor); it skips whole sources by their counts when the
caller sees every repository in them, and reads the source it starts in a chunk at a time in name
order until the page is full. A page of a list of 100,000 reads about a page of records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from bulwark.models import Account, Collaborator, Membership, Permission, Repository
from bulwark.services.permissions import Principal, repo_permission, sees_every_repo
from bulwark.services.repositories import RepoAccess
from bulwark.store.base import Store

# Records read at first from a source; twice as many each time after, up to the most.
CHUNK = 100
MAX_CHUNK = 2000

OWNER, COLLABORATOR, ORGANIZATION_MEMBER = "owner", "collaborator", "organization_member"


def fold(text: str) -> str:
    """Names as the stores order them: ASCII letters folded to lower case."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def sort_key(access: RepoAccess) -> tuple[str, str]:
    """Where a repository stands in a list in name order: by its owner's login, then its name."""
    return fold(access.owner.login), fold(access.repo.name)


@dataclass(frozen=True)
class Start:
    """Where a page starts: after ``offset`` repositories, or just after the repository at
    ``after`` (a :func:`sort_key`), the last one of the page before."""

    offset: int = 0
    after: tuple[str, str] | None = None


@dataclass(frozen=True)
class _Source:
    owner: Account
    every: bool  # the caller sees every repository of the owner: a count stands for a read
    only: tuple[int, ...] | None = None  # just these repositories (collaborations), else all


class _Caller:
    """The caller's memberships and collaborations, read once for a whole page."""

    def __init__(self, store: Store, principal: Principal) -> None:
        user = principal.account
        self.principal = principal
        self.memberships: dict[int, Membership] = (
            {} if user is None else {m.org_id: m for m in store.list_memberships_of(user.id)}
        )
        self.collaborations: dict[int, Collaborator] = (
            {} if user is None else {c.repo_id: c for c in store.list_collaborations_of(user.id)}
        )

    def source(self, owner: Account) -> _Source:
        return _Source(owner, sees_every_repo(self.principal, owner, self.memberships.get(owner.id)))

    def access(self, repos: Iterable[Repository], owner: Account, visibility: str) -> list[RepoAccess]:
        found = []
        for repo in repos:
            if repo.owner_id != owner.id or (visibility != "all" and repo.visibility.value != visibility):
                continue
            perm = repo_permission(self.principal, repo, owner=owner,
                                   membership=self.memberships.get(owner.id) if owner.is_org else None,
                                   collaborator=self.collaborations.get(repo.id))
            if perm >= Permission.PULL:
                found.append(RepoAccess(repo, owner, perm))
        return found


class RepoLists:
    """Pages of one owner's repositories and of a user's own list (``/user/repos``), in name order."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def owned(self, principal: Principal, owner: Account, *, visibility: str, start: Start,
              limit: int) -> list[RepoAccess]:
        """Up to ``limit`` of ``owner``'s repositories that ``principal`` may see."""
        caller = _Caller(self.store, principal)
        return self._page(caller, [caller.source(owner)], visibility, start, limit)

    def own(self, principal: Principal, user: Account, *, affiliations: Collection[str], visibility: str,
            start: Start, limit: int) -> list[RepoAccess]:
        """Up to ``limit`` of the repositories ``user`` owns (``owner``), collaborates on
        (``collaborator``) or reaches as a member of their organization (``organization_member``)."""
        caller = _Caller(self.store, principal)
        sources: dict[int, _Source] = {}
        if OWNER in affiliations:
            sources[user.id] = caller.source(user)
        if ORGANIZATION_MEMBER in affiliations:
            for org in filter(None, map(self.store.get_account_by_id, caller.memberships)):
                sources[org.id] = caller.source(org)
        if COLLABORATOR in affiliations:
            by_owner: dict[int, list[int]] = defaultdict(list)
            for repo in self.store.get_repos(list(caller.collaborations)):
                by_owner[repo.owner_id].append(repo.id)
            for owner_id, repo_ids in by_owner.items():
                owner = None if owner_id in sources else self.store.get_account_by_id(owner_id)
                if owner is not None:  # an owner listed whole already lists these
                    sources[owner_id] = _Source(owner, every=False, only=tuple(repo_ids))
        return self._page(caller, list(sources.values()), visibility, start, limit)

    def _page(self, caller: _Caller, sources: list[_Source], visibility: str, start: Start,
              limit: int) -> list[RepoAccess]:
        found: list[RepoAccess] = []
        skip = start.offset
        ordered = sorted(sources, key=lambda s: fold(s.owner.login))
        for position, source in enumerate(ordered):
            login = fold(source.owner.login)
            after = None
            if start.after is not None:
                if login < start.after[0]:
                    continue
                if login == start.after[0]:
                    after = start.after[1]
            if source.only is not None:
                repos = sorted(self.store.get_repos(list(source.only)), key=lambda r: fold(r.name))
                accesses = caller.access([r for r in repos if after is None or fold(r.name) > after],
                                         source.owner, visibility)
                found += accesses[skip:]
                skip = max(0, skip - len(accesses))
            else:
                counted = source.every and visibility == "all"
                if skip and after is None:
                    total = self.store.count_repos(source.owner.id)
                    if counted and skip >= total:
                        skip -= total
                        continue
                    if skip >= total and position == len(ordered) - 1:
                        break  # past the end of the last source, whatever the caller sees of it
                accesses, skip = self._read(caller, source.owner, visibility, after, skip, counted,
                                            limit - len(found))
                found += accesses
            if len(found) >= limit:
                break
        return found[:limit]

    def _read(self, caller: _Caller, owner: Account, visibility: str, after: str | None, skip: int,
              counted: bool, wanted: int) -> tuple[list[RepoAccess], int]:
        """Up to ``wanted`` of ``owner``'s repositories the caller sees, in name order, after the name
        ``after``, past the first ``skip`` of them; and how much of ``skip`` is left. When every
        record is seen (``counted``) the store skips them; else the seen ones are counted off."""
        found: list[RepoAccess] = []
        offset, skip = (skip, 0) if counted else (0, skip)
        chunk = max(CHUNK, wanted)
        while len(found) < wanted:
            repos = self.store.list_repos(owner.id, by_name=True, limit=chunk, offset=offset, after=after)
            offset = 0
            if not repos:
                break
            after = fold(repos[-1].name)
            accesses = caller.access(repos, owner, visibility)
            dropped = min(skip, len(accesses))
            skip -= dropped
            found += accesses[dropped:]
            if len(repos) < chunk:
                break
            chunk = min(chunk * 2, MAX_CHUNK)  # deep pages, or a list the caller sees little of
        return found[:wanted], skip
