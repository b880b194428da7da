"""Metadata export and import: SQLite -> etcd -> SQLite gives back the same accounts, tokens,
memberships, repositories, permissions, SSH keys and host keys (ids are renumbered, everything
else is kept)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bulwark.backup.metadata import FORMAT, check, export, import_into
from bulwark.errors import InvalidInput
from bulwark.etcd import Etcd
from bulwark.models import OrgRole, Permission, Scope, Visibility
from bulwark.store import Store
from bulwark.store.etcd import EtcdStore
from bulwark.store.sqlite import SQLiteStore
from tests.support.etcd_helpers import BACKENDS, any_etcd
from tests.support.store_contract import KeyOwner, fingerprint

pytestmark = pytest.mark.timeout(60)

# The fake etcd in the fast tier, a real one in the system tier.
etcd = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd")


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "a.db")
    yield store
    store.close()


def populate(store: Store) -> None:
    alice = store.create_user("alice", email="alice@example.com", password_hash="argon2-hash-of-alice")
    alice = store.save_account(type(alice)(**{**alice.__dict__, "email_public": True}))  # she made it public
    bob = store.create_user("Bob", name="Bob B", site_admin=True)
    gone = store.create_user("gone")
    store.delete_account(gone.id)  # leaves a gap in the ids
    org = store.create_org("acme", owner_id=alice.id, name="Acme")
    store.set_membership(org.id, bob.id, OrgRole.MEMBER)
    token = store.create_token(alice.id, token_hash="a" * 64, token_prefix="bwk_aaaa", scopes={Scope.REPO}, note="ci")
    store.end_token_sessions(token.id, datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))  # logged out
    repo = store.create_repo(org.id, "Tools", storage_id="0123abcd", visibility=Visibility.PRIVATE,
                             description="d", default_branch="trunk")
    store.save_repo(type(repo)(**{**repo.__dict__, "allow_force_push": False}))
    notes = store.create_repo(alice.id, "notes", storage_id="4567ef01")
    store.set_collaborator(repo.id, bob.id, Permission.PUSH)
    keys: tuple[tuple[str, KeyOwner], ...] = (
        ("alice-1", {"user_id": alice.id}), ("bob-1", {"user_id": bob.id}), ("alice-2", {"user_id": alice.id}),
        ("tools-ci", {"repo_id": repo.id, "read_only": True}), ("notes-w", {"repo_id": notes.id}))
    for seed, owner in keys:
        store.create_ssh_key(fingerprint=fingerprint(seed), algorithm="ssh-ed25519", key=f"ssh-ed25519 {seed}",
                             title=seed, **owner)
    leaving = store.create_user("leaving")
    store.create_ssh_key(fingerprint=fingerprint("gone-key"), algorithm="ssh-rsa", key="ssh-rsa gone", title="",
                         user_id=leaving.id)
    store.delete_account(leaving.id)  # takes the key along
    store.add_ssh_host_key("ssh-ed25519", HOST_KEYS["ssh-ed25519"])
    store.add_ssh_host_key("rsa-sha2-512", HOST_KEYS["rsa-sha2-512"])


PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n"
HOST_KEYS = {"ssh-ed25519": PEM.format("b3BlbnNzaC1rZXktdjEAAAAA"), "rsa-sha2-512": PEM.format("AAAAB3NzaC1yc2E=")}


def comparable(document: dict[str, Any]) -> Any:
    """The document with ids replaced by names, and creation times left out."""
    logins = {a["id"]: a["login"] for a in document["accounts"]}
    repos = {r["id"]: r["name"] for r in document["repositories"]}
    return {
        "accounts": sorted((a["login"], a["type"], a["name"], a["email"], a["email_public"], a["site_admin"],
                            a["suspended"], a["password_hash"]) for a in document["accounts"]),
        "memberships": sorted((logins[m["org_id"]], logins[m["user_id"]], m["role"])
                              for m in document["memberships"]),
        "tokens": sorted((logins[t["user_id"]], t["token_hash"], t["token_prefix"], tuple(t["scopes"]), t["note"],
                          t["sessions_ended_at"]) for t in document["tokens"]),
        "repositories": sorted((logins[r["owner_id"]], r["name"], r["storage_id"], r["visibility"],
                                r["description"], r["default_branch"], r["allow_force_push"])
                               for r in document["repositories"]),
        "collaborators": sorted((repos[c["repo_id"]], logins[c["user_id"]], c["permission"])
                                for c in document["collaborators"]),
        # By fingerprint, which is unique; the owner by login or repository name.
        "ssh_keys": sorted((k["fingerprint"], logins.get(k["user_id"]), repos.get(k["repo_id"]), k["algorithm"],
                            k["key"], k["title"], k["read_only"]) for k in document.get("ssh_keys", [])),
        "ssh_host_keys": [(h["algorithm"], h["private_key"]) for h in document.get("ssh_host_keys", [])],
    }


def test_sqlite_to_etcd_to_sqlite_keeps_everything(sqlite: SQLiteStore, etcd: Etcd, tmp_path: Path) -> None:
    populate(sqlite)
    original = export(sqlite)
    assert original["format"] == FORMAT
    assert len(original["ssh_keys"]) == 5
    assert [h["algorithm"] for h in original["ssh_host_keys"]] == ["rsa-sha2-512", "ssh-ed25519"]
    in_etcd = EtcdStore(etcd, prefix=f"/test/{uuid.uuid4().hex}/")
    import_into(in_etcd, original)
    through_etcd = export(in_etcd)
    back = SQLiteStore(tmp_path / "b.db")
    try:
        import_into(back, through_etcd)
        assert comparable(export(back)) == comparable(original)
    finally:
        back.close()
    assert comparable(through_etcd) == comparable(original)


def test_a_fresh_admin_is_updated_not_duplicated(sqlite: SQLiteStore, tmp_path: Path) -> None:
    sqlite.create_user("admin", site_admin=True, password_hash="old")
    populate(sqlite)
    document = export(sqlite)
    target = SQLiteStore(tmp_path / "t.db")
    try:
        target.create_user("admin", site_admin=True)
        import_into(target, document, skip_logins=["admin"])
        assert target.get_password_hash(target.get_account("admin").id) == "old"  # type: ignore[union-attr]
        assert comparable(export(target)) == comparable(document)
    finally:
        target.close()


def test_a_restore_brings_back_every_ssh_key_to_its_owner(sqlite: SQLiteStore, tmp_path: Path) -> None:
    populate(sqlite)
    target = SQLiteStore(tmp_path / "t.db")
    try:
        target.create_user("padding")  # so that ids differ from the source's
        done = import_into(target, export(sqlite))
        assert "5 SSH keys" in done.summary() and done.host_keys_kept == []
        alice = target.get_account("alice")
        tools = target.get_repo(target.get_account("acme").id, "tools")  # type: ignore[union-attr]
        assert alice is not None and tools is not None
        assert [k.title for k in target.list_ssh_keys(user_id=alice.id)] == ["alice-1", "alice-2"]
        [deploy] = target.list_ssh_keys(repo_id=tools.id)
        assert (deploy.fingerprint, deploy.read_only) == (fingerprint("tools-ci"), True)
        found = target.get_ssh_key_by_fingerprint(fingerprint("bob-1"))
        assert found is not None and found.user_id == target.get_account("bob").id  # type: ignore[union-attr]
        assert {h.algorithm: h.private_key for h in target.get_ssh_host_keys()} == HOST_KEYS
    finally:
        target.close()


def test_a_document_from_before_ssh_keys_still_imports(sqlite: SQLiteStore, tmp_path: Path) -> None:
    populate(sqlite)
    document = export(sqlite)
    older = {k: v for k, v in document.items() if k not in ("ssh_keys", "ssh_host_keys")}
    target = SQLiteStore(tmp_path / "t.db")
    try:
        import_into(target, check(older))
        assert comparable(export(target)) == {**comparable(document), "ssh_keys": [], "ssh_host_keys": []}
    finally:
        target.close()


def test_a_target_s_own_host_key_is_kept_and_reported(sqlite: SQLiteStore, tmp_path: Path) -> None:
    populate(sqlite)
    target = SQLiteStore(tmp_path / "t.db")
    try:
        own = target.add_ssh_host_key("ssh-ed25519", "the target's own key")
        done = import_into(target, export(sqlite))
        assert done.host_keys_kept == ["ssh-ed25519"] and "ssh-ed25519" in done.summary()
        assert target.get_ssh_host_keys()[1] == own
    finally:
        target.close()


@pytest.mark.parametrize("document", [None, [], {"accounts": []}, {"format": FORMAT + 1, "accounts": []},
                                      {"format": FORMAT, "accounts": {}},
                                      {"format": FORMAT, "accounts": [], "memberships": [], "tokens": [],
                                       "repositories": [], "collaborators": [], "ssh_keys": {}}])
def test_what_is_not_a_metadata_document_is_refused(document: Any) -> None:
    with pytest.raises(InvalidInput):
        check(document)
