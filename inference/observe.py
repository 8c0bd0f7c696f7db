"""What a metered call tells the operators (config.observability): two calls from
inference.services, one when the call starts, one when it has settled.

Started: the request's log lines and span name its request id, model, user and key.
Settled: its counters and histograms (tokens, charge, time to first token, duration,
upstream errors), one log line (`call <id> settled`), and its span with tokens and charge.
Never raises: the call is settled and charged already.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from config.observability import context, metrics, tracing
from inference.models import UsageStatus

if TYPE_CHECKING:
    from inference.services import MeteredCall

logger = logging.getLogger("inference.calls")


def call_started(call: MeteredCall) -> None:
    context.bind(request_id=call.request_id, model=call.model.id, user_id=call.user.pk,
                 key_id=call.api_key.pk if call.api_key else None)


def call_settled(call: MeteredCall) -> None:
    try:
        seconds = time.monotonic() - call.started_monotonic
        prompt_tokens = call.charged_prompt_tokens if call.pieces else call.prompt_tokens
        completion_tokens = call.completion_tokens if call.pieces else 0
        metrics.observe_call(
            endpoint=call.endpoint, model=call.model.id, upstream=call.model.backend,
            status=call.status, streamed=call.streamed, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, cost_micros=call.cost_micros,
            first_token_seconds=(call.first_token_ms / 1000
                                 if call.first_token_ms is not None else None),
            seconds=seconds, upstream_error=call.status == UsageStatus.UPSTREAM_ERROR)
        _count_fallbacks(call.attempts)
        logger.info("call %s settled: %s, %s prompt + %s completion tokens, charged %s micros",
                    call.request_id, call.status, prompt_tokens, completion_tokens,
                    call.cost_micros)
        tracing.record_call(request_id=call.request_id, model=call.model.id,
                            endpoint=call.endpoint, status=call.status,
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                            cost_micros=call.cost_micros, seconds=seconds)
    except Exception:
        logger.warning("call %s: its metrics were not recorded", call.request_id, exc_info=True)


def _count_fallbacks(attempts: list[dict]) -> None:
    """Each upstream left before the first token: "recovered" when a later one served the
    call, "exhausted" when none did."""
    served = any(attempt["outcome"] == "served" for attempt in attempts)
    for left in attempts[:-1]:
        if left["outcome"] == "unavailable":
            metrics.upstream_fallback(upstream=left["upstream"],
                                      outcome="recovered" if served else "exhausted")
