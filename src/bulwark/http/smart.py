"""Git smart HTTP (placeholder until the data path lands)."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
