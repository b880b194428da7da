from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import Server, git_env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "node").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def genv(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return git_env(home)
