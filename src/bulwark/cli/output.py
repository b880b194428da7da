"""How commands print: rich tables on a terminal, tab-separated text in a pipe, JSON on request."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from bulwark.cli.common import console, err_console, fail
from bulwark.models import Account, OrgRole, Permission


def say(message: str, *, err: bool = False) -> None:
    """A message for people, printed as is (names and messages may contain brackets)."""
    (err_console if err else console).print(message, markup=False, highlight=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table for people on a terminal; one tab-separated line per row for scripts."""
    if console.is_terminal:
        table = Table(*columns, highlight=False)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
    else:
        for line in (columns, *rows):
            print("\t".join(line))


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """One record as aligned ``label: value`` lines."""
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label + ':':<{width + 1}} {value}")


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def when(value: datetime | None, missing: str = "-") -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if value else missing


def size(n: int) -> str:
    amount, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{n} B" if unit == "B" else f"{amount:.1f} {unit}"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def role_label(role: OrgRole) -> str:
    # The API calls an owner "admin" as GitHub does; people call them owners.
    return "owner" if role is OrgRole.OWNER else "member"


def permission_label(permission: Permission) -> str:
    return permission.name.lower()


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "login": account.login,
        "type": account.type.value,
        "name": account.name,
        "email": account.email,
        "site_admin": account.site_admin,
        "suspended": account.suspended,
        "created_at": iso(account.created_at),
        "updated_at": iso(account.updated_at),
    }


def confirm(question: str, *, yes: bool) -> None:
    """Go on only if ``--yes`` was given or someone at a terminal agrees."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail("not confirmed: pass --yes to run this without a terminal")
    try:
        answer = input(f"{question} [y/N] ").strip().lower()
    except EOFError:
        answer = ""
    if answer not in ("y", "yes"):
        raise fail("aborted")
