"""Every key of the etcd store, and how ids and names become key text."""

from __future__ import annotations

import string

from bulwark.models import SshKey

# Wide enough for any id this store will hand out; fixed width keeps key order = id order.
ID_WIDTH = 12

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _pad(record_id: int) -> str:
    return f"{record_id:0{ID_WIDTH}d}"


def _fold(text: str) -> str:
    """``text`` as compared for uniqueness: lower case, ASCII letters only."""
    return text.translate(_ASCII_LOWER)


class _Keys:
    """Every key of the store, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.accounts = prefix + "accounts/"
        self.logins = prefix + "logins/"
        self.dependents_of = prefix + "dependents/"
        self.tokens = prefix + "tokens/"
        self.token_hashes = prefix + "token-hashes/"
        self.memberships = prefix + "memberships/"
        self.repos = prefix + "repos/"
        self.repo_names = prefix + "repo-names/"
        self.storage_ids = prefix + "storage-ids/"
        self.collaborators = prefix + "collaborators/"
        self.member_of = prefix + "member-of/"
        self.collaborates = prefix + "collaborates/"
        self.tokens_by_user = prefix + "tokens-of/"
        self.ssh_keys = prefix + "ssh-keys/"
        self.ssh_fingerprints = prefix + "ssh-fingerprints/"
        self.ssh_keys_by_user = prefix + "ssh-keys-of/"
        self.deploy_keys_by_repo = prefix + "deploy-keys-of/"
        self.repo_dependents_of = prefix + "repo-dependents/"
        self.host_keys = prefix + "ssh-host-keys/"
        self.indexes = prefix + "indexes"
        self.settings = prefix + "settings/"
        self.maintenance = prefix + "maintenance"
        self.seq = prefix + "seq/"

    def account(self, account_id: int) -> str:
        return self.accounts + _pad(account_id)

    def login(self, login: str) -> str:
        return self.logins + _fold(login)

    def dependents(self, account_id: int) -> str:
        return self.dependents_of + _pad(account_id)

    def token(self, token_id: int) -> str:
        return self.tokens + _pad(token_id)

    def token_hash(self, token_hash: str) -> str:
        return self.token_hashes + token_hash

    def tokens_of(self, user_id: int) -> str:
        return f"{self.tokens_by_user}{_pad(user_id)}/"

    def token_index(self, user_id: int, token_id: int) -> str:
        return self.tokens_of(user_id) + _pad(token_id)

    def members_of(self, org_id: int) -> str:
        return f"{self.memberships}{_pad(org_id)}/"

    def membership(self, org_id: int, user_id: int) -> str:
        return self.members_of(org_id) + _pad(user_id)

    def repo(self, repo_id: int) -> str:
        return self.repos + _pad(repo_id)

    def repo_name(self, owner_id: int, name: str) -> str:
        return self.repos_named_by(owner_id) + _fold(name)

    def repos_named_by(self, owner_id: int) -> str:
        return f"{self.repo_names}{_pad(owner_id)}/"

    def storage_id(self, storage_id: str) -> str:
        return self.storage_ids + storage_id

    def memberships_of(self, user_id: int) -> str:
        return f"{self.member_of}{_pad(user_id)}/"

    def membership_index(self, org_id: int, user_id: int) -> str:
        return self.memberships_of(user_id) + _pad(org_id)

    def collaborations_of(self, user_id: int) -> str:
        return f"{self.collaborates}{_pad(user_id)}/"

    def collaboration_index(self, repo_id: int, user_id: int) -> str:
        return self.collaborations_of(user_id) + _pad(repo_id)

    def collaborators_of(self, repo_id: int) -> str:
        return f"{self.collaborators}{_pad(repo_id)}/"

    def collaborator(self, repo_id: int, user_id: int) -> str:
        return self.collaborators_of(repo_id) + _pad(user_id)

    def ssh_key(self, key_id: int) -> str:
        return self.ssh_keys + _pad(key_id)

    def ssh_fingerprint(self, fingerprint: str) -> str:
        return self.ssh_fingerprints + fingerprint

    def ssh_keys_of(self, user_id: int) -> str:
        return f"{self.ssh_keys_by_user}{_pad(user_id)}/"

    def deploy_keys_of(self, repo_id: int) -> str:
        return f"{self.deploy_keys_by_repo}{_pad(repo_id)}/"

    def ssh_key_index(self, key: SshKey) -> str:
        """The key's entry in its user's or its repository's index."""
        if key.user_id is not None:
            return self.ssh_keys_of(key.user_id) + _pad(key.id)
        assert key.repo_id is not None
        return self.deploy_keys_of(key.repo_id) + _pad(key.id)

    def repo_dependents(self, repo_id: int) -> str:
        return self.repo_dependents_of + _pad(repo_id)

    def host_key(self, algorithm: str) -> str:
        return self.host_keys + algorithm

    def setting(self, key: str) -> str:
        return self.settings + key

    def counter(self, kind: str) -> str:
        return self.seq + kind
