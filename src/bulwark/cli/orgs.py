"""``bulwark org``: organizations and their members."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, opened_node
from bulwark.cli.output import account_json, confirm, print_json, print_table, role_label, say, when
from bulwark.models import AccountType, OrgRole

app = typer.Typer(help="Manage organizations and their members.", no_args_is_help=True)


class Role(enum.StrEnum):
    MEMBER = "member"
    OWNER = "owner"

    @property
    def org_role(self) -> OrgRole:
        return OrgRole.OWNER if self is Role.OWNER else OrgRole.MEMBER


OrgArg = Annotated[str, typer.Argument(metavar="ORG", help="The organization's login.", show_default=False)]
UserArg = Annotated[str, typer.Argument(metavar="USER", help="The member's login.", show_default=False)]


@app.command("create")
def create(
    login: Annotated[str, typer.Argument(metavar="LOGIN", help="The new organization's login.", show_default=False)],
    owner: Annotated[
        str, typer.Option("--owner", metavar="USER", help="The user who becomes its first owner.", show_default=False)
    ],
    name: Annotated[str, typer.Option("--name", help="The organization's display name.")] = "",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create an organization owned by an existing user."""
    with opened_node(data_dir, config) as node:
        org = node.accounts.create_org(login, owner=node.accounts.get_user(owner), name=name)
    say(f"Created organization {org.login}, owned by {owner}.")


@app.command("list")
def list_(json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List every organization."""
    with opened_node(data_dir, config) as node:
        rows = [
            (org, len(node.store.list_members(org.id)), len(node.store.list_repos(org.id)))
            for org in node.store.list_accounts(AccountType.ORGANIZATION)
        ]
    if json:
        print_json([{**account_json(o), "members": m, "repositories": r} for o, m, r in rows])
        return
    print_table(
        ["Login", "Name", "Members", "Repositories", "Created"],
        [[o.login, o.name, str(m), str(r), when(o.created_at)] for o, m, r in rows],
    )


@app.command("members")
def members(org: OrgArg, json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List an organization's members and their roles."""
    with opened_node(data_dir, config) as node:
        found = node.accounts.members(node.accounts.get_org(org))
    if json:
        print_json([{"login": user.login, "role": role_label(role)} for user, role in found])
        return
    print_table(["Login", "Name", "Role"], [[user.login, user.name, role_label(role)] for user, role in found])


@app.command("add-member")
def add_member(
    org: OrgArg,
    user: UserArg,
    role: Annotated[Role, typer.Option("--role", help="The member's role.")] = Role.MEMBER,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Add a user to an organization, or change their role."""
    with opened_node(data_dir, config) as node:
        found = node.accounts.get_org(org)
        member = node.accounts.get_user(user)
        node.accounts.set_member(found, member, role.org_role)
    say(f"{member.login} is now {'an owner' if role is Role.OWNER else 'a member'} of {found.login}.")


@app.command("remove-member")
def remove_member(org: OrgArg, user: UserArg, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Remove a user from an organization (never its last owner)."""
    with opened_node(data_dir, config) as node:
        found = node.accounts.get_org(org)
        member = node.accounts.get_user(user)
        node.accounts.remove_member(found, member)
    say(f"Removed {member.login} from {found.login}.")


@app.command("delete")
def delete(
    org: OrgArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete an organization with its memberships and repositories (data included)."""
    with opened_node(data_dir, config) as node:
        found = node.accounts.get_org(org)
        count = len(node.store.list_repos(found.id))
        confirm(f"Delete organization {found.login} and its {count} repositories, data included?", yes=yes)
        node.repos.delete_account(found)
    say(f"Deleted organization {found.login} and {count} repositories.")
