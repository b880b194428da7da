"""Alerting rules on the HA peer checks' metrics, in the Prometheus rule format.

They are data here (a rule file written as JSON is valid YAML), tested with promtool beside the shipped
``deploy/prometheus/bulwark-rules.yml``, whose ``bulwark-ha`` group they extend.
``python -m bulwark.monitoring.rules`` prints them as a rule file.
"""

from __future__ import annotations

import json
from typing import Any

GROUP = "bulwark-ha-peers"

PRIMARY_DOWN: dict[str, Any] = {
    "alert": "BulwarkPrimaryDown",
    # The replica waited ha_primary_timeout seconds before reporting 0: no further delay here.
    "expr": "bulwark_ha_primary_up == 0",
    "labels": {"severity": "critical"},
    "annotations": {
        "summary": "Replica {{ $labels.instance }} has lost its primary",
        "description": "The primary has not answered the replica's /status for ha_primary_timeout seconds "
                       "(bulwark_ha_primary_seconds_since_answer says how long). If it does not come back, "
                       "promote the replica: 'bulwark repl promote'.",
    },
}

REPLICA_UNREACHABLE: dict[str, Any] = {
    "alert": "BulwarkReplicaUnreachable",
    "expr": "bulwark_ha_replica_reachable == 0",
    "for": "1m",
    "labels": {"severity": "warning"},
    "annotations": {
        "summary": "Primary {{ $labels.instance }} cannot reach replica {{ $labels.replica }}",
        "description": "The primary's epoch check cannot ask the replica's /status, so it would not see the "
                       "replica promoted over it; see 'bulwark repl status' on the primary.",
    },
}

RULES = (PRIMARY_DOWN, REPLICA_UNREACHABLE)


def rule_file() -> dict[str, Any]:
    return {"groups": [{"name": GROUP, "rules": list(RULES)}]}


if __name__ == "__main__":
    print(json.dumps(rule_file(), indent=2))
