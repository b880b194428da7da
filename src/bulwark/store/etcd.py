"""The etcd metadata store, for cluster nodes.

Every node of a cluster opens an :class:`EtcdStore` on the same etcd cluster, so all
of them share one set of accounts, tokens and repositories, and a write made through
one node is seen by the next read on any other (etcd reads are linearizable).

Key layout, under the store's prefix (``/bulwark/store/`` by default). ``<id>`` is a
decimal id zero-padded to 12 digits, so that a range read returns records in id
order; index values are plain decimal ids::

    accounts/<id>                         the account as JSON, with its password hash
    logins/<folded login>                 -> account id; users and orgs share this namespace
    dependents/<account id>               empty; rewritten by every write that adds a record
                                          depending on the account (see below)
    tokens/<id>                           the token as JSON
    token-hashes/<token hash>             -> token id
    memberships/<org id>/<user id>        the role
    repos/<id>                            the repository as JSON
    repo-names/<owner id>/<folded name>   -> repository id
    storage-ids/<storage id>              -> repository id
    collaborators/<repo id>/<user id>     the permission, as its number
    member-of/<user id>/<org id>          (empty) a membership, found from the user's side
    collaborates/<user id>/<repo id>      (empty) a collaboration, found from the user's side
    indexes                               which of the indexes above existing data has
    ssh-keys/<id>                         the SSH key (a user's or a deploy key) as JSON
    ssh-fingerprints/<fingerprint>        -> SSH key id; one namespace for the whole site
    ssh-keys-of/<user id>/<key id>        (empty) a user's key, found from the user's side
    deploy-keys-of/<repo id>/<key id>     (empty) a deploy key, found from the repository's side
    repo-dependents/<repo id>             empty; rewritten by every write that adds a deploy key
    ssh-host-keys/<algorithm>             the server's host key of that algorithm as JSON
    settings/<key>                        the value, as given
    maintenance                           the maintenance state as JSON
    seq/<kind>                            the last id handed out (kinds: accounts, tokens, repos, ssh-keys)

Logins and repository names are folded to lower case in ASCII only, as SQLite's
``COLLATE NOCASE`` does, so both backends agree on what clashes.

How writes stay atomic: a write method reads what its decision depends on, decides,
and commits all its changes in ONE transaction whose compares say "nothing I relied
on has changed": ``Compare.absent`` on the index keys it claims (so two nodes racing
for a login or a name cannot both win), ``Compare.unchanged`` on the mod revision of
the records it rewrites and of the id counter it increments, ``Compare.present`` on
the parents it attaches to. When another writer got in between, the transaction does
nothing and the method starts over from the read, now seeing that writer's change;
this is how the loser of a race gets ``AlreadyExists``. It gives up with ``Conflict``
after ``MAX_ATTEMPTS`` collisions in a row.

Additions cannot be detected by comparing keys that already exist, so every write
that adds a record depending on an account (a token, a membership on either side, a
collaboration, a repository it owns or receives) also rewrites the account's
``dependents`` key, and ``delete_account`` compares that key: a dependent added after
``delete_account`` read the account's records makes it start over instead of leaving
an orphan behind. A deploy key depends on its repository and on the repository's owner:
adding one rewrites the repository's ``repo-dependents`` key, which ``delete_repo``
compares, and the owner's ``dependents`` key, which ``delete_account`` compares.

Transaction size: etcd refuses a transaction with more than ``--max-txn-ops``
comparisons or requests (128 by default; Bulwark's clusters start etcd with 4096).
Only ``delete_account`` grows with the data (about two requests per token, SSH key,
membership and collaboration and six per repository of the account). It is never split into
several transactions, as that would give up its atomicity: above ``max_txn_ops`` it
raises :class:`~bulwark.errors.StoreError` without changing anything, and if etcd's
own limit is lower than ``max_txn_ops`` etcd refuses the transaction as a whole.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import random
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from bulwark.clock import Clock, SystemClock
from bulwark.errors import AlreadyExists, Conflict, InvalidInput, NotFound, StoreError
from bulwark.etcd import KV, Compare, Etcd, Op, prefix_end
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
from bulwark.store.base import Store
from bulwark.store.times import dump_optional_time as _dump_optional_time
from bulwark.store.times import dump_time as _dump_time

log = logging.getLogger("bulwark.store")

DEFAULT_PREFIX = "/bulwark/store/"

# The most comparisons or requests this store puts in one transaction; match it to
# etcd's --max-txn-ops.
MAX_TXN_OPS = 4096
# The version of the user-side indexes (``indexes`` key): written once their keys exist for all data.
# 1: memberships and collaborations; 2: and tokens.
INDEXES = "2"

# How many times a write starts over after colliding with concurrent writers.
MAX_ATTEMPTS = 64
# Repository ids a store reserves at a time (see EtcdStore._next_repo_id).
REPO_ID_BLOCK = 32

# Wide enough for any id this store will hand out; fixed width keeps key order = id order.
ID_WIDTH = 12

_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class _Collided(Exception):
    """A transaction's compares failed: another writer changed what it relied on."""


# -- keys ----------------------------------------------------------------------------


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


# -- value conversion --------------------------------------------------------------


def _load_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"a time must be text, not {text!r}")
    return datetime.fromisoformat(text).astimezone(UTC)


