"""Accounts (users and organizations) and organization membership in the etcd store."""

from __future__ import annotations

from bulwark.errors import AlreadyExists, NotFound
from bulwark.etcd import KV, Compare, Op
from bulwark.models import Account, AccountType, Membership, OrgRole, Repository
from bulwark.store.etcd.base import _Base
from bulwark.store.etcd.codec import (
    _check_page,
    _corrupt,
    _decode,
    _doc,
    _dump_json,
    _enum,
    _index_id,
    _last_id,
    _load_account,
    _load_repo,
    _load_ssh_key,
    _load_token,
    _optional_text,
    _page,
    _pair,
    _still,
)
from bulwark.store.etcd.keys import _fold


class _Accounts(_Base):
    # -- accounts ----------------------------------------------------------------------

    def _create_account(
        self,
        login: str,
        type: AccountType,
        *,
        name: str,
        email: str,
        site_admin: bool = False,
        password_hash: str | None = None,
        owner_id: int | None = None,
    ) -> Account:
        """Add an account; an organization gets ``owner_id`` as its first owner."""
        keys = self._keys
        counter_key = keys.counter("accounts")
        login_key = keys.login(login)

        def attempt() -> Account:
            if owner_id is None:
                counter, taken = self._read(counter_key, login_key)
                compares: list[Compare] = []
            else:
                owner_key = keys.account(owner_id)
                counter, taken, owner = self._read(counter_key, login_key, owner_key)
                self._require_account(owner, owner_id, AccountType.USER, "owner")
                compares = [Compare.present(owner_key)]
            if taken is not None:
                raise AlreadyExists(f"login {login!r} is already taken")
            account_id = _last_id(counter) + 1
            now = self._now()
            doc = {
                "id": account_id,
                "login": login,
                "type": type.value,
                "name": name,
                "email": email,
                "email_public": False,
                "site_admin": bool(site_admin),
                "suspended": False,
                "password_hash": password_hash,
                "created_at": now,
                "updated_at": now,
            }
            compares += [Compare.absent(login_key), _still(counter_key, counter)]
            ops = [
                Op.put(counter_key, str(account_id)),
                Op.put(keys.account(account_id), _dump_json(doc)),
                Op.put(login_key, str(account_id)),
            ]
            if owner_id is not None:
                ops += [
                    Op.put(keys.membership(account_id, owner_id), OrgRole.OWNER.value),
                    Op.put(keys.membership_index(account_id, owner_id), ""),
                    self._touch_dependents(owner_id),
                ]
            self._commit(compares, ops, f"creating account {login!r}")
            return _load_account(doc)

        return self._retry(f"creating account {login!r}", attempt)

    def create_user(
        self,
        login: str,
        *,
        name: str = "",
        email: str = "",
        site_admin: bool = False,
        password_hash: str | None = None,
    ) -> Account:
        return self._create_account(
            login, AccountType.USER, name=name, email=email, site_admin=site_admin, password_hash=password_hash
        )

    def create_org(self, login: str, *, owner_id: int, name: str = "", email: str = "") -> Account:
        return self._create_account(login, AccountType.ORGANIZATION, name=name, email=email, owner_id=owner_id)

    def get_account(self, login: str) -> Account | None:
        index = self._get(self._keys.login(login))
        if index is None:
            return None
        account = self.get_account_by_id(_index_id(index))
        # The account may have been renamed between the two reads.
        return account if account is not None and _fold(account.login) == _fold(login) else None

    def get_account_by_id(self, account_id: int) -> Account | None:
        kv = self._get(self._keys.account(account_id))
        return None if kv is None else _decode(kv, _load_account)

    def list_accounts(
        self, type: AccountType | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Account]:
        _check_page(limit, offset)
        wanted = None if type is None else _enum(AccountType, type, "type")
        accounts = [_decode(kv, _load_account) for kv in self._range(self._keys.accounts)]
        return _page([a for a in accounts if wanted is None or a.type is wanted], limit, offset)

    def save_account(self, account: Account) -> Account:
        keys = self._keys
        account_key = keys.account(account.id)
        new_login_key = keys.login(account.login)

        def attempt() -> Account:
            current, taken = self._read(account_key, new_login_key)
            if current is None:
                raise NotFound(f"account {account.id} does not exist")
            stored = _decode(current, _load_account)
            doc = _doc(current)
            compares = [Compare.unchanged(account_key, current.mod_revision)]
            ops: list[Op] = []
            old_login_key = keys.login(stored.login)
            if new_login_key != old_login_key:
                if taken is not None:
                    raise AlreadyExists(f"login {account.login!r} is already taken")
                compares.append(Compare.absent(new_login_key))
                ops += [Op.delete(old_login_key), Op.put(new_login_key, str(account.id))]
            doc.update(
                login=account.login,
                name=account.name,
                email=account.email,
                email_public=bool(account.email_public),
                site_admin=bool(account.site_admin),
                suspended=bool(account.suspended),
                updated_at=self._now(),
            )
            ops.append(Op.put(account_key, _dump_json(doc)))
            self._commit(compares, ops, f"saving account {account.id}")
            return _load_account(doc)

        return self._retry(f"saving account {account.id}", attempt)

    def delete_account(self, account_id: int) -> list[Repository]:
        keys = self._keys
        account_key = keys.account(account_id)
        dependents_key = keys.dependents(account_id)

        def attempt() -> list[Repository]:
            # One snapshot of the account and of everything that may depend on it.
            found, dependents, tokens, memberships, collaborations, repo_kvs, ssh_key_kvs = self._snapshot(
                Op.get(account_key),
                Op.get(dependents_key),
                Op.get(keys.tokens, prefix=True),
                Op.get(keys.memberships, prefix=True),
                Op.get(keys.collaborators, prefix=True),
                Op.get(keys.repos, prefix=True),
                Op.get(keys.ssh_keys, prefix=True),
            )
            if not found:
                raise NotFound(f"account {account_id} does not exist")
            account = _decode(found[0], _load_account)
            compares = [
                Compare.unchanged(account_key, found[0].mod_revision),
                _still(dependents_key, dependents[0] if dependents else None),
            ]
            ops = [
                Op.delete(account_key),
                Op.delete(keys.login(account.login)),
                Op.delete(dependents_key),
                # Members of the account, if it is an organization.
                Op.delete(keys.members_of(account_id), prefix=True),
                # The user-side indexes of its memberships and collaborations, if it is a user.
                Op.delete(keys.memberships_of(account_id), prefix=True),
                Op.delete(keys.collaborations_of(account_id), prefix=True),
                Op.delete(keys.tokens_of(account_id), prefix=True),
                Op.delete(keys.ssh_keys_of(account_id), prefix=True),
            ]
            for kv in tokens:
                token = _decode(kv, _load_token)
                if token.user_id == account_id:
                    # Delete the hash index only while it is still this token's.
                    hash_key = keys.token_hash(token.token_hash)
                    compares.append(Compare.value_is(hash_key, str(token.id)))
                    ops += [Op.delete(kv.key), Op.delete(hash_key)]
            # Memberships and collaborations of the account, if it is a user.
            ops += [Op.delete(kv.key) for kv in memberships if _pair(kv, keys.memberships)[1] == account_id]
            ops += [Op.delete(kv.key) for kv in collaborations if _pair(kv, keys.collaborators)[1] == account_id]
            # The members' side of an organization's memberships.
            ops += [Op.delete(keys.membership_index(org, user))
                    for org, user in (_pair(kv, keys.memberships) for kv in memberships) if org == account_id]
            repos = []
            for kv in repo_kvs:
                repo = _decode(kv, _load_repo)
                if repo.owner_id == account_id:
                    # Unchanged, so its index keys are the ones removed here.
                    compares.append(Compare.unchanged(kv.key, kv.mod_revision))
                    collaborators = [user for repo_id, user in (_pair(c, keys.collaborators) for c in collaborations)
                                     if repo_id == repo.id]
                    ops += self._repo_removal(repo, collaborators)
                    repos.append(repo)
            # The user's own keys, and the deploy keys of the repositories removed with the account (their
            # index entries go by prefix above).
            removed = {repo.id for repo in repos}
            for kv in ssh_key_kvs:
                key = _decode(kv, _load_ssh_key)
                if key.user_id == account_id or key.repo_id in removed:
                    compares.append(self._still_fingerprint_of(key))
                    ops += [Op.delete(kv.key), Op.delete(keys.ssh_fingerprint(key.fingerprint))]
            self._commit(compares, ops, f"deleting account {account_id}")
            return repos

        return self._retry(f"deleting account {account_id}", attempt)

    def get_password_hash(self, user_id: int) -> str | None:
        kv = self._get(self._keys.account(user_id))
        if kv is None:
            return None
        doc = _doc(kv)
        if doc.get("type") != AccountType.USER.value:
            return None
        try:
            return _optional_text(doc, "password_hash")
        except ValueError as exc:
            raise _corrupt(kv, exc) from None

    def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        account_key = self._keys.account(user_id)

        def attempt() -> None:
            current = self._require_account(self._get(account_key), user_id, AccountType.USER, "user")
            doc = _doc(current)
            doc.update(password_hash=password_hash, updated_at=self._now())
            self._commit(
                [Compare.unchanged(account_key, current.mod_revision)],
                [Op.put(account_key, _dump_json(doc))],
                f"setting the password of user {user_id}",
            )

        self._retry(f"setting the password of user {user_id}", attempt)

    # -- organization membership -------------------------------------------------------

    def _load_membership(self, kv: KV) -> Membership:
        org_id, user_id = _pair(kv, self._keys.memberships)
        try:
            role = OrgRole(kv.text)
        except ValueError as exc:
            raise _corrupt(kv, exc) from None
        return Membership(org_id=org_id, user_id=user_id, role=role)

    def set_membership(self, org_id: int, user_id: int, role: OrgRole) -> Membership:
        role = _enum(OrgRole, role, "role")
        org_key = self._keys.account(org_id)
        user_key = self._keys.account(user_id)

        def attempt() -> Membership:
            org, user = self._read(org_key, user_key)
            self._require_account(org, org_id, AccountType.ORGANIZATION, "organization")
            self._require_account(user, user_id, AccountType.USER, "user")
            self._commit(
                [Compare.present(org_key), Compare.present(user_key)],
                [
                    Op.put(self._keys.membership(org_id, user_id), role.value),
                    Op.put(self._keys.membership_index(org_id, user_id), ""),
                    self._touch_dependents(org_id),
                    self._touch_dependents(user_id),
                ],
                f"setting the membership of user {user_id} in organization {org_id}",
            )
            return Membership(org_id=org_id, user_id=user_id, role=role)

        return self._retry(f"setting the membership of user {user_id} in organization {org_id}", attempt)

    def remove_membership(self, org_id: int, user_id: int) -> bool:
        self._unloggable()
        key = self._keys.membership(org_id, user_id)
        result = self._client().txn(
            [], [Op.get(key), Op.delete(key), Op.delete(self._keys.membership_index(org_id, user_id))]
        )
        return bool(result.reads[0])

    def get_membership(self, org_id: int, user_id: int) -> Membership | None:
        kv = self._get(self._keys.membership(org_id, user_id))
        return None if kv is None else self._load_membership(kv)

    def list_members(self, org_id: int, role: OrgRole | None = None) -> list[Membership]:
        wanted = None if role is None else _enum(OrgRole, role, "role")
        members = [self._load_membership(kv) for kv in self._range(self._keys.members_of(org_id))]
        return [m for m in members if wanted is None or m.role is wanted]

    def list_memberships_of(self, user_id: int) -> list[Membership]:
        # From the user's side of the index, then the records, which are the truth (an index key
        # left behind by a removal that raced another write points at nothing and is skipped).
        self._ensure_indexes()
        orgs = [_pair(kv, self._keys.member_of)[1] for kv in self._range(self._keys.memberships_of(user_id))]
        found = self._read_many([self._keys.membership(org, user_id) for org in orgs])
        return [self._load_membership(kv) for kv in found if kv is not None]
