"""``bulwark key``: users' SSH keys and repositories' deploy keys, managed by the administrator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, fail, opened_node
from bulwark.cli.output import iso, print_json, print_table, say, when
from bulwark.errors import NotFound
from bulwark.models import Account, Repository, SshKey
from bulwark.node import Node

app = typer.Typer(help="Add, list and remove SSH keys: a user's keys, or a repository's deploy keys.",
                  no_args_is_help=True)

OwnerArg = Annotated[str, typer.Argument(
    metavar="OWNER", help="A user's login, or OWNER/REPO for the repository's deploy keys.", show_default=False)]


def _owner(node: Node, owner: str) -> Account | Repository:
    if "/" not in owner:
        return node.accounts.get_user(owner)
    login, _, name = owner.partition("/")
    account = node.store.get_account(login)
    repo = node.store.get_repo(account.id, name.removesuffix(".git")) if account is not None else None
    if repo is None:
        raise NotFound(f"no repository {owner}")
    return repo


def _keys(node: Node, owner: Account | Repository) -> list[SshKey]:
    return node.keys.user_keys(owner) if isinstance(owner, Account) else node.keys.deploy_keys(owner)


@app.command("add")
def add(
    owner: OwnerArg,
    key_file: Annotated[str, typer.Argument(
        metavar="KEY_FILE", help="The public key's file (id_ed25519.pub), or - to read it from stdin.",
        show_default=False)],
    title: Annotated[str, typer.Option("--title", help="What the key is for (default: its comment).")] = "",
    write: Annotated[bool, typer.Option(
        "--write", help="A deploy key that may push too (deploy keys are read-only by default).")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Register a public key: a user's (it speaks for the user) or a repository's deploy key."""
    try:
        text = sys.stdin.read() if key_file == "-" else Path(key_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read the key from {key_file}: {exc}") from None
    with opened_node(data_dir, config) as node:
        target = _owner(node, owner)
        if isinstance(target, Account):
            if write:
                raise fail("--write is for deploy keys: a user's key pushes wherever its user may")
            key = node.keys.add_user_key(target, text, title=title)
            whose = target.login
        else:
            key = node.keys.add_deploy_key(target, text, title=title, read_only=not write)
            whose = f"{owner} ({'read-write' if write else 'read-only'} deploy key)"
    say(f"Added key {key.id} for {whose}: {key.algorithm} {key.fingerprint}")


@app.command("list")
def list_(owner: OwnerArg, json: JsonOption = False, data_dir: DataDirOption = None,
          config: ConfigOption = None) -> None:
    """List a user's keys or a repository's deploy keys."""
    with opened_node(data_dir, config) as node:
        keys = _keys(node, _owner(node, owner))
    if json:
        print_json([
            {"id": k.id, "title": k.title, "algorithm": k.algorithm, "fingerprint": k.fingerprint,
             "read_only": k.read_only, "created_at": iso(k.created_at), "last_used_at": iso(k.last_used_at)}
            for k in keys
        ])
        return
    print_table(
        ["ID", "Title", "Type", "Fingerprint", "Access", "Added", "Last used"],
        [[str(k.id), k.title, k.algorithm, k.fingerprint,
          "read" if k.read_only else "read-write", when(k.created_at), when(k.last_used_at, "never")]
         for k in keys],
    )


@app.command("remove")
def remove(
    owner: OwnerArg,
    key_id: Annotated[int, typer.Argument(metavar="KEY_ID", help="The key's id, from 'bulwark key list'.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove a key; connections made with it are refused from the next one on."""
    with opened_node(data_dir, config) as node:
        target = _owner(node, owner)
        key = node.keys.user_key(target, key_id) if isinstance(target, Account) else \
            node.keys.deploy_key(target, key_id)
        node.keys.remove(key)
    say(f"Removed key {key_id} ({key.fingerprint}) of {owner}.")