def _load_optional_time(text: object) -> datetime | None:
    return None if text is None else _load_time(text)


def _enum(kind: type[_E], value: object, field: str) -> _E:
    """``value`` as a member of ``kind``; a plain value from a caller is accepted."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(f"invalid {field} {value!r}", field=field) from None


def _dump_scopes(scopes: Iterable[Scope]) -> list[str]:
    return sorted({_enum(Scope, scope, "scope").value for scope in scopes})


def _dump_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _text(doc: dict[str, Any], field: str) -> str:
    value = doc[field]
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text")
    return value


def _optional_text(doc: dict[str, Any], field: str) -> str | None:
    return None if doc.get(field) is None else _text(doc, field)


def _int(doc: dict[str, Any], field: str) -> int:
    value = doc[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer")
    return value


def _flag(doc: dict[str, Any], field: str) -> bool:
    value = doc[field]
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false")
    return value


def _load_account(doc: dict[str, Any]) -> Account:
    return Account(
        id=_int(doc, "id"),
        login=_text(doc, "login"),
        type=AccountType(doc["type"]),
        name=_text(doc, "name"),
        email=_text(doc, "email"),
        # Accounts written before the field existed keep their email private.
        email_public=_flag(doc, "email_public") if "email_public" in doc else False,
        site_admin=_flag(doc, "site_admin"),
        suspended=_flag(doc, "suspended"),
        created_at=_load_time(doc["created_at"]),
        updated_at=_load_time(doc["updated_at"]),
    )


def _load_token(doc: dict[str, Any]) -> Token:
    scopes = doc["scopes"]
    if not isinstance(scopes, list):
        raise ValueError("scopes must be a list")
    return Token(
        id=_int(doc, "id"),
        user_id=_int(doc, "user_id"),
        note=_text(doc, "note"),
        token_hash=_text(doc, "token_hash"),
        token_prefix=_text(doc, "token_prefix"),
        scopes=frozenset(Scope(scope) for scope in scopes),
        created_at=_load_time(doc["created_at"]),
        expires_at=_load_optional_time(doc.get("expires_at")),
        last_used_at=_load_optional_time(doc.get("last_used_at")),
        sessions_ended_at=_load_optional_time(doc.get("sessions_ended_at")),
    )


def _load_repo(doc: dict[str, Any]) -> Repository:
    return Repository(
        id=_int(doc, "id"),
        owner_id=_int(doc, "owner_id"),
        name=_text(doc, "name"),
        storage_id=_text(doc, "storage_id"),
        visibility=Visibility(doc["visibility"]),
        description=_text(doc, "description"),
        default_branch=_text(doc, "default_branch"),
        allow_force_push=_flag(doc, "allow_force_push"),
        created_at=_load_time(doc["created_at"]),
        updated_at=_load_time(doc["updated_at"]),
        pushed_at=_load_optional_time(doc.get("pushed_at")),
    )


def _optional_int(doc: dict[str, Any], field: str) -> int | None:
    return None if doc.get(field) is None else _int(doc, field)


def _load_ssh_key(doc: dict[str, Any]) -> SshKey:
    return SshKey(
        id=_int(doc, "id"),
        fingerprint=_text(doc, "fingerprint"),
        algorithm=_text(doc, "algorithm"),
        key=_text(doc, "key"),
        title=_text(doc, "title"),
        user_id=_optional_int(doc, "user_id"),
        repo_id=_optional_int(doc, "repo_id"),
        read_only=_flag(doc, "read_only"),
        created_at=_load_time(doc["created_at"]),
        last_used_at=_load_optional_time(doc.get("last_used_at")),
    )


def _load_host_key(doc: dict[str, Any]) -> HostKey:
    return HostKey(
        algorithm=_text(doc, "algorithm"),
        private_key=_text(doc, "private_key"),
        created_at=_load_time(doc["created_at"]),
    )


def _corrupt(kv: KV, exc: Exception) -> StoreError:
    return StoreError(f"the metadata store has a corrupt record at {kv.key}: {exc}")


def _doc(kv: KV) -> dict[str, Any]:
    """The JSON object stored at ``kv``."""
    try:
        doc = json.loads(kv.value)
    except ValueError as exc:
        raise _corrupt(kv, exc) from None
    if not isinstance(doc, dict):
        raise _corrupt(kv, ValueError("not a JSON object"))
    return doc


def _decode(kv: KV, load: Callable[[dict[str, Any]], _T]) -> _T:
    """The model stored at ``kv``, or ``StoreError`` if the record is damaged."""
    doc = _doc(kv)
    try:
        return load(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(kv, exc) from None


def _index_id(kv: KV) -> int:
    """The record id an index key points to."""
    try:
        return int(kv.text)
    except ValueError as exc:
        raise _corrupt(kv, exc) from None


def _pair(kv: KV, prefix: str) -> tuple[int, int]:
    """The two ids of a ``<prefix><id>/<id>`` key (memberships, collaborators)."""
    try:
        first, second = kv.key.removeprefix(prefix).split("/")
        return int(first), int(second)
    except ValueError as exc:
        raise _corrupt(kv, exc) from None


def _last_id(counter: KV | None) -> int:
    return 0 if counter is None else _index_id(counter)


def _still(key: str, kv: KV | None) -> Compare:
    """The key is as it was read: still missing, or not written since."""
    return Compare.absent(key) if kv is None else Compare.unchanged(key, kv.mod_revision)


def _check_page(limit: int | None, offset: int) -> None:
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must not be negative, got {limit}", field="limit")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, got {offset}", field="offset")


def _check_after(owner_id: int | None, by_name: bool, after: str | None) -> None:
    if by_name and owner_id is None:
        raise InvalidInput("repositories are listed by name for one owner only")
    if after is not None and not by_name:
        raise InvalidInput("after is a name: it needs the list in name order")


def _page(items: list[_T], limit: int | None, offset: int) -> list[_T]:
    return items[offset:] if limit is None else items[offset : offset + limit]


def _backoff(attempt: int) -> None:
    """A short random pause, growing with the attempt, so colliding writers spread out."""
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


# -- the store ---------------------------------------------------------------------


class ReadLog:
    """The keys a computation read and the revision each was last written at (0: absent).

    ``usable`` turns false when the computation did anything a set of keys cannot describe
    (a prefix read, a write): its result then cannot be checked with :meth:`EtcdStore.unchanged`.
    """

    def __init__(self) -> None:
        self.reads: dict[str, int] = {}
        self.usable = True


class EtcdStore(Store):
    """Bulwark metadata in etcd, shared by every node of a cluster.

    The caller owns ``etcd``: :meth:`close` leaves it open.
    """

    def __init__(
        self,
        etcd: Etcd,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock | None = None,
        max_txn_ops: int = MAX_TXN_OPS,
    ) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"the store prefix must end with '/', got {prefix!r}")
        if max_txn_ops < 1:
            raise ValueError(f"max_txn_ops must be positive, got {max_txn_ops}")
        self._etcd = etcd
        self._keys = _Keys(prefix)
        self._clock: Clock = clock or SystemClock()
        self._max_txn_ops = max_txn_ops
        self._closed = False
        self._logs = threading.local()
        self._indexed = False
        self._ids_lock = threading.Lock()
        self._ids = (0, 0)  # the next repository id of this store's block, and the block's end

    def close(self) -> None:
        self._closed = True

    # -- for the store's companions on the same etcd (webhooks/store_etcd.py) ------------

    @property
    def etcd(self) -> Etcd:
        return self._client()

    @property
    def max_txn_ops(self) -> int:
        return self._max_txn_ops

    def key(self, suffix: str) -> str:
        """``suffix`` under the store's prefix."""
        return self._keys.prefix + suffix

    def now(self) -> str:
        return self._now()

    def commit(self, compares: list[Compare], ops: list[Op], what: str) -> None:
        """Apply ``ops`` if every comparison holds; else the attempt run by :meth:`retry` starts over."""
        self._commit(compares, ops, what)

    def retry(self, what: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (read, decide, :meth:`commit`) until its commit is not pre-empted."""
        return self._retry(what, attempt)

    # -- etcd access -------------------------------------------------------------------

    def _client(self) -> Etcd:
        if self._closed:
            raise StoreError("the metadata store is closed")
        return self._etcd

    # -- which keys a computation read (for results kept while those keys are unchanged) --

    @contextlib.contextmanager
    def logging_reads(self) -> Iterator[ReadLog]:
        """Note every key this thread reads until the block ends."""
        log, outer = ReadLog(), getattr(self._logs, "current", None)
        self._logs.current = log
        try:
            yield log
        finally:
            self._logs.current = outer

    def unchanged(self, log: ReadLog) -> bool:
        """Whether every key of ``log`` is still as it was read: one etcd transaction of comparisons."""
        if not log.usable or not log.reads or len(log.reads) > self._max_txn_ops:
            return False
        compares = [Compare.unchanged(key, revision) for key, revision in log.reads.items()]
        return self._client().txn(compares, []).succeeded

    def _note(self, key: str, kv: KV | None) -> None:
        log: ReadLog | None = getattr(self._logs, "current", None)
        if log is not None:
            log.reads[key] = kv.mod_revision if kv is not None else 0

    def _unloggable(self) -> None:
        log: ReadLog | None = getattr(self._logs, "current", None)
        if log is not None:
            log.usable = False

    # -- etcd access -------------------------------------------------------------------

    def _get(self, key: str) -> KV | None:
        kv = self._client().get(key)
        self._note(key, kv)
        return kv

    def _snapshot(self, *reads: Op) -> list[list[KV]]:
        """What each ``get`` finds, all at one revision (a transaction of reads only)."""
        self._unloggable()
        return self._client().txn([], reads).reads

    def _read(self, *keys: str) -> list[KV | None]:
        """The current value of each key (``None`` if missing), all at one revision."""
        found = [kvs[0] if kvs else None for kvs in self._client().txn([], [Op.get(key) for key in keys]).reads]
        for key, kv in zip(keys, found, strict=True):
            self._note(key, kv)
        return found

    def _read_many(self, keys: list[str]) -> list[KV | None]:
        """Like :meth:`_read` for any number of keys, in transactions of at most the etcd limit
        (so not all at one revision)."""
        self._unloggable()
        step = self._max_txn_ops
        found: list[KV | None] = []
        for start in range(0, len(keys), step):
            reads = self._client().txn([], [Op.get(key) for key in keys[start : start + step]]).reads
            found += [kvs[0] if kvs else None for kvs in reads]
        return found

    def _range(self, prefix: str) -> list[KV]:
        """Every key under ``prefix``, in key order."""
        self._unloggable()
        return self._client().get_prefix(prefix)

    def _commit(self, compares: list[Compare], ops: list[Op], what: str) -> None:
        """Apply ``ops`` if every comparison holds; ``_Collided`` if one does not."""
        size = max(len(compares), len(ops))
        if size > self._max_txn_ops:
            raise StoreError(
                f"{what} needs {size} operations in one etcd transaction, more than the"
                f" {self._max_txn_ops} allowed (etcd --max-txn-ops); nothing was changed"
            )
        self._unloggable()
        if not self._client().txn(compares, ops).succeeded:
            raise _Collided(what)

    def _retry(self, what: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (read, decide, commit) until its commit is not pre-empted."""
        for number in range(MAX_ATTEMPTS):
            if number:
                _backoff(number)
            try:
                return attempt()
            except _Collided:
                continue
        raise Conflict(f"{what} collided with concurrent changes {MAX_ATTEMPTS} times; try again")

    def _now(self) -> str:
        return _dump_time(self._clock.now())

    def _touch_dependents(self, account_id: int) -> Op:
        """The request that tells a concurrent ``delete_account`` a dependent was added."""
        return Op.put(self._keys.dependents(account_id), "")

    @staticmethod
    def _require_account(kv: KV | None, account_id: int, type: AccountType | None, role: str) -> KV:
        """``kv`` if it holds an account (of ``type``, if given)."""
        if kv is None:
            raise NotFound(f"{role} {account_id} does not exist")
        if type is not None and _doc(kv).get("type") != type.value:
            article = "an organization" if type is AccountType.ORGANIZATION else "a user"
            raise InvalidInput(f"{role} {account_id} is not {article}")
        return kv

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

    # -- tokens ------------------------------------------------------------------------

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
        keys = self._keys
        stored_scopes = _dump_scopes(scopes)
        stored_expiry = _dump_optional_time(expires_at)
        user_key = keys.account(user_id)
        hash_key = keys.token_hash(token_hash)
        counter_key = keys.counter("tokens")

        def attempt() -> Token:
            user, taken, counter = self._read(user_key, hash_key, counter_key)
            self._require_account(user, user_id, AccountType.USER, "user")
            if taken is not None:
                raise AlreadyExists("a token with this hash already exists")
            token_id = _last_id(counter) + 1
            doc = {
                "id": token_id,
                "user_id": user_id,
                "note": note,
                "token_hash": token_hash,
                "token_prefix": token_prefix,
                "scopes": stored_scopes,
                "created_at": self._now(),
                "expires_at": stored_expiry,
                "last_used_at": None,
            }
            self._commit(
                [Compare.present(user_key), Compare.absent(hash_key), _still(counter_key, counter)],
                [
                    Op.put(counter_key, str(token_id)),
                    Op.put(keys.token(token_id), _dump_json(doc)),
                    Op.put(hash_key, str(token_id)),
                    Op.put(keys.token_index(user_id, token_id), ""),
                    self._touch_dependents(user_id),
                ],
                f"creating a token for user {user_id}",
            )
            return _load_token(doc)

        return self._retry(f"creating a token for user {user_id}", attempt)

    def get_token_by_hash(self, token_hash: str) -> Token | None:
        index = self._get(self._keys.token_hash(token_hash))
        if index is None:
            return None
        kv = self._get(self._keys.token(_index_id(index)))
        token = None if kv is None else _decode(kv, _load_token)
        return token if token is not None and token.token_hash == token_hash else None

    def list_tokens(self, user_id: int) -> list[Token]:
        # From the user's index, then the records, which are the truth (as for memberships).
        self._ensure_indexes()
        ids = [_pair(kv, self._keys.tokens_by_user)[1] for kv in self._range(self._keys.tokens_of(user_id))]
        found = self._read_many([self._keys.token(token_id) for token_id in ids])
        tokens = [_decode(kv, _load_token) for kv in found if kv is not None]
        return [token for token in tokens if token.user_id == user_id]

    def delete_token(self, token_id: int) -> bool:
        token_key = self._keys.token(token_id)

        def attempt() -> bool:
            kv = self._get(token_key)
            if kv is None:
                return False
            token = _decode(kv, _load_token)
            self._commit(
                [Compare.unchanged(token_key, kv.mod_revision)],
                [Op.delete(token_key), Op.delete(self._keys.token_hash(token.token_hash)),
                 Op.delete(self._keys.token_index(token.user_id, token_id))],
                f"deleting token {token_id}",
            )
            return True

        return self._retry(f"deleting token {token_id}", attempt)

    def touch_token(self, token_id: int, when: datetime) -> None:
        # Requests finish out of order, so keep the latest time rather than the last
        # written. A token deleted meanwhile is no error: the request was authorized.
        self._advance_token_time(token_id, "last_used_at", when, f"recording the use of token {token_id}")

    def end_token_sessions(self, token_id: int, when: datetime) -> None:
        self._advance_token_time(token_id, "sessions_ended_at", when, f"ending the sessions of token {token_id}")

    def _advance_token_time(self, token_id: int, field: str, when: datetime, what: str) -> None:
        """Set a time of the token to ``when`` unless it is later already (or the token is gone)."""
        stamp = _dump_time(when)
        token_key = self._keys.token(token_id)

        def attempt() -> None:
            kv = self._get(token_key)
            if kv is None:
                return
            current = getattr(_decode(kv, _load_token), field)
            if current is not None and current >= when:
                return
            doc = _doc(kv)
            doc[field] = stamp
            self._commit([Compare.unchanged(token_key, kv.mod_revision)], [Op.put(token_key, _dump_json(doc))], what)

        self._retry(what, attempt)

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

    # -- repositories ------------------------------------------------------------------

    def _repo_removal(self, repo: Repository, collaborators: list[int]) -> list[Op]:
        """The requests that remove ``repo`` with its index keys and collaborators, and the
        index of its deploy keys (whose records and fingerprints the caller removes)."""
        keys = self._keys
        return [
            Op.delete(keys.repo(repo.id)),
            Op.delete(keys.repo_name(repo.owner_id, repo.name)),
            Op.delete(keys.storage_id(repo.storage_id)),
            Op.delete(keys.collaborators_of(repo.id), prefix=True),
            *(Op.delete(keys.collaboration_index(repo.id, user)) for user in collaborators),
            Op.delete(keys.deploy_keys_of(repo.id), prefix=True),
            Op.delete(keys.repo_dependents(repo.id)),
        ]

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
        keys = self._keys
        visibility = _enum(Visibility, visibility, "visibility")
        owner_key = keys.account(owner_id)
        name_key = keys.repo_name(owner_id, name)
        storage_key = keys.storage_id(storage_id)
        repo_id = self._next_repo_id()

        def attempt() -> Repository:
            owner, name_taken, storage_taken = self._read(owner_key, name_key, storage_key)
            self._require_account(owner, owner_id, None, "owner")
            if name_taken is not None:
                raise AlreadyExists(f"repository {name!r} already exists for this owner")
            if storage_taken is not None:
                raise AlreadyExists("a repository with this storage id already exists")
            now = self._now()
            doc = {
                "id": repo_id,
                "owner_id": owner_id,
                "name": name,
                "storage_id": storage_id,
                "visibility": visibility.value,
                "description": description,
                "default_branch": default_branch,
                "allow_force_push": True,
                "created_at": now,
                "updated_at": now,
                "pushed_at": None,
            }
            self._commit(
                [
                    Compare.present(owner_key),
                    Compare.absent(name_key),
                    Compare.absent(storage_key),
                    Compare.absent(keys.repo(repo_id)),
                ],
                [
                    Op.put(keys.repo(repo_id), _dump_json(doc)),
                    Op.put(name_key, str(repo_id)),
                    Op.put(storage_key, str(repo_id)),
                    self._touch_dependents(owner_id),
                ],
                f"creating repository {name!r}",
            )
            return _load_repo(doc)

        return self._retry(f"creating repository {name!r}", attempt)

    def _next_repo_id(self) -> int:
        """A repository id from this store's block, reserving the next block when it runs out.

        Creates on different nodes then never contend for the counter, which every create used to
        compare: ids stay unique, though not dense nor in creation order across nodes (GitHub's are
        neither; lists order by name or by creation time)."""
        with self._ids_lock:
            first, end = self._ids
            if first >= end:
                key = self._keys.counter("repos")

                def reserve() -> int:
                    (counter,) = self._read(key)
                    start = _last_id(counter) + 1
                    self._commit([_still(key, counter)], [Op.put(key, str(start + REPO_ID_BLOCK - 1))],
                                 "reserving repository ids")
                    return start

                first = self._retry("reserving repository ids", reserve)
                end = first + REPO_ID_BLOCK
            self._ids = (first + 1, end)
            return first

    def get_repo(self, owner_id: int, name: str) -> Repository | None:
        index = self._get(self._keys.repo_name(owner_id, name))
        if index is None:
            return None
        repo = self.get_repo_by_id(_index_id(index))
        # The repository may have been renamed or transferred between the two reads.
        if repo is None or repo.owner_id != owner_id or _fold(repo.name) != _fold(name):
            return None
        return repo

    def get_repo_by_id(self, repo_id: int) -> Repository | None:
        kv = self._get(self._keys.repo(repo_id))
        return None if kv is None else _decode(kv, _load_repo)

    def get_repos(self, repo_ids: Sequence[int]) -> list[Repository]:
        found = self._read_many([self._keys.repo(repo_id) for repo_id in repo_ids])
        return [_decode(kv, _load_repo) for kv in found if kv is not None]

    def get_repo_by_storage_id(self, storage_id: str) -> Repository | None:
        index = self._get(self._keys.storage_id(storage_id))
        repo = None if index is None else self.get_repo_by_id(_index_id(index))
        return repo if repo is not None and repo.storage_id == storage_id else None

    def list_repos(
        self,
        owner_id: int | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        by_name: bool = False,
        after: str | None = None,
    ) -> list[Repository]:
        _check_page(limit, offset)
        _check_after(owner_id, by_name, after)
        if owner_id is None:
            return _page([_decode(kv, _load_repo) for kv in self._range(self._keys.repos)], limit, offset)
        prefix = self._keys.repos_named_by(owner_id)
        if by_name:
            # The name index's keys are the folded names, in order: etcd reads from the name after
            # ``after`` and stops after the page (it has no offset, so the skipped entries are read,
            # but only their short index entries).
            start = prefix if after is None else prefix + _fold(after) + "\0"
            self._unloggable()
            named = self._client().get_range(start, prefix_end(prefix),
                                             limit=0 if limit is None else offset + limit)
            ids = _page([_index_id(kv) for kv in named], limit, offset)
        else:
            ids = _page(sorted(_index_id(kv) for kv in self._range(prefix)), limit, offset)
        found = self._read_many([self._keys.repo(repo_id) for repo_id in ids])
        repos = [_decode(kv, _load_repo) for kv in found if kv is not None]
        # A repository renamed away or transferred between the two reads is not this owner's any more.
        return [r for r in repos if r.owner_id == owner_id]

    def count_repos(self, owner_id: int) -> int:
        self._unloggable()
        return self._client().count_prefix(self._keys.repos_named_by(owner_id))

    def save_repo(self, repo: Repository) -> Repository:
        keys = self._keys
        visibility = _enum(Visibility, repo.visibility, "visibility")
        pushed_at = _dump_optional_time(repo.pushed_at)
        repo_key = keys.repo(repo.id)
        owner_key = keys.account(repo.owner_id)
        new_name_key = keys.repo_name(repo.owner_id, repo.name)

        def attempt() -> Repository:
            current, owner, taken = self._read(repo_key, owner_key, new_name_key)
            if current is None:
                raise NotFound(f"repository {repo.id} does not exist")
            self._require_account(owner, repo.owner_id, None, "owner")
            stored = _decode(current, _load_repo)
            doc = _doc(current)
            compares = [Compare.unchanged(repo_key, current.mod_revision), Compare.present(owner_key)]
            ops: list[Op] = []
            old_name_key = keys.repo_name(stored.owner_id, stored.name)
            if new_name_key != old_name_key:
                if taken is not None:
                    raise AlreadyExists(f"repository {repo.name!r} already exists for this owner")
                compares.append(Compare.absent(new_name_key))
                ops += [Op.delete(old_name_key), Op.put(new_name_key, str(repo.id))]
            if repo.owner_id != stored.owner_id:
                ops.append(self._touch_dependents(repo.owner_id))
            # id, storage_id and created_at stay as stored.
            doc.update(
                owner_id=repo.owner_id,
                name=repo.name,
                visibility=visibility.value,
                description=repo.description,
                default_branch=repo.default_branch,
                allow_force_push=bool(repo.allow_force_push),
                pushed_at=pushed_at,
                updated_at=self._now(),
            )
            ops.append(Op.put(repo_key, _dump_json(doc)))
            self._commit(compares, ops, f"saving repository {repo.id}")
            return _load_repo(doc)

        return self._retry(f"saving repository {repo.id}", attempt)

    def delete_repo(self, repo_id: int) -> bool:
        keys = self._keys
        repo_key = keys.repo(repo_id)
        dependents_key = keys.repo_dependents(repo_id)

        def attempt() -> bool:
            found, dependents, collaborator_kvs, deploy_index = self._snapshot(
                Op.get(repo_key),
                Op.get(dependents_key),
                Op.get(keys.collaborators_of(repo_id), prefix=True),
                Op.get(keys.deploy_keys_of(repo_id), prefix=True),
            )
            if not found:
                return False
            repo = _decode(found[0], _load_repo)
            collaborators = [_pair(c, keys.collaborators)[1] for c in collaborator_kvs]
            # A deploy key added since the snapshot rewrote the dependents key; one removed since is
            # missing here and skipped.
            compares = [
                Compare.unchanged(repo_key, found[0].mod_revision),
                _still(dependents_key, dependents[0] if dependents else None),
            ]
            ops = self._repo_removal(repo, collaborators)
            ids = [_pair(kv, keys.deploy_keys_by_repo)[1] for kv in deploy_index]
            for kv in self._read_many([keys.ssh_key(key_id) for key_id in ids]):
                if kv is None:
                    continue
                key = _decode(kv, _load_ssh_key)
                if key.repo_id == repo_id:
                    compares.append(self._still_fingerprint_of(key))
                    ops += [Op.delete(kv.key), Op.delete(keys.ssh_fingerprint(key.fingerprint))]
            self._commit(compares, ops, f"deleting repository {repo_id}")
            return True

        return self._retry(f"deleting repository {repo_id}", attempt)

    # -- collaborators -----------------------------------------------------------------

    def _load_collaborator(self, kv: KV) -> Collaborator:
        repo_id, user_id = _pair(kv, self._keys.collaborators)
        try:
            permission = Permission(int(kv.text))
        except ValueError as exc:
            raise _corrupt(kv, exc) from None
        return Collaborator(repo_id=repo_id, user_id=user_id, permission=permission)

    def set_collaborator(self, repo_id: int, user_id: int, permission: Permission) -> Collaborator:
        permission = _enum(Permission, permission, "permission")
        repo_key = self._keys.repo(repo_id)
        user_key = self._keys.account(user_id)

        def attempt() -> Collaborator:
            repo, user = self._read(repo_key, user_key)
            if repo is None:
                raise NotFound(f"repository {repo_id} does not exist")
            self._require_account(user, user_id, AccountType.USER, "user")
            # Collaborators of the repository go with it by prefix; only the user's
            # side needs telling.
            self._commit(
                [Compare.present(repo_key), Compare.present(user_key)],
                [
                    Op.put(self._keys.collaborator(repo_id, user_id), str(int(permission))),
                    Op.put(self._keys.collaboration_index(repo_id, user_id), ""),
                    self._touch_dependents(user_id),
                ],
                f"setting collaborator {user_id} of repository {repo_id}",
            )
            return Collaborator(repo_id=repo_id, user_id=user_id, permission=permission)

        return self._retry(f"setting collaborator {user_id} of repository {repo_id}", attempt)

    def remove_collaborator(self, repo_id: int, user_id: int) -> bool:
        self._unloggable()
        key = self._keys.collaborator(repo_id, user_id)
        result = self._client().txn(
            [], [Op.get(key), Op.delete(key), Op.delete(self._keys.collaboration_index(repo_id, user_id))]
        )
        return bool(result.reads[0])

    def get_collaborator(self, repo_id: int, user_id: int) -> Collaborator | None:
        kv = self._get(self._keys.collaborator(repo_id, user_id))
        return None if kv is None else self._load_collaborator(kv)

    def list_collaborators(self, repo_id: int) -> list[Collaborator]:
        return [self._load_collaborator(kv) for kv in self._range(self._keys.collaborators_of(repo_id))]

    def list_collaborations_of(self, user_id: int) -> list[Collaborator]:
        self._ensure_indexes()
        repos = [_pair(kv, self._keys.collaborates)[1] for kv in self._range(self._keys.collaborations_of(user_id))]
        found = self._read_many([self._keys.collaborator(repo, user_id) for repo in repos])
        return [self._load_collaborator(kv) for kv in found if kv is not None]

    # -- SSH keys ----------------------------------------------------------------------

    def _still_fingerprint_of(self, key: SshKey) -> Compare:
        """The fingerprint index still names ``key``, so removing the index removes only its entry."""
        return Compare.value_is(self._keys.ssh_fingerprint(key.fingerprint), str(key.id))

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
        if (user_id is None) == (repo_id is None):
            raise ValueError("an SSH key belongs to a user or to a repository: give exactly one of user_id, repo_id")
        keys = self._keys
        fingerprint_key = keys.ssh_fingerprint(fingerprint)
        counter_key = keys.counter("ssh-keys")
        if user_id is not None:
            parent_key, what = keys.account(user_id), f"adding an SSH key to user {user_id}"
        else:
            assert repo_id is not None
            parent_key, what = keys.repo(repo_id), f"adding a deploy key to repository {repo_id}"

        def attempt() -> SshKey:
            parent, taken, counter = self._read(parent_key, fingerprint_key, counter_key)
            if user_id is not None:
                self._require_account(parent, user_id, AccountType.USER, "user")
            elif parent is None:
                raise NotFound(f"repository {repo_id} does not exist")
            if taken is not None:
                raise AlreadyExists(f"the SSH key {fingerprint} is already in use")
            assert parent is not None
            key_id = _last_id(counter) + 1
            doc = {
                "id": key_id,
                "fingerprint": fingerprint,
                "algorithm": algorithm,
                "key": key,
                "title": title,
                "user_id": user_id,
                "repo_id": repo_id,
                "read_only": bool(read_only) if repo_id is not None else False,
                "created_at": self._now(),
                "last_used_at": None,
            }
            stored = _load_ssh_key(doc)
            compares = [Compare.absent(fingerprint_key), _still(counter_key, counter)]
            ops = [
                Op.put(counter_key, str(key_id)),
                Op.put(keys.ssh_key(key_id), _dump_json(doc)),
                Op.put(fingerprint_key, str(key_id)),
                Op.put(keys.ssh_key_index(stored), ""),
            ]
            if user_id is not None:
                compares.append(Compare.present(parent_key))
                ops.append(self._touch_dependents(user_id))
            else:
                # The repository as read, so its owner is the one whose delete_account must hear of the key.
                assert repo_id is not None
                compares.append(Compare.unchanged(parent_key, parent.mod_revision))
                owner_id = _decode(parent, _load_repo).owner_id
                ops += [Op.put(keys.repo_dependents(repo_id), ""), self._touch_dependents(owner_id)]
            self._commit(compares, ops, what)
            return stored

        return self._retry(what, attempt)

    def get_ssh_key(self, key_id: int) -> SshKey | None:
        kv = self._get(self._keys.ssh_key(key_id))
        return None if kv is None else _decode(kv, _load_ssh_key)

    def get_ssh_key_by_fingerprint(self, fingerprint: str) -> SshKey | None:
        index = self._get(self._keys.ssh_fingerprint(fingerprint))
        if index is None:
            return None
        key = self.get_ssh_key(_index_id(index))
        # The key may have been deleted (and the fingerprint taken again) between the two reads.
        return key if key is not None and key.fingerprint == fingerprint else None

    def list_ssh_keys(self, *, user_id: int | None = None, repo_id: int | None = None) -> list[SshKey]:
        if (user_id is None) == (repo_id is None):
            raise ValueError("list the SSH keys of a user or of a repository: give exactly one of user_id, repo_id")
        keys = self._keys
        if user_id is not None:
            index_prefix, prefix = keys.ssh_keys_of(user_id), keys.ssh_keys_by_user
        else:
            assert repo_id is not None
            index_prefix, prefix = keys.deploy_keys_of(repo_id), keys.deploy_keys_by_repo
        # From the index, then the records, which are the truth (as for tokens).
        ids = [_pair(kv, prefix)[1] for kv in self._range(index_prefix)]
        found = self._read_many([keys.ssh_key(key_id) for key_id in ids])
        listed = [_decode(kv, _load_ssh_key) for kv in found if kv is not None]
        return [k for k in listed if (k.user_id, k.repo_id) == (user_id, repo_id)]

    def delete_ssh_key(self, key_id: int) -> bool:
        record_key = self._keys.ssh_key(key_id)

        def attempt() -> bool:
            kv = self._get(record_key)
            if kv is None:
                return False
            key = _decode(kv, _load_ssh_key)
            self._commit(
                [Compare.unchanged(record_key, kv.mod_revision)],
                [
                    Op.delete(record_key),
                    Op.delete(self._keys.ssh_fingerprint(key.fingerprint)),
                    Op.delete(self._keys.ssh_key_index(key)),
                ],
                f"deleting SSH key {key_id}",
            )
            return True

        return self._retry(f"deleting SSH key {key_id}", attempt)

    def touch_ssh_key(self, key_id: int, when: datetime) -> None:
        # As for tokens: connections finish out of order, so keep the latest time, and a key
        # deleted meanwhile is no error.
        stamp = _dump_time(when)
        record_key = self._keys.ssh_key(key_id)
        what = f"recording the use of SSH key {key_id}"

        def attempt() -> None:
            kv = self._get(record_key)
            if kv is None:
                return
            current = _decode(kv, _load_ssh_key).last_used_at
            if current is not None and current >= when:
                return
            doc = _doc(kv)
            doc["last_used_at"] = stamp
            self._commit([Compare.unchanged(record_key, kv.mod_revision)], [Op.put(record_key, _dump_json(doc))], what)

        self._retry(what, attempt)

    # -- SSH host keys -----------------------------------------------------------------

    def get_ssh_host_keys(self) -> list[HostKey]:
        # Key order is algorithm order.
        return [_decode(kv, _load_host_key) for kv in self._range(self._keys.host_keys)]

    def add_ssh_host_key(self, algorithm: str, private_key: str) -> HostKey:
        key = self._keys.host_key(algorithm)
        doc = {"algorithm": algorithm, "private_key": private_key, "created_at": self._now()}
        self._unloggable()
        # Put only if the key was never created (create revision 0), else read what the first writer stored.
        result = self._client().txn(
            [Compare(key, "CREATE", "EQUAL", 0)], [Op.put(key, _dump_json(doc))], [Op.get(key)]
        )
        if result.succeeded:
            return _load_host_key(doc)
        [stored] = result.reads
        if not stored:
            raise StoreError(f"the SSH host key {algorithm} vanished while it was added")
        return _decode(stored[0], _load_host_key)

    # -- indexes over data written before them ---------------------------------------

    def _ensure_indexes(self) -> None:
        """Write the user-side index keys of memberships, collaborations and tokens that data from
        before them lacks, once per store (idempotent: every node may do it, at the same time too)."""
        if self._indexed:
            return
        keys = self._keys
        marker = self._client().get(keys.indexes)
        if marker is None or marker.text != INDEXES:
            ops = [Op.put(keys.membership_index(*_pair(kv, keys.memberships)), "")
                   for kv in self._client().get_prefix(keys.memberships)]
            ops += [Op.put(keys.collaboration_index(*_pair(kv, keys.collaborators)), "")
                    for kv in self._client().get_prefix(keys.collaborators)]
            for kv in self._client().get_prefix(keys.tokens):
                token = _decode(kv, _load_token)
                ops.append(Op.put(keys.token_index(token.user_id, token.id), ""))
            for start in range(0, len(ops), self._max_txn_ops):
                self._client().txn([], ops[start : start + self._max_txn_ops])
            self._client().put(keys.indexes, INDEXES)
            log.info("etcd store: indexed %d memberships, collaborations and tokens from the user's side", len(ops))
        self._indexed = True

    # -- node settings -----------------------------------------------------------------

    def get_maintenance(self) -> MaintenanceState:
        kv = self._get(self._keys.maintenance)
        if kv is None:
            return MaintenanceState(enabled=False)

        def load(doc: dict[str, Any]) -> MaintenanceState:
            return MaintenanceState(
                enabled=_flag(doc, "enabled"),
                message=_text(doc, "message"),
                since=_load_optional_time(doc.get("since")),
            )

        return _decode(kv, load)

    def set_maintenance(self, state: MaintenanceState) -> None:
        doc = {
            "enabled": bool(state.enabled),
            "message": state.message,
            "since": _dump_optional_time(state.since),
        }
        self._unloggable()
        self._client().put(self._keys.maintenance, _dump_json(doc))

    def get_setting(self, key: str) -> str | None:
        kv = self._get(self._keys.setting(key))
        return None if kv is None else kv.text

    def set_setting(self, key: str, value: str | None) -> None:
        self._unloggable()
        if value is None:
            self._client().delete(self._keys.setting(key))
        else:
            self._client().put(self._keys.setting(key), value)
