"""``bulwark hook``: the site's webhooks, their deliveries, and redelivery, for the administrator."""

from __future__ import annotations

from typing import Annotated

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, fail, opened_node
from bulwark.cli.output import iso, print_json, print_table, say, when
from bulwark.errors import NotFound
from bulwark.node import Node
from bulwark.roles import NodeRole
from bulwark.webhooks.models import Delivery, DeliveryState, Hook
from bulwark.webhooks.service import HookService

app = typer.Typer(help="List webhooks and their deliveries, and send deliveries again.", no_args_is_help=True)


def _service(node: Node) -> HookService:
    if node.webhooks is None:
        raise fail("this node keeps no webhooks")
    return node.webhooks


def _hook(service: HookService, hook_id: int) -> Hook:
    try:
        return service.get(hook_id)
    except NotFound:
        raise fail(f"there is no hook {hook_id}: 'bulwark hook list' shows them") from None


def _owner_of(node: Node, hook: Hook) -> str:
    if hook.repo_id is not None:
        repo = node.store.get_repo_by_id(hook.repo_id)
        owner = node.store.get_account_by_id(repo.owner_id) if repo else None
        return f"{owner.login}/{repo.name}" if owner and repo else f"repository {hook.repo_id}"
    org = node.store.get_account_by_id(hook.org_id or 0)
    return f"{org.login} (organization)" if org else f"organization {hook.org_id}"


def _status(delivery: Delivery) -> str:
    if delivery.state is DeliveryState.DELIVERED:
        return f"delivered ({delivery.status_code})"
    if delivery.state is DeliveryState.GAVE_UP:
        return f"gave up after {delivery.attempts} attempts"
    if delivery.attempts == 0:
        return "pending"
    return f"retrying ({delivery.attempts} failed, next {when(delivery.next_at)})"


@app.command("list")
def list_hooks(
    owner: Annotated[str | None, typer.Argument(
        metavar="[OWNER/REPO|ORG]", help="Only this repository's or organization's hooks.", show_default=False)] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The webhooks, with what became of each one's latest delivery."""
    with opened_node(data_dir, config) as node:
        service = _service(node)
        if owner is None:
            hooks = service.hooks.list_hooks()
        elif "/" in owner:
            hooks = service.hooks_of(repo=node.repos.get_by_name(*owner.split("/", 1)).repo)
        else:
            hooks = service.hooks_of(org=node.accounts.get_org(owner))
        rows = []
        for hook in hooks:
            last = service.last_attempt(hook)
            state = "unused" if last is None else "ok" if last.ok else f"failing: {last.error or last.status_code}"
            rows.append((hook, _owner_of(node, hook), state, last))
    if as_json:
        print_json([{"id": h.id, "owner": o, "url": h.url, "events": list(h.events), "active": h.active,
                     "last_response": s, "last_at": iso(last.at) if last else None} for h, o, s, last in rows])
        return
    if not rows:
        say("no webhooks")
        return
    print_table(("ID", "OWNER", "URL", "EVENTS", "ACTIVE", "LAST DELIVERY"),
                [(str(h.id), o, h.url, ",".join(h.events), "yes" if h.active else "no", s) for h, o, s, _ in rows])


@app.command("deliveries")
def deliveries(
    hook_id: Annotated[int, typer.Argument(metavar="HOOK_ID", help="The hook (see 'bulwark hook list').")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many, newest first.")] = 30,
    failed: Annotated[bool, typer.Option("--failed", help="Only deliveries not delivered yet or given up.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A hook's deliveries, newest first: event, delivery id, and whether it arrived."""
    with opened_node(data_dir, config) as node:
        service = _service(node)
        hook = _hook(service, hook_id)
        found = service.deliveries(hook, limit=limit if not failed else 1000)
        if failed:
            found = [d for d in found if d.state is not DeliveryState.DELIVERED][:limit]
    if as_json:
        print_json([{"id": d.id, "guid": d.guid, "event": d.event, "action": d.action, "state": d.state.value,
                     "attempts": d.attempts, "status_code": d.status_code, "created_at": iso(d.created_at),
                     "redelivery": d.redelivery} for d in found])
        return
    if not found:
        say("no deliveries")
        return
    print_table(("ID", "EVENT", "DELIVERY ID", "QUEUED", "STATUS"),
                [(str(d.id), d.event + (f".{d.action}" if d.action else ""), d.guid, when(d.created_at), _status(d))
                 for d in found])


@app.command("redeliver")
def redeliver(
    hook_id: Annotated[int, typer.Argument(metavar="HOOK_ID", help="The hook.")],
    delivery_ids: Annotated[list[int] | None, typer.Argument(
        metavar="[DELIVERY_ID]...", help="The deliveries to send again.", show_default=False)] = None,
    gave_up: Annotated[bool, typer.Option(
        "--gave-up", help="Every delivery of the hook that was given up (after 24 h of failures).")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Send deliveries again, with the same delivery ids; a running node sends them within a second."""
    if not delivery_ids and not gave_up:
        raise fail("name the deliveries to send again, or pass --gave-up")
    with opened_node(data_dir, config) as node:
        if node.role is NodeRole.HA_REPLICA:
            raise fail("this node is a replica: redeliver on the primary")
        service = _service(node)
        hook = _hook(service, hook_id)
        ids = list(delivery_ids or [])
        if gave_up:
            ids += [d.id for d in service.deliveries(hook, limit=10_000) if d.state is DeliveryState.GAVE_UP]
        if not ids:
            say("nothing to send again: no delivery of this hook was given up")
            return
        for delivery_id in ids:
            try:
                again = service.redeliver(hook, delivery_id)
            except NotFound:
                raise fail(f"hook {hook_id} has no delivery {delivery_id}") from None
            say(f"queued delivery {again.guid} ({again.event}) again")
