"""What `bulwark repl status` and `/manage/v1/replication/status` report: the same facts."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from bulwark.ha import state as ha_state
from bulwark.ha.health import Thresholds, judge_primary, judge_reach, replica_health
from bulwark.levels import Level
from bulwark.roles import NodeRole
from bulwark.store import Store
from bulwark.store.changes import ChangeLog


def replication_report(store: Store, changelog: ChangeLog, *, now: datetime, limits: Thresholds) -> dict[str, Any]:
    """A JSON-ready report with an overall ``level`` (a Nagios level name) and ``exit_code``."""
    ha = ha_state.load(store)
    report: dict[str, Any] = {
        "node_id": ha_state.node_id(store),
        "role": ha.role,
        "epoch": ha.epoch,
        "fenced": ha.fenced,
        "promoting": ha.promoting,
    }
    if ha.role == NodeRole.HA_REPLICA:
        progress = ha_state.load_progress(store)
        health = replica_health(progress, replicating=ha.replicating, now=now, limits=limits)
        check = ha_state.load_primary_check(store)
        primary = judge_primary(check, now, limits.primary_timeout)
        report.update(
            primary_url=ha.primary_url,
            primary_id=ha.primary_id,
            replicating=ha.replicating,
            position=changelog.replication_position(),
            primary_seq=progress.primary_seq,
            lag_seconds=None if math.isinf(health.lag_seconds) else round(health.lag_seconds, 3),
            lag_changes=health.lag_changes,
            last_contact=progress.last_contact.isoformat() if progress.last_contact else None,
            last_error=progress.last_error,
            streams=[
                *({"name": s.name, "level": s.level.name, "detail": s.detail}
                  for s in (health.metadata, health.repositories)),
                {"name": "primary", "level": primary.level.name, "detail": primary.detail},
            ],
            primary={
                "state": primary.state.value,
                "level": primary.level.name,
                "detail": primary.detail,
                "seconds_since_answer": _rounded(primary.silent_seconds),
                "last_answer": _iso(check.answered_at if check else None),
                "last_check": _iso(check.checked_at if check else None),
                "last_error": check.error if check else None,
                "timeout": limits.primary_timeout,
            },
            repositories={
                "total": progress.repos_total,
                "in_sync": progress.repos_in_sync,
                "pending": progress.repos_pending,
                "faulty": len(progress.repos_faulty),
                "faulty_ids": progress.repos_faulty,
            },
        )
        level = max(health.level, primary.level)
    elif ha.role == NodeRole.HA_PRIMARY:
        last_seq = changelog.last_seq()
        replicas = []
        level = Level.CRITICAL if ha.fenced else Level.OK
        checks = ha_state.load_replica_checks(store)
        for r in ha_state.load_replicas(store):
            reachable, reach = judge_reach(checks.get(r.node_id), now)
            seen = datetime.fromisoformat(r.last_seen) if r.last_seen else None
            silence = (now - seen).total_seconds() if seen else math.inf
            if silence >= limits.critical_lag:
                r_level = Level.CRITICAL
            elif silence >= limits.warning_lag:
                r_level = Level.WARNING
            else:
                r_level = Level.OK
            if reachable is False:
                # It may be alive and replicating, but the epoch check cannot see whether it was promoted.
                r_level = max(r_level, Level.WARNING)
            level = max(level, r_level)
            replicas.append(
                {
                    "node_id": r.node_id,
                    "url": r.url,
                    "level": r_level.name,
                    "last_seen": r.last_seen,
                    "seconds_since_seen": None if math.isinf(silence) else round(silence, 3),
                    "position": r.position,
                    "lag_changes": max(0, last_seq - r.position),
                    "reachable": reachable,
                    "reach": reach,
                }
            )
        report.update(last_seq=last_seq, replicas=replicas)
        if not replicas:
            level = max(level, Level.WARNING)
            report["detail"] = "no replica is set up"
    else:
        level = Level.OK
        report["detail"] = "replication is not configured on this node"
    if ha.fenced:
        level = Level.CRITICAL
    report["level"] = level.name
    report["exit_code"] = int(level)
    return report


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
