"""Management endpoints authenticate before they read a body."""

from __future__ import annotations

import httpx
import pytest

from tests.support.helpers import Server

pytestmark = pytest.mark.system


def test_an_anonymous_fence_is_refused_before_its_body_is_parsed(server: Server) -> None:
    for body in (b'{"epoch": ' + b"9" * 5000 + b"}", b"not json at all", b'{"epoch": 99}'):
        answer = httpx.post(f"{server.url}/manage/v1/replication/fence", content=body,
                            headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == 401, answer.text
        assert "replica's credential" in answer.json()["message"]


def test_a_forged_credential_is_refused_too(server: Server) -> None:
    answer = httpx.post(f"{server.url}/manage/v1/replication/fence", json={"epoch": 2},
                        headers={"Authorization": "Bearer bwr_" + "0" * 40}, timeout=10)
    assert answer.status_code == 401
