"""``bulwark token``: personal access tokens, issued on a user's behalf."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, opened_node
from bulwark.cli.output import iso, print_json, print_table, say, when
from bulwark.models import Scope, Token
from bulwark.services.accounts import parse_scopes

app = typer.Typer(help="Issue, list and revoke users' personal access tokens.", no_args_is_help=True)

DEFAULT_SCOPES = (Scope.REPO.value, Scope.USER.value, Scope.READ_ORG.value)

UserArg = Annotated[str, typer.Argument(metavar="USER", help="The login of the token's owner.", show_default=False)]


def _scopes(token: Token) -> list[str]:
    return sorted(s.value for s in token.scopes)


@app.command("create")
def create(
    user: UserArg,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            "-s",
            help=f"A scope to grant; repeat for several ({', '.join(s.value for s in Scope)}). "
            f"Default: {', '.join(DEFAULT_SCOPES)}.",
            show_default=False,
        ),
    ] = None,
    note: Annotated[str, typer.Option("--note", help="What the token is for.")] = "",
    expires_in: Annotated[
        int | None,
        typer.Option(
            "--expires-in",
            metavar="DAYS",
            min=1,
            help="Expire after this many days (default: never).",
            show_default=False,
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print {id, token, scopes, expires_at} as JSON.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Issue a token and print its secret, which is shown this once and never again."""
    with opened_node(data_dir, config) as node:
        scopes = parse_scopes(scope or DEFAULT_SCOPES)
        owner = node.accounts.get_user(user)
        expires_at = node.clock.now() + timedelta(days=expires_in) if expires_in else None
        token, secret = node.accounts.issue_token(owner, scopes, note=note, expires_at=expires_at)
    if json:
        print_json({"id": token.id, "token": secret, "scopes": _scopes(token), "expires_at": iso(token.expires_at)})
        return
    # The secret alone on stdout, so that TOKEN=$(bulwark token create ...) works.
    say(
        f"Token {token.id} for {owner.login} (scopes: {', '.join(_scopes(token))}; "
        f"expires: {when(token.expires_at, 'never')}). Store it now; it is not shown again:",
        err=True,
    )
    print(secret)


@app.command("list")
def list_(user: UserArg, json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List a user's tokens (never their secrets)."""
    with opened_node(data_dir, config) as node:
        tokens = node.store.list_tokens(node.accounts.get_user(user).id)
    if json:
        print_json(
            [
                {
                    "id": t.id,
                    "note": t.note,
                    "prefix": t.token_prefix,
                    "scopes": _scopes(t),
                    "created_at": iso(t.created_at),
                    "expires_at": iso(t.expires_at),
                    "last_used_at": iso(t.last_used_at),
                }
                for t in tokens
            ]
        )
        return
    print_table(
        ["ID", "Note", "Prefix", "Scopes", "Created", "Expires", "Last used"],
        [
            [
                str(t.id),
                t.note,
                t.token_prefix,
                ", ".join(_scopes(t)),
                when(t.created_at),
                when(t.expires_at, "never"),
                when(t.last_used_at, "never"),
            ]
            for t in tokens
        ],
    )


@app.command("revoke")
def revoke(
    user: UserArg,
    token_id: Annotated[int, typer.Argument(metavar="TOKEN_ID", help="The token's id, from 'bulwark token list'.")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke one of a user's tokens; it stops working at once."""
    with opened_node(data_dir, config) as node:
        owner = node.accounts.get_user(user)
        node.accounts.revoke_token(owner, token_id)
    say(f"Revoked token {token_id} of {owner.login}.")
