"""Webhooks end to end: hooks managed with a GitHub client library, deliveries to a real receiver
process that checks signatures, an outage it recovers from, the SSRF guard, a node killed
with SIGKILL in the middle of a burst of pushes without losing an acknowledged one, and ref
moves git holds that no event announced, announced when the node starts."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from github import Auth, Github, GithubException

from tests.support.helpers import Server, bulwark, free_port, git
from tests.support.monitoring_helpers import CALM, scrape
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.timeout(420), pytest.mark.system]

SECRET = "It's a Secret to Everybody"


@pytest.fixture
def node(tmp_path: Path) -> Any:
    srv = Server(data_dir=tmp_path / "node", extra_env={"BULWARK_WEBHOOK_ALLOW_PRIVATE": "1"}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def receiver(tmp_path: Path) -> Any:
    rec = Receiver(free_port(), tmp_path / "received.jsonl", SECRET).start()
    try:
        yield rec
    finally:
        rec.stop()


def clone_with_commit(srv: Server, genv: dict[str, str], work: Path, url: str) -> None:
    git("clone", "-q", url, str(work), env=genv)
    (work / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=work, env=genv)
    git("commit", "-q", "-m", "first", cwd=work, env=genv)


def deliveries(srv: Server, owner: str, repo: str, hook_id: int) -> list[dict[str, Any]]:
    r = srv.api("GET", f"/repos/{owner}/{repo}/hooks/{hook_id}/deliveries?per_page=100")
    assert r.status_code == 200, r.text
    return list(r.json())


def wait_until(check: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_hooks_through_a_github_client_and_pushes_reach_a_signing_receiver(
    node: Server, receiver: Receiver, genv: dict[str, str], tmp_path: Path
) -> None:
    gh = Github(base_url=f"{node.url}/api/v3", auth=Auth.Token(node.token), retry=None)
    node.create_repo(node.token, "app")
    repo = gh.get_repo("admin/app")
    hook = repo.create_hook("web", {"url": receiver.url, "content_type": "json", "secret": SECRET},
                            events=["push", "create", "delete", "repository", "member"], active=True)
    assert hook.config["secret"] == "********" and hook.config["url"] == receiver.url
    [ping] = receiver.wait_for(1, "ping")
    assert ping["signed"] and ping["payload"]["hook_id"] == hook.id and ping["user_agent"].startswith(
        "Bulwark-Hookshot/")

    work = tmp_path / "work"
    clone_with_commit(node, genv, work, node.remote("admin", "app", token=node.token))
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work, env=genv)
    head = git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip()
    git("tag", "v1", cwd=work, env=genv)
    git("push", "-q", "origin", "v1", cwd=work, env=genv)
    git("push", "-q", "origin", ":refs/tags/v1", cwd=work, env=genv)

    pushes = receiver.wait_for(3, "push")
    assert all(r["signed"] for r in receiver.records())
    first = pushes[0]["payload"]
    assert first["ref"] == "refs/heads/main" and first["after"] == head and first["created"]
    assert [c["id"] for c in first["commits"]] == [head] and first["head_commit"]["message"] == "first"
    assert first["pusher"]["name"] == "admin" and first["repository"]["full_name"] == "admin/app"
    assert pushes[2]["payload"]["deleted"] and pushes[2]["payload"]["ref"] == "refs/tags/v1"
    creates = receiver.wait_for(2, "create")
    assert [(r["payload"]["ref"], r["payload"]["ref_type"]) for r in creates] == [("main", "branch"), ("v1", "tag")]
    [deleted] = receiver.wait_for(1, "delete")
    assert deleted["payload"]["ref"] == "v1"

    # A forced push says so.
    git("commit", "-q", "--amend", "-m", "rewritten", cwd=work, env=genv)
    git("push", "-q", "-f", "origin", "HEAD:refs/heads/main", cwd=work, env=genv)
    assert receiver.wait_for(4, "push")[3]["payload"]["forced"] is True

    repo.edit(name="app2")
    [renamed] = receiver.wait_for(1, "repository")
    assert renamed["payload"]["action"] == "renamed"
    assert renamed["payload"]["changes"] == {"repository": {"name": {"from": "app"}}}
    # The administrator at the command line renames it back and forth: the server is the sender.
    for old, name in (("app2", "app3"), ("app3", "app2")):
        done = bulwark("repo", "rename", f"admin/{old}", name, env=node.env())
        assert done.returncode == 0, done.stderr
    by_cli = receiver.wait_for(3, "repository")[1:]
    assert [r["payload"]["repository"]["name"] for r in by_cli] == ["app3", "app2"]
    assert all(r["payload"]["sender"]["login"] == "bulwark[bot]" for r in by_cli)

    # A collaborator added, then given more: the edit says from what.
    node.create_user("bob")
    gh.get_repo("admin/app2").add_to_collaborators("bob", "push")
    gh.get_repo("admin/app2").add_to_collaborators("bob", "admin")
    added, edited = (r["payload"] for r in receiver.wait_for(2, "member"))
    assert added["action"] == "added" and added["member"]["login"] == "bob"
    assert edited["action"] == "edited"
    assert edited["changes"]["permission"] == {"from": "write", "to": "admin"}

    # The deliveries API, and a redelivery that keeps the delivery id.
    repo = gh.get_repo("admin/app2")
    listed = list(repo.get_hook_deliveries(hook.id))
    assert len(listed) == len(receiver.records()) and all(d.status_code == 200 for d in listed)
    assert listed[-1].id is not None
    one = repo.get_hook_delivery(hook.id, listed[-1].id)
    assert one.request is not None and one.request.payload is not None and one.response is not None
    assert one.request.payload["zen"] and one.response.payload == "ok"
    r = node.api("POST", f"/repos/admin/app2/hooks/{hook.id}/deliveries/{listed[-1].id}/attempts")
    assert r.status_code == 202 and r.json()["redelivery"] is True
    again = receiver.wait_for(2, "ping")
    assert again[1]["guid"] == again[0]["guid"]
    assert repo.get_hook(hook.id).last_response.status == "active"

    hook = repo.get_hook(hook.id)  # its URL names the repository's new name
    hook.edit("web", {"url": receiver.url, "content_type": "form"}, events=["push"], active=True)
    edited = repo.get_hook(hook.id)
    assert edited.config["content_type"] == "form" and edited.config["secret"] == "********"  # the secret stays
    hook.ping()
    ping3 = receiver.wait_for(3, "ping")[2]
    assert ping3["content_type"] == "application/x-www-form-urlencoded" and ping3["signed"]
    hook.test()
    assert receiver.wait_for(5, "push")[4]["payload"]["ref"] == "refs/heads/main"
    hook.delete()
    with pytest.raises(GithubException) as gone:
        repo.get_hook(hook.id)
    assert gone.value.status == 404


def test_bad_hooks_are_refused_in_github_words_and_others_see_nothing(node: Server) -> None:
    node.create_repo(node.token, "app", private=True)
    bad = [
        ({"config": {}}, "url"),
        ({"config": {"url": "ftp://example.com/"}}, "url"),
        ({"config": {"url": "http://user:pw@example.com/"}}, "url"),
        ({"config": {"url": "https://example.com/", "content_type": "xml"}}, "content_type"),
        ({"config": {"url": "https://example.com/"}, "events": "push"}, "events"),
        ({"config": {"url": "https://example.com/"}, "events": []}, "events"),
        ({"config": {"url": "https://example.com/", "insecure_ssl": "yes"}}, "insecure_ssl"),
        ({"name": "email", "config": {"url": "https://example.com/"}}, "name"),
    ]
    for body, field in bad:
        r = node.api("POST", "/repos/admin/app/hooks", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"][0]["field"] == field, (body, r.json())
    r = node.api("POST", "/repos/admin/app/hooks", json={"config": {"url": "https://example.com/", "secret": "x"}})
    assert r.status_code == 201
    hook_id = r.json()["id"]
    assert r.json()["events"] == ["push"]
    # Someone else: the private repository and its hooks do not exist for them.
    other = node.create_user("mallory")
    for method, path in [("GET", "/repos/admin/app/hooks"), ("GET", f"/repos/admin/app/hooks/{hook_id}"),
                         ("POST", f"/repos/admin/app/hooks/{hook_id}/pings")]:
        assert node.api(method, path, token=other).status_code == 404
    assert node.api("GET", "/repos/admin/app/hooks/999999").status_code == 404
    assert node.api("GET", f"/repos/admin/app/hooks/{hook_id}/deliveries/abc").status_code == 404


def test_a_private_address_is_refused_unless_allowed(tmp_path: Path, receiver: Receiver) -> None:
    srv = Server(data_dir=tmp_path / "guarded").start()
    try:
        srv.create_repo(srv.token, "app")
        r = srv.api("POST", "/repos/admin/app/hooks", json={"config": {"url": receiver.url}})
        assert r.status_code == 201
        hook_id = r.json()["id"]

        def refused() -> Any:
            found = deliveries(srv, "admin", "app", hook_id)
            return found if found and found[0]["attempts"] >= 1 else None

        [ping] = wait_until(refused, what="the ping's first attempt")
        detail = srv.api("GET", f"/repos/admin/app/hooks/{hook_id}/deliveries/{ping['id']}").json()
        assert "loopback" in detail["attempt_log"][0]["error"]
        assert receiver.records() == []  # nothing reached the receiver
        last = srv.api("GET", f"/repos/admin/app/hooks/{hook_id}").json()["last_response"]
        assert last["status"] == "failing" and "loopback" in last["message"]
    finally:
        srv.stop()


def test_a_receiver_outage_ends_with_every_event_delivered_in_order(
    node: Server, tmp_path: Path, genv: dict[str, str]
) -> None:
    receiver = Receiver(free_port(), tmp_path / "outage.jsonl", SECRET)  # not started: down
    node.create_repo(node.token, "app")
    r = node.api("POST", "/repos/admin/app/hooks", json={"config": {"url": receiver.url, "content_type": "json",
                                                                    "secret": SECRET}, "events": ["push"]})
    hook_id = r.json()["id"]
    work = tmp_path / "work"
    clone_with_commit(node, genv, work, node.remote("admin", "app", token=node.token))
    pushed = []
    for i in range(5):
        (work / f"f{i}").write_text(str(i))
        git("add", ".", cwd=work, env=genv)
        git("commit", "-q", "-m", f"c{i}", cwd=work, env=genv)
        git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work, env=genv)
        pushed.append(git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip())
    # The ping fails first; the pushes wait behind it, in order.
    wait_until(lambda: any(d["attempts"] >= 1 for d in deliveries(node, "admin", "app", hook_id)),
               what="a failed attempt")
    failing = node.api("GET", f"/repos/admin/app/hooks/{hook_id}").json()["last_response"]
    assert failing["status"] == "failing" and "could not connect" in failing["message"]
    # The administrator sees it in their tools: status (Nagios WARNING), metrics and the CLI.
    status = bulwark("status", "--json", *CALM, env=node.env())
    assert status.returncode == 1, status.stdout + status.stderr
    [check] = [c for c in json.loads(status.stdout)["checks"] if c["check"] == "webhooks"]
    assert check["level"] == "WARNING" and "1 hooks failing" in check["detail"]
    metrics = scrape(node.url, node.token)
    assert metrics.value("bulwark_webhook_failing_hooks") == 1
    assert metrics.value("bulwark_webhook_deliveries_pending") == 6
    listed = bulwark("hook", "list", "admin/app", env=node.env())
    assert listed.returncode == 0 and "failing: could not connect" in listed.stdout, listed.stdout + listed.stderr
    receiver.start()
    try:
        got = receiver.wait_for(5, "push", timeout=90)
        assert [r["payload"]["after"] for r in got] == pushed
        assert all(r["signed"] for r in got)
    finally:
        receiver.stop()


def test_kill_9_of_the_node_in_a_burst_loses_no_acknowledged_push(tmp_path: Path, genv: dict[str, str]) -> None:
    # A slow receiver keeps deliveries in flight and pending when the node dies.
    receiver = Receiver(free_port(), tmp_path / "burst.jsonl", SECRET, delay=0.05).start()
    srv = Server(data_dir=tmp_path / "node", extra_env={"BULWARK_WEBHOOK_ALLOW_PRIVATE": "1"}).start()
    try:
        srv.create_repo(srv.token, "app")
        r = srv.api("POST", "/repos/admin/app/hooks",
                    json={"config": {"url": receiver.url, "content_type": "json", "secret": SECRET},
                          "events": ["push"]})
        assert r.status_code == 201
        work = tmp_path / "work"
        clone_with_commit(srv, genv, work, srv.remote("admin", "app", token=srv.token))
        acked: list[str] = []
        stop = threading.Event()

        def pushing() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                (work / "n").write_text(str(i))
                git("add", "n", cwd=work, env=genv)
                git("commit", "-q", "-m", f"n{i}", cwd=work, env=genv)
                out = git("push", "-q", srv.remote("admin", "app", token=srv.token), "HEAD:refs/heads/main",
                          cwd=work, env=genv, check=False, timeout=60)
                if out.returncode == 0:
                    acked.append(git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip())
                else:
                    # The node died under this push: the next one starts from what the server has.
                    time.sleep(0.2)
                    git("fetch", "-q", srv.remote("admin", "app", token=srv.token), "main", cwd=work, env=genv,
                        check=False)
                    git("reset", "-q", "--hard", "FETCH_HEAD", cwd=work, env=genv, check=False)

        worker = threading.Thread(target=pushing)
        worker.start()
        try:
            for _round in range(3):
                before = len(acked)
                wait_until(lambda before=before: len(acked) >= before + 4, timeout=120, what="pushes")
                assert srv.proc is not None
                os.killpg(srv.proc.pid, signal.SIGKILL)
                srv.proc.wait(10)
                time.sleep(0.5)
                srv.start()
            wait_until(lambda: len(acked) >= 15, timeout=120, what="the last pushes")
        finally:
            stop.set()
            worker.join(120)
        wait_until(lambda: {r["payload"]["after"] for r in receiver.records("push")} >= set(acked), timeout=120,
                   what="every acknowledged push's delivery")
        got = receiver.records("push")
        by_guid = collections.Counter(r["guid"] for r in got)
        duplicates = sum(n - 1 for n in by_guid.values())
        lost = set(acked) - {r["payload"]["after"] for r in got}
        print(f"{len(acked)} acknowledged pushes, {len(got)} push deliveries, {len(lost)} lost, "
              f"{duplicates} duplicates")
        assert not lost
        # What the server holds was announced too, a push that landed as the node died included.
        held = git("ls-remote", srv.remote("admin", "app", token=srv.token), "refs/heads/main",
                   env=genv).stdout.split()[0]
        wait_until(lambda: held in {r["payload"]["after"] for r in receiver.records("push")}, timeout=60,
                   what="the delivery of the branch as the server holds it")
        assert all(r["signed"] for r in got)
    finally:
        srv.stop()
        receiver.stop()


def test_ref_moves_no_event_announced_are_announced_when_the_node_starts(
    tmp_path: Path, receiver: Receiver, genv: dict[str, str]
) -> None:
    # What a node killed between git moving a push's refs and recording the push leaves: the
    # refs moved in the repository on disk, and nothing recorded. Made here by pushing to the
    # repository's directory while the node is down.
    srv = Server(data_dir=tmp_path / "node", extra_env={"BULWARK_WEBHOOK_ALLOW_PRIVATE": "1"}).start()
    try:
        srv.create_repo(srv.token, "app")
        r = srv.api("POST", "/repos/admin/app/hooks",
                    json={"config": {"url": receiver.url, "content_type": "json", "secret": SECRET},
                          "events": ["push", "create", "delete"]})
        assert r.status_code == 201, r.text
        work = tmp_path / "work"
        clone_with_commit(srv, genv, work, srv.remote("admin", "app", token=srv.token))
        git("push", "-q", "origin", "HEAD:refs/heads/main", "HEAD:refs/tags/v1", cwd=work, env=genv)
        first = git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip()
        receiver.wait_for(2, "push")
        assert srv.proc is not None
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)

        [bare] = (srv.data_dir / "repositories").glob("*/*.git")
        (work / "n").write_text("behind the server's back\n")
        git("add", "n", cwd=work, env=genv)
        git("commit", "-q", "-m", "unrecorded", cwd=work, env=genv)
        second = git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip()
        git("push", "-q", str(bare), "HEAD:refs/heads/main", "HEAD:refs/heads/feature", ":refs/tags/v1",
            cwd=work, env=genv)

        srv.start()
        pushes = receiver.wait_for(5, "push")[2:]
        moves = {p["payload"]["ref"]: (p["payload"]["before"], p["payload"]["after"]) for p in pushes}
        zero = "0" * 40
        assert moves == {"refs/heads/main": (first, second), "refs/heads/feature": (zero, second),
                         "refs/tags/v1": (first, zero)}
        assert all(p["payload"]["pusher"]["name"] == "bulwark[bot]" and p["signed"] for p in pushes)
        [main] = [p["payload"] for p in pushes if p["payload"]["ref"] == "refs/heads/main"]
        assert [c["id"] for c in main["commits"]] == [second] and main["head_commit"]["message"] == "unrecorded"
        created = receiver.wait_for(3, "create")
        assert [(c["payload"]["ref"], c["payload"]["ref_type"]) for c in created][2] == ("feature", "branch")
        assert created[2]["payload"]["sender"]["login"] == "bulwark[bot]"
        [deleted] = receiver.wait_for(1, "delete")
        assert deleted["payload"]["ref"] == "v1"

        # Announced once: after another restart and a push, nothing was said twice.
        srv.stop()
        srv.start()
        (work / "n").write_text("recorded\n")
        git("commit", "-q", "-am", "recorded", cwd=work, env=genv)
        git("push", "-q", srv.remote("admin", "app", token=srv.token), "HEAD:refs/heads/main", cwd=work, env=genv)
        receiver.wait_for(6, "push")
        pushes = receiver.records("push")
        assert len(pushes) == 6 and pushes[-1]["payload"]["pusher"]["name"] == "admin"
    finally:
        srv.stop()
