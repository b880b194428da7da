"""Node settings in the etcd store: the maintenance state and the named settings."""

from __future__ import annotations

from typing import Any

from bulwark.models import MaintenanceState
from bulwark.store.etcd.base import _Base
from bulwark.store.etcd.codec import _decode, _dump_json, _flag, _load_optional_time, _text
from bulwark.store.times import dump_optional_time as _dump_optional_time


class _NodeSettings(_Base):
    # -- node settings -----------------------------------------------------------------

    def get_maintenance(self) -> MaintenanceState:
        kv = self._get(self._keys.maintenance)
        if kv is None:
            return MaintenanceState(enabled=False)

        def load(doc: dict[str, Any]) -> MaintenanceState:
            return MaintenanceState(
                enabled=_flag(doc, "enabled"),
                message=_text(doc, "message"),
                since=_load_optional_time(doc.get("since")),
            )

        return _decode(kv, load)

    def set_maintenance(self, state: MaintenanceState) -> None:
        doc = {
            "enabled": bool(state.enabled),
            "message": state.message,
            "since": _dump_optional_time(state.since),
        }
        self._unloggable()
        self._client().put(self._keys.maintenance, _dump_json(doc))

    def get_setting(self, key: str) -> str | None:
        kv = self._get(self._keys.setting(key))
        return None if kv is None else kv.text

    def set_setting(self, key: str, value: str | None) -> None:
        self._unloggable()
        if value is None:
            self._client().delete(self._keys.setting(key))
        else:
            self._client().put(self._keys.setting(key), value)
