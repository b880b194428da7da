"""Registered SSH keys: users' keys and repositories' deploy keys, and who a key speaks for.

A key is looked up by its SHA256 fingerprint on every connection, so a deleted key, a suspended
user or a removed deploy key counts on the next connection, on every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from bulwark.clock import Clock
from bulwark.errors import AlreadyExists, InvalidInput, NotFound
from bulwark.models import ALL_SCOPES, Account, Repository, Scope, SshKey
from bulwark.names import check_text
from bulwark.services.keys import parse_public_key
from bulwark.services.permissions import DeployGrant, Principal
from bulwark.store import Store

MAX_TITLE = 200
# A key's last use is written at most this often (each write is a replicated change).
_TOUCH_EVERY = timedelta(minutes=5)
# Git over SSH never carries site-admin powers: an administrator's key pushes like its owner's.
SSH_SCOPES = ALL_SCOPES - {Scope.SITE_ADMIN}


@dataclass(frozen=True)
class Holder:
    """Who a presented key speaks for: a user (perhaps suspended), or a repository's deploy key."""

    key: SshKey
    principal: Principal
    user: Account | None = None
    repo: Repository | None = None

    @property
    def name(self) -> str:
        """How the session greets the holder."""
        if self.user is not None:
            return self.user.login
        return f"deploy key {self.key.title!r}" if self.key.title else f"deploy key {self.key.id}"


class KeyService:
    def __init__(self, store: Store, clock: Clock, *, metadata_writable: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.clock = clock
        self.metadata_writable = metadata_writable

    # -- registering -------------------------------------------------------------------

    def add_user_key(self, user: Account, text: str, *, title: str = "") -> SshKey:
        key = parse_public_key(text)
        return self._create(key.fingerprint, key.algorithm, key.key, _title(title, key.comment), user_id=user.id)

    def add_deploy_key(self, repo: Repository, text: str, *, title: str = "", read_only: bool = True) -> SshKey:
        key = parse_public_key(text)
        return self._create(key.fingerprint, key.algorithm, key.key, _title(title, key.comment), repo_id=repo.id,
                            read_only=read_only)

    def _create(self, fingerprint: str, algorithm: str, key: str, title: str, **owner: object) -> SshKey:
        try:
            return self.store.create_ssh_key(fingerprint=fingerprint, algorithm=algorithm, key=key, title=title,
                                             **owner)  # type: ignore[arg-type]
        except AlreadyExists:
            # GitHub's words; which account holds it is not said.
            raise InvalidInput("key is already in use", field="key") from None

    def user_keys(self, user: Account) -> list[SshKey]:
        return self.store.list_ssh_keys(user_id=user.id)

    def deploy_keys(self, repo: Repository) -> list[SshKey]:
        return self.store.list_ssh_keys(repo_id=repo.id)

    def user_key(self, user: Account, key_id: int) -> SshKey:
        key = self.store.get_ssh_key(key_id)
        if key is None or key.user_id != user.id:
            raise NotFound(f"no key {key_id} of {user.login}")
        return key

    def deploy_key(self, repo: Repository, key_id: int) -> SshKey:
        key = self.store.get_ssh_key(key_id)
        if key is None or key.repo_id != repo.id:
            raise NotFound(f"no deploy key {key_id} on this repository")
        return key

    def remove(self, key: SshKey) -> None:
        self.store.delete_ssh_key(key.id)

    # -- authenticating ----------------------------------------------------------------

    def holder(self, fingerprint: str) -> Holder | None:
        """Who the key with this fingerprint speaks for, or None if it is not registered (or its
        owner is gone). A suspended user is returned as such: the session says so."""
        key = self.store.get_ssh_key_by_fingerprint(fingerprint)
        if key is None:
            return None
        holder: Holder | None
        if key.user_id is not None:
            user = self.store.get_account_by_id(key.user_id)
            holder = None if user is None else Holder(key, Principal(account=user, scopes=SSH_SCOPES), user=user)
        else:
            repo = self.store.get_repo_by_id(key.repo_id) if key.repo_id is not None else None
            grant = DeployGrant(key.id, key.repo_id or 0, write=not key.read_only)
            holder = None if repo is None else Holder(key, Principal(account=None, deploy=grant), repo=repo)
        if holder is not None:
            self._touch(key)
        return holder

    def _touch(self, key: SshKey) -> None:
        now = self.clock.now()
        if (key.last_used_at is None or now - key.last_used_at >= _TOUCH_EVERY) and self.metadata_writable():
            self.store.touch_ssh_key(key.id, now)


def _title(title: str, comment: str) -> str:
    # Like GitHub, a key given without a title is named by its comment.
    return check_text(title.strip() or comment[:MAX_TITLE], resource="Key", field="title", limit=MAX_TITLE)
