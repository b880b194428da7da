"""SSH keys (users' keys and deploy keys) and the server's SSH host keys in the etcd store."""

from __future__ import annotations

from datetime import datetime

from bulwark.errors import AlreadyExists, NotFound, StoreError
from bulwark.etcd import Compare, Op
from bulwark.models import AccountType, HostKey, SshKey
from bulwark.store.etcd.base import _Base
from bulwark.store.etcd.codec import (
    _decode,
    _doc,
    _dump_json,
    _index_id,
    _last_id,
    _load_host_key,
    _load_repo,
    _load_ssh_key,
    _pair,
    _still,
)
from bulwark.store.times import dump_time as _dump_time


class _SshKeys(_Base):
    # -- SSH keys ----------------------------------------------------------------------

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
