"""``/api/v3``: the GitHub REST API v3 shapes, so GitHub clients work unchanged."""

from __future__ import annotations

from starlette.routing import BaseRoute

from bulwark.http.api import users

routes: list[BaseRoute] = [*users.routes]
