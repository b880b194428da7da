"""Metadata export and import: SQLite -> etcd -> SQLite gives back the same accounts, tokens,
memberships, repositories and permissions (ids are renumbered, everything else is kept)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bulwark.backup.metadata import FORMAT, check, export, import_into
from bulwark.cluster.etcd import Etcd
from bulwark.errors import InvalidInput
from bulwark.models import OrgRole, Permission, Scope, Visibility
from bulwark.store import Store
from bulwark.store.etcd import EtcdStore
from bulwark.store.sqlite import SQLiteStore

from etcd_helpers import etcd_client, serve_etcd

pytestmark = pytest.mark.timeout(60)

etcd_url = pytest.fixture(serve_etcd, scope="module", name="etcd_url")
etcd = pytest.fixture(etcd_client, scope="module", name="etcd")


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
    store.create_repo(alice.id, "notes", storage_id="4567ef01")
    store.set_collaborator(repo.id, bob.id, Permission.PUSH)


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
    }


def test_sqlite_to_etcd_to_sqlite_keeps_everything(sqlite: SQLiteStore, etcd: Etcd, tmp_path: Path) -> None:
    populate(sqlite)
    original = export(sqlite)
    assert original["format"] == FORMAT
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


@pytest.mark.parametrize("document", [None, [], {"accounts": []}, {"format": FORMAT + 1, "accounts": []},
                                      {"format": FORMAT, "accounts": {}}])
def test_what_is_not_a_metadata_document_is_refused(document: Any) -> None:
    with pytest.raises(InvalidInput):
        check(document)
