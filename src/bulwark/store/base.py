"""The metadata store interface.

Every backend (SQLite for standalone and HA, etcd for clustering) implements
:class:`Store`, and ``tests/support/store_contract.py`` is the one test suite that every
backend must pass. The contract:

* Every method is one atomic operation: it either happens entirely or not at all.
  A method that changes several records (``create_org`` adds the owner,
  ``delete_account`` removes tokens, SSH keys, memberships and repositories) does so
  in one transaction.
* Logins are unique across users and organizations, compared case-insensitively;
  repository names are unique per owner, case-insensitively; SSH key fingerprints are
  unique across the whole site (user keys and deploy keys alike), compared exactly. A
  clash raises :class:`~bulwark.errors.AlreadyExists`, whichever writer loses a race.
* ``save_*`` methods are compare-nothing overwrites of the mutable fields of a
  record that must exist (else :class:`~bulwark.errors.NotFound`); they return the
  stored record with ``updated_at`` refreshed.
* Getters return ``None`` for a missing record; they never raise ``NotFound``.
* Lists are ordered by id (creation order) and take ``limit``/``offset`` so that
  the HTTP layer can paginate.
* Values are the frozen types of :mod:`bulwark.models`; no backend type leaks out.
* No SQL (or etcd key) exists outside the backend's own module.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from bulwark.models import (
    Account,
    AccountType,
    Collaborator,
    HostKey,
    MaintenanceState,
    Membership,
    OrgRole,
    Permission,
    Repository,
    Scope,
    SshKey,
    Token,
    Visibility,
)


class Store(abc.ABC):
    """Metadata of one Bulwark instance: accounts, tokens, repositories, settings."""

    # -- lifecycle -----------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store may not be used afterwards."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Several calls of this thread as one transaction, where the backend can (SQLite);
        elsewhere each call stays its own."""
        yield

    # -- accounts ------------------------------------------------------------------

    @abc.abstractmethod
    def create_user(
        self,
        login: str,
        *,
        name: str = "",
        email: str = "",
        site_admin: bool = False,
        password_hash: str | None = None,
    ) -> Account:
        """Add a user. Raises ``AlreadyExists`` if any account has this login."""

    @abc.abstractmethod
    def create_org(self, login: str, *, owner_id: int, name: str = "", email: str = "") -> Account:
        """Add an organization whose first owner is ``owner_id`` (a user), atomically."""

    @abc.abstractmethod
    def get_account(self, login: str) -> Account | None:
        """The user or organization with this login, matched case-insensitively."""

    @abc.abstractmethod
    def get_account_by_id(self, account_id: int) -> Account | None: ...

    @abc.abstractmethod
    def list_accounts(
        self, type: AccountType | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Account]: ...

    @abc.abstractmethod
    def save_account(self, account: Account) -> Account:
        """Store login, name, email, email_public, site_admin and suspended of an existing account.

        A login change that clashes with another account raises ``AlreadyExists``.
        """

    @abc.abstractmethod
    def delete_account(self, account_id: int) -> list[Repository]:
        """Remove an account with its tokens, SSH keys, memberships, collaborations and
        repositories (with their deploy keys); return the removed repositories so their
        data can be deleted."""

    @abc.abstractmethod
    def get_password_hash(self, user_id: int) -> str | None: ...

    @abc.abstractmethod
    def set_password_hash(self, user_id: int, password_hash: str | None) -> None: ...

    # -- tokens --------------------------------------------------------------------

    @abc.abstractmethod
    def create_token(
        self,
        user_id: int,
        *,
        token_hash: str,
        token_prefix: str,
        scopes: Iterable[Scope],
        note: str = "",
        expires_at: datetime | None = None,
    ) -> Token:
        """Store a token by its hash; the secret itself never reaches the store."""

    @abc.abstractmethod
    def get_token_by_hash(self, token_hash: str) -> Token | None: ...

    @abc.abstractmethod
    def list_tokens(self, user_id: int) -> list[Token]: ...

    @abc.abstractmethod
    def delete_token(self, token_id: int) -> bool:
        """Remove a token; ``False`` if there was none."""

    @abc.abstractmethod
    def touch_token(self, token_id: int, when: datetime) -> None:
        """Record that the token was used at ``when``."""

    @abc.abstractmethod
    def end_token_sessions(self, token_id: int, when: datetime) -> None:
        """Record a log-out at ``when``: the token's status-page sessions issued until then end.
        Replicated with the token, so a log-out holds on every node."""

    # -- organization membership ---------------------------------------------------

    @abc.abstractmethod
    def set_membership(self, org_id: int, user_id: int, role: OrgRole) -> Membership:
        """Add a member or change their role (an upsert)."""

    @abc.abstractmethod
    def remove_membership(self, org_id: int, user_id: int) -> bool: ...

    @abc.abstractmethod
    def get_membership(self, org_id: int, user_id: int) -> Membership | None: ...

    @abc.abstractmethod
    def list_members(self, org_id: int, role: OrgRole | None = None) -> list[Membership]: ...

    @abc.abstractmethod
    def list_memberships_of(self, user_id: int) -> list[Membership]:
        """Every organization the user belongs to."""

    # -- repositories --------------------------------------------------------------

    @abc.abstractmethod
    def create_repo(
        self,
        owner_id: int,
        name: str,
        *,
        storage_id: str,
        visibility: Visibility = Visibility.PUBLIC,
        description: str = "",
        default_branch: str = "main",
    ) -> Repository:
        """Add a repository. ``AlreadyExists`` if the owner has one of that name."""

    @abc.abstractmethod
    def get_repo(self, owner_id: int, name: str) -> Repository | None:
        """Matched case-insensitively on the name."""

    @abc.abstractmethod
    def get_repo_by_id(self, repo_id: int) -> Repository | None: ...

    @abc.abstractmethod
    def get_repos(self, repo_ids: Sequence[int]) -> list[Repository]:
        """Those of ``repo_ids`` that exist, in the order asked (a missing one is left out)."""

    @abc.abstractmethod
    def get_repo_by_storage_id(self, storage_id: str) -> Repository | None:
        """By the name of its data on disk (how replicas and nodes fetch it)."""

    @abc.abstractmethod
    def list_repos(
        self,
        owner_id: int | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        by_name: bool = False,
        after: str | None = None,
    ) -> list[Repository]:
        """Repositories of one owner, or of everyone when ``owner_id`` is None, in id order; or, with
        ``by_name`` (one owner's only), in the order of their names, ASCII case folded, starting
        after the name ``after`` when it is given (a cursor: the last name of the previous page)."""

    @abc.abstractmethod
    def count_repos(self, owner_id: int) -> int:
        """How many repositories ``owner_id`` has, without reading them."""

    @abc.abstractmethod
    def save_repo(self, repo: Repository) -> Repository:
        """Store owner, name, visibility, description, default branch, force-push
        rule and pushed_at. A rename or transfer onto a taken name raises
        ``AlreadyExists``. ``storage_id`` never changes."""

    @abc.abstractmethod
    def delete_repo(self, repo_id: int) -> bool:
        """Remove a repository with its collaborators and deploy keys; ``False`` if there was none."""

    # -- collaborators -------------------------------------------------------------

    @abc.abstractmethod
    def set_collaborator(self, repo_id: int, user_id: int, permission: Permission) -> Collaborator:
        """Add a collaborator or change their permission (an upsert)."""

    @abc.abstractmethod
    def remove_collaborator(self, repo_id: int, user_id: int) -> bool: ...

    @abc.abstractmethod
    def get_collaborator(self, repo_id: int, user_id: int) -> Collaborator | None: ...

    @abc.abstractmethod
    def list_collaborators(self, repo_id: int) -> list[Collaborator]: ...

    @abc.abstractmethod
    def list_collaborations_of(self, user_id: int) -> list[Collaborator]:
        """Every repository on which the user is a collaborator."""

    # -- SSH keys ------------------------------------------------------------------

    @abc.abstractmethod
    def create_ssh_key(
        self,
        *,
        fingerprint: str,
        algorithm: str,
        key: str,
        title: str,
        user_id: int | None = None,
        repo_id: int | None = None,
        read_only: bool = False,
    ) -> SshKey:
        """Add a user's key (``user_id``) or a repository's deploy key (``repo_id``).

        Exactly one of the two is given (else ``ValueError``), and it must exist (else
        ``NotFound``; a ``user_id`` of an organization is ``InvalidInput``). A fingerprint
        registered anywhere on the site raises ``AlreadyExists``. ``read_only`` is kept
        for deploy keys only; a user's key is stored with ``False``. The key is stored as
        given: checking it is the caller's job.
        """

    @abc.abstractmethod
    def get_ssh_key(self, key_id: int) -> SshKey | None: ...

    @abc.abstractmethod
    def get_ssh_key_by_fingerprint(self, fingerprint: str) -> SshKey | None:
        """The key an SSH connection offers, by one indexed lookup (every connection asks)."""

    @abc.abstractmethod
    def list_ssh_keys(self, *, user_id: int | None = None, repo_id: int | None = None) -> list[SshKey]:
        """A user's keys or a repository's deploy keys (exactly one of the two, else
        ``ValueError``), in id order."""

    @abc.abstractmethod
    def delete_ssh_key(self, key_id: int) -> bool:
        """Remove a key; ``False`` if there was none."""

    @abc.abstractmethod
    def touch_ssh_key(self, key_id: int, when: datetime) -> None:
        """Record that the key was used at ``when`` (never moving back); a missing key is ignored."""

    # -- SSH host keys ---------------------------------------------------------------

    @abc.abstractmethod
    def get_ssh_host_keys(self) -> list[HostKey]:
        """The server's host keys, ordered by algorithm."""

    @abc.abstractmethod
    def add_ssh_host_key(self, algorithm: str, private_key: str) -> HostKey:
        """Store the host key of ``algorithm`` unless there is one: the first writer wins,
        atomically, and every caller gets the stored key back (so nodes starting at once
        all end up with the same one)."""

    # -- node settings -------------------------------------------------------------

    @abc.abstractmethod
    def get_maintenance(self) -> MaintenanceState: ...

    @abc.abstractmethod
    def set_maintenance(self, state: MaintenanceState) -> None: ...

    @abc.abstractmethod
    def get_setting(self, key: str) -> str | None:
        """A small named value of the instance (for example the replication epoch)."""

    @abc.abstractmethod
    def set_setting(self, key: str, value: str | None) -> None:
        """Set a value, or remove it with ``None``."""
