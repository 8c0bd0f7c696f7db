"""What /metrics reads from the books at scrape time (settings.METRICS_COLLECTORS): the
active holds and what they hold, and the last reconciliation's findings. Read from the
database, so every web process tells the same truth whichever process did the work (the
reconciliation runs in a Celery worker, maybe on another host). Two indexed queries."""

from __future__ import annotations

import logging

from django.db.models import Count, F, Sum
from prometheus_client.core import GaugeMetricFamily

from credits.models import CreditHold, HoldStatus, ReconciliationRun

logger = logging.getLogger(__name__)


class LedgerGauges:
    def collect(self):
        try:
            holds = CreditHold.objects.filter(status=HoldStatus.ACTIVE).aggregate(
                count=Count("pk"), held=Sum(F("amount_micros") - F("pending_promotion_micros")))
            last = (ReconciliationRun.objects.filter(finished_at__isnull=False, error="")
                    .order_by("-finished_at").values("mismatches", "finished_at").first())
        except Exception:  # the database is down: /metrics still answers the rest
            logger.warning("metrics: the ledger gauges could not be read", exc_info=True)
            return
        yield GaugeMetricFamily("tokenbank_holds_active", "Holds of calls not yet settled",
                                value=holds["count"] or 0)
        yield GaugeMetricFamily("tokenbank_held_micros",
                                "Micro-dollars reserved by active holds (the accounts' held total)",
                                value=holds["held"] or 0)
        if last is not None:
            yield GaugeMetricFamily("tokenbank_ledger_mismatches",
                                    "Mismatches the last completed reconciliation found",
                                    value=last["mismatches"])
            yield GaugeMetricFamily("tokenbank_reconciliation_last_run_timestamp_seconds",
                                    "When the last completed reconciliation finished",
                                    value=last["finished_at"].timestamp())
