"""Hooks as their owners manage them, and the events that become deliveries.

Every event is turned into one delivery per hook that wants it, with its payload fixed then,
inside the caller's transaction (``Store.transaction``): the outbox holds exactly the changes
that committed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bulwark.errors import NotFound, ValidationFailed
from bulwark.git.runner import ZERO_OID, GitRunner
from bulwark.models import Account, Permission, Repository
from bulwark.store import Store
from bulwark.webhooks import payloads
from bulwark.webhooks.catchup import announced_updates
from bulwark.webhooks.models import Attempt, ContentType, Delivery, Hook
from bulwark.webhooks.store import HookStore
from bulwark.webhooks.transport import check_url

MAX_HOOKS = 20  # per repository or organization, as GitHub allows
_EVENT_NAME = re.compile(r"^(\*|[a-z_]{1,64})$")
_ZEN = (
    "Availability is a feature you only notice when it is missing.",
    "Every acknowledged push is a promise.",
    "Replication copies mistakes; backups remember them.",
    "Deliver at least once; let the receiver count.",
)


def _invalid(message: str, field: str) -> ValidationFailed:
    return ValidationFailed(message, resource="Hook", field=field)


def _events(value: object, field: str = "events") -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(e, str) and _EVENT_NAME.match(e) for e in value):
        raise _invalid(f"'{field}' must be a list of event names such as \"push\" (or \"*\" for all).", field)
    if not value:
        raise _invalid("A hook needs at least one event.", field)
    return tuple(dict.fromkeys(value))


def _flag(value: object, field: str) -> bool:
    # GitHub takes insecure_ssl as "0"/"1" (a string) or a number.
    if isinstance(value, bool):
        return value
    if value in ("0", 0):
        return False
    if value in ("1", 1):
        return True
    raise _invalid(f"'{field}' must be \"0\" or \"1\".", field)


def _config(config: object, current: Hook | None) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise _invalid("'config' must be an object with at least a 'url'.", "config")
    fields: dict[str, Any] = {}
    url = config.get("url", current.url if current else None)
    if not isinstance(url, str) or not url:
        raise _invalid("'config.url' is required: the address deliveries are posted to.", "url")
    fields["url"] = check_url(url)
    content_type = config.get("content_type", current.content_type.value if current else "form")
    try:
        fields["content_type"] = ContentType(content_type)
    except ValueError:
        raise _invalid("'config.content_type' must be \"json\" or \"form\".", "content_type") from None
    secret = config.get("secret", current.secret if current else "")
    if not isinstance(secret, str) or len(secret) > 1024:
        raise _invalid("'config.secret' must be text of at most 1024 characters.", "secret")
    fields["secret"] = secret
    fields["insecure_ssl"] = _flag(config.get("insecure_ssl", current.insecure_ssl if current else "0"),
                                   "insecure_ssl")
    return fields


def hook_fields(data: dict[str, Any], current: Hook | None = None) -> dict[str, Any]:
    """The stored fields of a hook from GitHub's create (``current`` None) or update body."""
    name = data.get("name", "web")
    if name != "web":
        raise _invalid("Only \"web\" hooks exist here: 'name' must be \"web\".", "name")
    fields = _config(data.get("config"), current) if current is None or "config" in data else {}
    events = _events(data["events"]) if "events" in data else (current.events if current else ("push",))
    if current is not None:
        if "add_events" in data:
            events = tuple(dict.fromkeys(events + _events(data["add_events"], "add_events")))
        if "remove_events" in data:
            removed = set(_events(data["remove_events"], "remove_events"))
            events = tuple(e for e in events if e not in removed) or events
    fields["events"] = events
    active = data.get("active", current.active if current else True)
    if not isinstance(active, bool):
        raise _invalid("'active' must be true or false.", "active")
    fields["active"] = active
    return fields


