"""The two servers' repositories, seeded once from the generated sources and cached.

Bulwark: a data dir made by a real ``bulwark serve``: the user ``bench`` is created through the
admin API, every repository through ``POST /user/repos`` (public), and the data is pushed in with
``git push`` over HTTP. Nothing is placed in its data dir by hand.

Reference: ``git init --bare`` per repository under the project root, and the same ``git push``
from the same sources to the repository's path (the same ``receive-pack`` the server would run),
so both sides keep the same packs on disk.

Each run serves copies of these, so a run never changes the cache.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bulwark
from bench.common import client_env, run_git
from bench.data import Sources
from tests.support.helpers import Server, admin_token

OWNER = "bench"
LARGE = "large"
JOBS = 4  # pushes at a time while seeding
LARGE_REFSPECS = ["refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"]


@dataclass(frozen=True)
class Seeded:
    bulwark_data: Path  # a Bulwark data dir (admin token: helpers.admin_token())
    user_token: str  # a token of `bench`, with the repo and delete_repo scopes
    reference_root: Path  # GIT_PROJECT_ROOT of the reference server
    small_names: list[str]


def _parallel(items: list[str], work: Callable[[str], None]) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()


def _marker(sources: Sources) -> str:
    return json.dumps({"spec": sources.spec.name, "tip": sources.large_tip(), "bulwark": bulwark.__version__},
                      sort_keys=True)


def seed_reference(sources: Sources, base: Path) -> Path:
    root = base / "root"
    marker = base / "seeded.json"
    if marker.is_file() and marker.read_text() == _marker(sources):
        return root
    if base.exists():
        shutil.rmtree(base)
    (root / OWNER).mkdir(parents=True)
    env = client_env(base)

    def push(name: str, source: Path, refspecs: list[str]) -> None:
        target = root / OWNER / f"{name}.git"
        run_git(["init", "-q", "--bare", str(target)], env)
        run_git(["push", "-q", str(target), *refspecs], env, cwd=source)

    push(LARGE, sources.large, LARGE_REFSPECS)
    _parallel(sources.small_branches(), lambda b: push(b, sources.small, [f"refs/heads/{b}:refs/heads/main"]))
    marker.write_text(_marker(sources))
    return root


def seed_bulwark(sources: Sources, base: Path) -> tuple[Path, str]:
    data = base / "data"
    marker = base / "seeded.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("marker") == _marker(sources):
            return data, str(saved["token"])
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    env = client_env(base)
    server = Server(data_dir=data, token=admin_token()).start()
    try:
        token = server.create_user(OWNER)
        server.create_repo(token, LARGE)
        run_git(["push", "-q", server.remote(OWNER, LARGE, token=token), *LARGE_REFSPECS], env, cwd=sources.large)

        def push(branch: str) -> None:
            server.create_repo(token, branch)
            run_git(["push", "-q", server.remote(OWNER, branch, token=token), f"refs/heads/{branch}:refs/heads/main"],
                    env, cwd=sources.small)

        _parallel(sources.small_branches(), push)
    finally:
        server.stop()
    marker.write_text(json.dumps({"marker": _marker(sources), "token": token}))
    return data, token


def seed(sources: Sources, data_dir: Path) -> Seeded:
    base = data_dir / sources.spec.name
    root = seed_reference(sources, base / "reference")
    bulwark_data, token = seed_bulwark(sources, base / "bulwark")
    return Seeded(bulwark_data, token, root, sources.small_branches())


def copy_tree(source: Path, target: Path) -> None:
    """A full copy (not hard links: the servers write to their repositories and databases)."""
    shutil.copytree(source, target, symlinks=True)
