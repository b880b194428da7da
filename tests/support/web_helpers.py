"""Signing in to the web interface and sending its forms, as a browser does, over plain HTTP."""

from __future__ import annotations

import re

import httpx

from tests.support.helpers import Server, bulwark

PAGE = {"Accept": "text/html,application/xhtml+xml"}


def set_password(server: Server, login: str, password: str) -> None:
    r = bulwark("user", "passwd", login, env=server.env(), input=password + "\n")
    assert r.returncode == 0, r.stdout + r.stderr


def visitor(server: Server) -> httpx.Client:
    """A browser with no session: it has the form token cookie after its first page."""
    client = httpx.Client(base_url=server.url, headers=PAGE, timeout=30, follow_redirects=False)
    r = client.get("/login")
    assert r.status_code == 200, r.text
    return client


def csrf(client: httpx.Client) -> str:
    token = client.cookies.get("bulwark_csrf")
    assert token, "no form token cookie yet"
    return token


def post(client: httpx.Client, path: str, fields: dict[str, str]) -> httpx.Response:
    return client.post(path, data={"csrf_token": csrf(client), **fields})


def signed_in(server: Server, login: str, password: str) -> httpx.Client:
    client = visitor(server)
    r = post(client, "/login", {"login": login, "password": password})
    assert r.status_code == 303, r.text
    assert client.cookies.get("bulwark_session")
    return client


def text_of(html: str) -> str:
    """A page's text without its tags, spaces collapsed: what a reader sees."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()