class HookService:
    def __init__(
        self,
        hooks: HookStore,
        store: Store,
        git: GitRunner,
        *,
        base_url: str,
        ssh_clone_url: Callable[[str], str | None],
        queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.hooks = hooks
        self.store = store
        self.git = git
        self.base_url = base_url
        self.ssh_clone_url = ssh_clone_url
        # Called after an event was queued: the deliverer wakes up instead of waiting for its poll.
        self.queued = queued
        self._zen = 0

    # -- hooks ---------------------------------------------------------------------------

    def hooks_of(self, *, repo: Repository | None = None, org: Account | None = None) -> list[Hook]:
        return self.hooks.list_hooks(repo_id=repo.id if repo else None, org_id=org.id if org else None)

    def get(self, hook_id: int, *, repo: Repository | None = None, org: Account | None = None) -> Hook:
        hook = self.hooks.get_hook(hook_id)
        if hook is None:
            raise NotFound("Not Found")
        mismatch = (repo is not None and hook.repo_id != repo.id) or (org is not None and hook.org_id != org.id)
        if mismatch:
            raise NotFound("Not Found")
        return hook

    def create(self, data: dict[str, Any], sender: Account, *, repo: Repository | None = None,
               org: Account | None = None) -> Hook:
        fields = hook_fields(data)
        if len(self.hooks_of(repo=repo, org=org)) >= MAX_HOOKS:
            raise _invalid(f"A {'repository' if repo else 'organization'} has at most {MAX_HOOKS} hooks.", "hooks")
        with self.store.transaction():
            hook = self.hooks.create_hook(repo_id=repo.id if repo else None, org_id=org.id if org else None,
                                          **fields)
            self._ping(hook, sender)
        self.queued()
        return hook

    def update(self, hook: Hook, data: dict[str, Any]) -> Hook:
        return self.hooks.save_hook(replace(hook, **hook_fields(data, hook)))

    def delete(self, hook: Hook) -> None:
        self.hooks.delete_hook(hook.id)

    def ping(self, hook: Hook, sender: Account) -> Delivery:
        delivery = self._ping(hook, sender)
        self.queued()
        return delivery

    def test(self, hook: Hook, repo: Repository, sender: Account) -> Delivery | None:
        """GitHub's test: the latest push to the default branch, again, if the hook takes pushes."""
        if not hook.wants("push"):
            return None
        ref = f"refs/heads/{repo.default_branch}"
        head = self.git.resolve(repo.storage_id, ref)
        if head is None:
            return None
        owner = self._owner(repo)
        commit = self.git.commit(repo.storage_id, head)
        before = commit.parents[0] if commit and commit.parents else ZERO_OID
        body = payloads.push_payload(
            self.base_url, repo, owner, pusher=sender, sender=sender, ref=ref, before=before, after=head,
            commits=[commit] if commit else [], head=commit, forced=False,
        )
        delivery = self._queued(self.hooks.enqueue(hook.id, repo.id, "push", None, self._body(body, owner)))
        self.queued()
        return delivery

    def _ping(self, hook: Hook, sender: Account) -> Delivery:
        self._zen = (self._zen + 1) % len(_ZEN)
        hook_doc = {"type": "Repository" if hook.repo_id else "Organization", "id": hook.id, "name": "web",
                    "active": hook.active, "events": list(hook.events),
                    "config": {"content_type": hook.content_type.value, "insecure_ssl": str(int(hook.insecure_ssl)),
                               "url": hook.url}}
        repo_doc = org_doc = None
        if hook.repo_id is not None:
            repo = self.store.get_repo_by_id(hook.repo_id)
            if repo is not None:
                repo_doc = payloads.repository_json(self.base_url, repo, self._owner(repo))
        elif hook.org_id is not None:
            org = self.store.get_account_by_id(hook.org_id)
            if org is not None:
                org_doc = payloads.org_json(self.base_url, org)
        body = payloads.ping_payload(hook_doc, zen=_ZEN[self._zen], hook_id=hook.id, repo_json=repo_doc,
                                     org_json=org_doc, sender=payloads.user_json(self.base_url, sender))
        return self._queued(self.hooks.enqueue(hook.id, hook.repo_id, "ping", None, json.dumps(body)))

    @staticmethod
    def _queued(delivery: Delivery | None) -> Delivery:
        if delivery is None:
            raise NotFound("Not Found: the hook was deleted")
        return delivery

    # -- deliveries ------------------------------------------------------------------------

    def deliveries(self, hook: Hook, *, limit: int, before: int | None = None) -> list[Delivery]:
        return self.hooks.list_deliveries(hook.id, limit=limit, before=before)

    def delivery(self, hook: Hook, delivery_id: int) -> tuple[Delivery, list[Attempt]]:
        delivery = self.hooks.get_delivery(delivery_id)
        if delivery is None or delivery.hook_id != hook.id:
            raise NotFound("Not Found")
        return delivery, self.hooks.attempts(delivery.id)

    def redeliver(self, hook: Hook, delivery_id: int) -> Delivery:
        """A new delivery of the same event, with the same delivery id (``redelivery`` true)."""
        delivery, _ = self.delivery(hook, delivery_id)
        again = self._queued(self.hooks.enqueue(hook.id, delivery.repo_id, delivery.event, delivery.action,
                                                delivery.payload, guid=delivery.guid, redelivery=True))
        self.queued()
        return again

    def last_attempt(self, hook: Hook) -> Attempt | None:
        return self.hooks.last_attempt(hook.id)

    # -- events ------------------------------------------------------------------------------

    def _owner(self, repo: Repository) -> Account:
        owner = self.store.get_account_by_id(repo.owner_id)
        if owner is None:
            raise NotFound(f"the owner of repository {repo.name} is gone")
        return owner

    def _body(self, body: dict[str, Any], owner: Account) -> str:
        return json.dumps(payloads.with_organization(body, self.base_url, owner if owner.is_org else None))

    def _targets(self, repo: Repository, event: str) -> list[Hook]:
        return [hook for hook in self.hooks.hooks_for(repo.id, repo.owner_id) if hook.wants(event)]

    def push_deliveries(self, repo: Repository, pusher: Account,
                        updates: list[tuple[str, str, str]]) -> list[tuple[int, str, str]]:
        """The deliveries (hook id, event, body) of push, create and delete events for the ref
        updates that landed, read from git; ``enqueue`` writes them."""
        hooks = [hook for hook in self.hooks.hooks_for(repo.id, repo.owner_id) if hook.active]
        if not hooks or not updates:
            return []
        owner = self._owner(repo)
        queued: list[tuple[int, str, str]] = []
        for old, new, ref in updates:
            kind = "branch" if ref.startswith("refs/heads/") else "tag" if ref.startswith("refs/tags/") else None
            events: list[tuple[str, dict[str, Any]]] = []
            if kind and (old == ZERO_OID or new == ZERO_OID):
                verb = "create" if old == ZERO_OID else "delete"
                if any(h.wants(verb) for h in hooks):
                    events.append((verb, payloads.ref_payload(verb, self.base_url, repo, owner, sender=pusher,
                                                              ref=payloads.short_ref(ref), ref_type=kind)))
            if any(h.wants("push") for h in hooks):
                commits = self.git.pushed_commits(repo.storage_id, old, new, ref, limit=payloads.MAX_PUSH_COMMITS)
                forced = old != ZERO_OID and new != ZERO_OID and not self.git.is_ancestor(repo.storage_id, old, new)
                head = commits[-1] if commits else (self.git.commit(repo.storage_id, new) if new != ZERO_OID else None)
                events.append(("push", payloads.push_payload(
                    self.base_url, repo, owner, pusher=pusher, sender=pusher, ref=ref, before=old, after=new,
                    commits=commits, head=head, forced=forced,
                )))
            for event, body in events:
                text = self._body(body, owner)
                queued += [(hook.id, event, text) for hook in hooks if hook.wants(event)]
        return queued

    def enqueue(self, repo: Repository, deliveries: list[tuple[int, str, str]]) -> None:
        for hook_id, event, text in deliveries:
            self.hooks.enqueue(hook_id, repo.id, event, None, text)

    def forget(self, *, repo_id: int | None = None, org_id: int | None = None) -> None:
        for hook in self.hooks.list_hooks(repo_id=repo_id, org_id=org_id) if repo_id or org_id else []:
            self.hooks.delete_hook(hook.id)

    def announced(self, repo: Repository, updates: list[tuple[str, str, str]]) -> None:
        """Note the ref updates of a recorded push as announced (webhooks/catchup.py reads them)."""
        self.hooks.note_refs(repo.id, announced_updates(updates))

    def repository(self, action: str, repo: Repository, sender: Account,
                   changes: dict[str, Any] | None = None) -> int:
        hooks = self._targets(repo, "repository")
        if action == "deleted":
            hooks = [hook for hook in hooks if hook.org_id is not None]  # the repository's own go with it
        if not hooks:
            return 0
        owner = self._owner(repo)
        text = self._body(payloads.repository_payload(action, self.base_url, repo, owner, sender=sender,
                                                      changes=changes), owner)
        for hook in hooks:
            self.hooks.enqueue(hook.id, repo.id, "repository", action, text)
        return len(hooks)

    def member(self, action: str, repo: Repository, sender: Account, member: Account,
               permission: Permission | None = None, old_permission: Permission | None = None) -> int:
        hooks = self._targets(repo, "member")
        if not hooks:
            return 0
        owner = self._owner(repo)
        text = self._body(payloads.member_payload(action, self.base_url, repo, owner, sender=sender, member=member,
                                                  permission=permission, old_permission=old_permission), owner)
        for hook in hooks:
            self.hooks.enqueue(hook.id, repo.id, "member", action, text)
        return len(hooks)

