"""Repositories and their collaborators in the etcd store."""

from __future__ import annotations

from collections.abc import Sequence

from bulwark.errors import AlreadyExists, NotFound
from bulwark.etcd import KV, Compare, Op, prefix_end
from bulwark.models import AccountType, Collaborator, Permission, Repository, Visibility
from bulwark.store.etcd.base import _Base
from bulwark.store.etcd.codec import (
    _check_after,
    _check_page,
    _corrupt,
    _decode,
    _doc,
    _dump_json,
    _enum,
    _index_id,
    _last_id,
    _load_repo,
    _load_ssh_key,
    _page,
    _pair,
    _still,
)
from bulwark.store.etcd.keys import _fold
from bulwark.store.times import dump_optional_time as _dump_optional_time

# Repository ids a store reserves at a time (see EtcdStore._next_repo_id).
REPO_ID_BLOCK = 32


class _Repos(_Base):
    # -- repositories ------------------------------------------------------------------

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
