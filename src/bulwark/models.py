"""Value types shared by every layer: frozen, comparable, no behaviour."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class AccountType(enum.StrEnum):
    USER = "User"
    ORGANIZATION = "Organization"


class Permission(enum.IntEnum):
    """Access levels on a repository, ordered so that ``>=`` means "at least"."""

    NONE = 0
    PULL = 1
    PUSH = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return {0: "none", 1: "read", 2: "write", 3: "admin"}[self.value]

    @classmethod
    def parse(cls, text: str) -> Permission:
        aliases = {
            "pull": cls.PULL,
            "read": cls.PULL,
            "push": cls.PUSH,
            "write": cls.PUSH,
            "admin": cls.ADMIN,
        }
        try:
            return aliases[text.lower()]
        except KeyError:
            raise ValueError(f"unknown permission {text!r}: use pull, push or admin") from None


class OrgRole(enum.StrEnum):
    MEMBER = "member"
    OWNER = "admin"


class Visibility(enum.StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


class Scope(enum.StrEnum):
    """Token scopes, named as GitHub names them."""

    REPO = "repo"
    PUBLIC_REPO = "public_repo"
    DELETE_REPO = "delete_repo"
    READ_ORG = "read:org"
    ADMIN_ORG = "admin:org"
    USER = "user"
    SITE_ADMIN = "site_admin"


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True)
class Account:
    """A user or an organization: both own repositories and share one namespace."""

    id: int
    login: str
    type: AccountType
    name: str = ""
    email: str = ""
    # Whether everyone may see ``email``; otherwise only the account itself and site administrators.
    email_public: bool = False
    site_admin: bool = False
    suspended: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_org(self) -> bool:
        return self.type is AccountType.ORGANIZATION


@dataclass(frozen=True)
class Token:
    id: int
    user_id: int
    note: str
    token_hash: str
    token_prefix: str
    scopes: frozenset[Scope]
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    # A log-out from the status page: its sessions issued until then have ended (services/sessions.py).
    sessions_ended_at: datetime | None = None


@dataclass(frozen=True)
class Membership:
    org_id: int
    user_id: int
    role: OrgRole


@dataclass(frozen=True)
class Repository:
    """A repository's metadata. ``storage_id`` names its directory and never changes."""

    id: int
    owner_id: int
    name: str
    storage_id: str
    visibility: Visibility = Visibility.PUBLIC
    description: str = ""
    default_branch: str = "main"
    allow_force_push: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None
    pushed_at: datetime | None = None

    @property
    def private(self) -> bool:
        return self.visibility is Visibility.PRIVATE


@dataclass(frozen=True)
class Collaborator:
    repo_id: int
    user_id: int
    permission: Permission


@dataclass(frozen=True)
class MaintenanceState:
    enabled: bool
    message: str = ""
    since: datetime | None = None


@dataclass(frozen=True)
class SshKey:
    """A public key that authenticates git over SSH: a user's, or a repository's deploy key."""

    id: int
    fingerprint: str  # "SHA256:..." as ssh-keygen -lf prints it; unique across the whole site
    algorithm: str  # e.g. "ssh-ed25519"
    key: str  # "ssh-ed25519 AAAA..." (type and base64, no comment)
    title: str
    user_id: int | None  # set for a user's key
    repo_id: int | None  # set for a deploy key (exactly one of user_id / repo_id is set)
    read_only: bool  # deploy keys: True unless given write access; user keys: False
    created_at: datetime
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class HostKey:
    """The server's own SSH private key for one algorithm, the same on every node."""

    algorithm: str  # "ssh-ed25519", "rsa-sha2-512"/"ssh-rsa", "ecdsa-sha2-nistp256"
    private_key: str  # OpenSSH PEM text
    created_at: datetime
