"""``bulwark repo``: repositories and their collaborators."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, fail, opened_node
from bulwark.cli.output import confirm, iso, permission_label, print_fields, print_json, print_table, say, size, when
from bulwark.models import Account, Permission, Visibility
from bulwark.node import Node
from bulwark.services.repositories import RepoAccess
from bulwark.webhooks.payloads import SERVER

# The administrator at the command line has no account here: the webhook events of what they do
# name the server as sender.
ADMINISTRATOR = SERVER

app = typer.Typer(
    help="Manage repositories: create, list, rename, transfer, delete, collaborators.", no_args_is_help=True
)
collaborators_app = typer.Typer(help="Manage a repository's collaborators.", no_args_is_help=True)
app.add_typer(collaborators_app, name="collaborator")

FullNameArg = Annotated[
    str, typer.Argument(metavar="OWNER/NAME", help="The repository, as owner/name.", show_default=False)
]
UserArg = Annotated[str, typer.Argument(metavar="USER", help="The collaborator's login.", show_default=False)]


def parse_full_name(text: str) -> tuple[str, str]:
    owner, sep, name = text.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise fail(f"expected OWNER/NAME, got {text!r}")
    return owner, name


def find(node: Node, full_name: str) -> RepoAccess:
    return node.repos.get_by_name(*parse_full_name(full_name))


def all_repos(node: Node, owner_id: int | None = None) -> list[RepoAccess]:
    """Every repository (of one owner, if given) with its owner."""
    owners: dict[int, Account | None] = {}
    found = []
    for repo in node.store.list_repos(owner_id):
        if repo.owner_id not in owners:
            owners[repo.owner_id] = node.store.get_account_by_id(repo.owner_id)
        owner = owners[repo.owner_id]
        if owner is not None:
            found.append(RepoAccess(repo, owner, Permission.ADMIN))
    return found


def repo_json(node: Node, found: RepoAccess) -> dict[str, Any]:
    repo = found.repo
    present = node.git.exists(repo.storage_id)
    return {
        "id": repo.id,
        "full_name": found.full_name,
        "owner": found.owner.login,
        "name": repo.name,
        "visibility": repo.visibility.value,
        "description": repo.description,
        "default_branch": repo.default_branch,
        "storage_id": repo.storage_id,
        "path": str(node.git.path(repo.storage_id)),
        "data_present": present,
        "size_bytes": node.git.disk_usage(repo.storage_id) if present else None,
        "created_at": iso(repo.created_at),
        "updated_at": iso(repo.updated_at),
        "pushed_at": iso(repo.pushed_at),
    }


def _size_label(info: dict[str, Any]) -> str:
    return size(info["size_bytes"]) if info["data_present"] else "MISSING"


@app.command("create")
def create(
    full_name: FullNameArg,
    private: Annotated[bool, typer.Option("--private", help="Visible only to those given access.")] = False,
    description: Annotated[str, typer.Option("--description", help="A one-line description.")] = "",
    default_branch: Annotated[str, typer.Option("--default-branch", help="The branch HEAD points at.")] = "main",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create an empty repository owned by a user or an organization."""
    owner_login, name = parse_full_name(full_name)
    with opened_node(data_dir, config) as node:
        owner = node.accounts.get(owner_login)
        repo = node.repos.create(
            owner,
            name,
            visibility=Visibility.PRIVATE if private else Visibility.PUBLIC,
            description=description,
            default_branch=default_branch,
            sender=ADMINISTRATOR,
        )
    say(f"Created {repo.visibility.value} repository {owner.login}/{repo.name} (storage id {repo.storage_id}).")


