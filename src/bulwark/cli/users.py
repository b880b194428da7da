"""``bulwark user``: create, inspect, suspend, promote and delete users."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, fail, opened_node
from bulwark.cli.output import (
    account_json,
    confirm,
    print_fields,
    print_json,
    print_table,
    say,
    when,
    yes_no,
)
from bulwark.models import AccountType

app = typer.Typer(
    help="Manage users: create, list, show, suspend, promote, set passwords and delete.",
    no_args_is_help=True,
)

LoginArg = Annotated[str, typer.Argument(metavar="LOGIN", help="The user's login.", show_default=False)]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def read_password() -> str:
    """A new password from stdin: typed twice at a terminal, one line when piped."""
    if sys.stdin.isatty():
        try:
            first = getpass.getpass("New password: ")
            second = getpass.getpass("Repeat the password: ")
        except EOFError:
            raise fail("no password given") from None
        if first != second:
            raise fail("the passwords do not match")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise fail("no password given on stdin")
    return password


@app.command("create")
def create(
    login: LoginArg,
    email: Annotated[str, typer.Option("--email", help="The user's email address.")] = "",
    name: Annotated[str, typer.Option("--name", help="The user's display name.")] = "",
    site_admin: Annotated[bool, typer.Option("--site-admin", help="Make the user a site administrator.")] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read a password from stdin (asked twice on a terminal). Without it the user "
            "signs in with tokens only.",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a user."""
    password = read_password() if password_stdin else None
    with opened_node(data_dir, config) as node:
        user = node.accounts.create_user(login, name=name, email=email, site_admin=site_admin, password=password)
    role = " (site administrator)" if user.site_admin else ""
    say(f"Created user {user.login}{role}.")


@app.command("list")
def list_(json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List every user."""
    with opened_node(data_dir, config) as node:
        users = node.store.list_accounts(AccountType.USER)
    if json:
        print_json([account_json(u) for u in users])
        return
    print_table(
        ["Login", "Name", "Email", "Site admin", "Suspended", "Created"],
        [[u.login, u.name, u.email, yes_no(u.site_admin), yes_no(u.suspended), when(u.created_at)] for u in users],
    )


@app.command("show")
def show(
    login: LoginArg, json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Show one user, with their organizations, repositories and token count."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.get_user(login)
        orgs = [o.login for o in node.accounts.orgs_of(user)]
        repos = [r.name for r in node.store.list_repos(user.id)]
        tokens = len(node.store.list_tokens(user.id))
    if json:
        print_json({**account_json(user), "organizations": orgs, "repositories": repos, "tokens": tokens})
        return
    print_fields(
        [
            ("Login", user.login),
            ("Name", user.name or "-"),
            ("Email", user.email or "-"),
            ("Site admin", yes_no(user.site_admin)),
            ("Suspended", yes_no(user.suspended)),
            ("Created", when(user.created_at)),
            ("Organizations", ", ".join(orgs) or "-"),
            ("Repositories", ", ".join(f"{user.login}/{r}" for r in repos) or "-"),
            ("Tokens", str(tokens)),
        ]
    )


@app.command("suspend")
def suspend(login: LoginArg, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Suspend a user: their tokens and password stop working until unsuspended."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.set_suspended(node.accounts.get_user(login), True)
    say(f"Suspended {user.login}.")


@app.command("unsuspend")
def unsuspend(login: LoginArg, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Lift a user's suspension."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.set_suspended(node.accounts.get_user(login), False)
    say(f"Unsuspended {user.login}.")


@app.command("promote")
def promote(login: LoginArg, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Make a user a site administrator."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.set_site_admin(node.accounts.get_user(login), True)
    say(f"{user.login} is now a site administrator.")


@app.command("demote")
def demote(login: LoginArg, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Take a user's site administrator role away (never from the last one)."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.set_site_admin(node.accounts.get_user(login), False)
    say(f"{user.login} is no longer a site administrator.")


@app.command("delete")
def delete(
    login: LoginArg, yes: YesOption = False, data_dir: DataDirOption = None, config: ConfigOption = None
) -> None:
    """Delete a user with their tokens, memberships and repositories (data included)."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.get_user(login)
        node.accounts.check_deletable(user)
        count = len(node.store.list_repos(user.id))
        confirm(f"Delete user {user.login} and their {count} repositories, data included?", yes=yes)
        node.repos.delete_account(user)
    say(f"Deleted user {user.login} and {count} repositories.")


@app.command("passwd")
def passwd(login: LoginArg, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Set a user's password, read from stdin (asked twice on a terminal)."""
    with opened_node(data_dir, config) as node:
        user = node.accounts.get_user(login)
        node.accounts.set_password(user, read_password())
    say(f"Password of {user.login} changed.")
