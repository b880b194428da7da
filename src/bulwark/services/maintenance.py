"""Maintenance mode: a node answers 503 to Git and API requests (site administrators keep the
admin API) and its /status says so, while an administrator works on it.

The state lives in the metadata store, which a running node reads on every request, so the
CLI, the admin page and the API each switch it at once, with or without the server running.
"""

from __future__ import annotations

from bulwark.clock import Clock
from bulwark.models import MaintenanceState
from bulwark.store import Store


class MaintenanceService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def state(self) -> MaintenanceState:
        return self.store.get_maintenance()

    def turn_on(self, message: str = "") -> MaintenanceState:
        state = MaintenanceState(enabled=True, message=message, since=self.clock.now())
        self.store.set_maintenance(state)
        return state

    def turn_off(self) -> None:
        self.store.set_maintenance(MaintenanceState(enabled=False))