@app.command("list")
def list_(
    owner: Annotated[
        str | None, typer.Option("--owner", metavar="LOGIN", help="Only this user's or organization's repositories.")
    ] = None,
    json: JsonOption = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List repositories with their storage id and size on disk."""
    with opened_node(data_dir, config) as node:
        owner_id = node.accounts.get(owner).id if owner else None
        rows = [(found.repo, repo_json(node, found)) for found in all_repos(node, owner_id)]
    if json:
        print_json([info for _, info in rows])
        return
    print_table(
        ["Repository", "Visibility", "Storage id", "Size", "Pushed"],
        [
            [i["full_name"], i["visibility"], i["storage_id"], _size_label(i), when(repo.pushed_at, "never")]
            for repo, i in rows
        ],
    )


@app.command("show")
def show(
    full_name: FullNameArg, json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Show one repository: settings, where its data lives, and its collaborators."""
    with opened_node(data_dir, config) as node:
        found = find(node, full_name)
        info = repo_json(node, found)
        collaborators = [
            {"login": user.login, "permission": permission_label(perm)}
            for user, perm in node.repos.collaborators(found.repo)
        ]
    if json:
        print_json({**info, "collaborators": collaborators})
        return
    repo = found.repo
    print_fields(
        [
            ("Repository", found.full_name),
            ("Visibility", repo.visibility.value),
            ("Description", repo.description or "-"),
            ("Default branch", repo.default_branch),
            ("Storage id", repo.storage_id),
            ("Path", info["path"]),
            ("Size", _size_label(info)),
            ("Created", when(repo.created_at)),
            ("Pushed", when(repo.pushed_at, "never")),
            ("Collaborators", ", ".join(f"{c['login']} ({c['permission']})" for c in collaborators) or "-"),
        ]
    )


@app.command("rename")
def rename(
    full_name: FullNameArg,
    new_name: Annotated[str, typer.Argument(metavar="NEWNAME", help="The new name (the owner stays).")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Rename a repository; its data stays where it is."""
    with opened_node(data_dir, config) as node:
        found = find(node, full_name)
        repo = node.repos.update(found.repo, name=new_name, sender=ADMINISTRATOR)
    say(f"Renamed {found.full_name} to {found.owner.login}/{repo.name}.")


@app.command("transfer")
def transfer(
    full_name: FullNameArg,
    new_owner: Annotated[str, typer.Argument(metavar="NEWOWNER", help="The user or organization to own it.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Give a repository to another user or organization; its data stays where it is."""
    with opened_node(data_dir, config) as node:
        found = find(node, full_name)
        owner = node.accounts.get(new_owner)
        repo = node.repos.transfer(found.repo, owner)
    say(f"Transferred {found.full_name} to {owner.login}/{repo.name}.")


@app.command("delete")
def delete(
    full_name: FullNameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a repository and its data on disk."""
    with opened_node(data_dir, config) as node:
        found = find(node, full_name)
        confirm(f"Delete {found.full_name} and all its data?", yes=yes)
        node.repos.delete(found.repo, sender=ADMINISTRATOR)
    say(f"Deleted {found.full_name}.")


# -- collaborators -------------------------------------------------------------------------


@collaborators_app.command("add")
def add_collaborator(
    full_name: FullNameArg,
    user: UserArg,
    permission: Annotated[
        str, typer.Option("--permission", "-p", metavar="pull|push|admin", help="The access to grant.")
    ] = "push",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Give a user access to a repository, or change their access."""
    try:
        level = Permission.parse(permission)
    except ValueError as exc:
        raise fail(str(exc)) from None
    with opened_node(data_dir, config) as node:
        found = find(node, full_name)
        member = node.accounts.get_user(user)
        node.repos.add_collaborator(found.repo, member, level, sender=ADMINISTRATOR)
    say(f"{member.login} now has {permission_label(level)} access to {found.full_name}.")


@collaborators_app.command("remove")
def remove_collaborator(
    full_name: FullNameArg, user: UserArg, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Take a collaborator's access away."""
    with opened_node(data_dir, config) as node:
        found = find(node, full_name)
        member = node.accounts.get_user(user)
        node.repos.remove_collaborator(found.repo, member, sender=ADMINISTRATOR)
    say(f"Removed {member.login} from {found.full_name}.")


@collaborators_app.command("list")
def list_collaborators(
    full_name: FullNameArg, json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """List a repository's collaborators and their access."""
    with opened_node(data_dir, config) as node:
        found = node.repos.collaborators(find(node, full_name).repo)
    if json:
        print_json([{"login": user.login, "permission": permission_label(perm)} for user, perm in found])
        return
    print_table(["Login", "Name", "Permission"], [[u.login, u.name, permission_label(p)] for u, p in found])
