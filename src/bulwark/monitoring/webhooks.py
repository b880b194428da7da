"""Webhook delivery in /metrics: the outbox, attempts and failing hooks, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bulwark.clock import Clock
from bulwark.webhooks.models import HookFigures


class WebhookCollector:
    def __init__(self, figures: Callable[[], HookFigures], clock: Clock) -> None:
        self.figures = figures
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        f = self.figures()
        yield GaugeMetricFamily("bulwark_webhook_deliveries_pending", "Webhook deliveries not delivered yet.",
                                value=f.pending)
        age = (self.clock.now() - f.oldest_pending_at).total_seconds() if f.oldest_pending_at else 0.0
        yield GaugeMetricFamily("bulwark_webhook_oldest_pending_seconds",
                                "Age of the oldest webhook delivery not delivered yet (0: none).", value=max(age, 0.0))
        attempts = CounterMetricFamily("bulwark_webhook_attempts", "Webhook delivery attempts kept (30 days), by "
                                       "result.", labels=["result"])
        attempts.add_metric(["ok"], f.attempts - f.failed_attempts)
        attempts.add_metric(["failed"], f.failed_attempts)
        yield attempts
        yield GaugeMetricFamily("bulwark_webhook_deliveries_given_up", "Webhook deliveries given up after 24 h of "
                                "failures (kept 30 days; 'bulwark hook redeliver' sends them again).", value=f.gave_up)
        yield GaugeMetricFamily("bulwark_webhook_failing_hooks", "Webhooks whose latest delivery attempt failed.",
                                value=f.failing_hooks)
