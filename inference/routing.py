"""Which upstreams serve a model: its deployments (inference.models.Deployment), in order,
with the weighted order inside a tier drawn per call; or, without deployments, the backend
its `backend` field names in settings.INFERENCE_BACKENDS.

A model's deployments are read once per UPSTREAM_ROUTES_CACHE_SECONDS per process (not on
every call); saving an upstream, a deployment or a model empties this process's cache.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from inference.backends import Route, Target, backend_from_config, get_backend
from inference.models import AiModel, Deployment, Upstream


@dataclass(frozen=True)
class _Deployed:
    position: int
    weight: int
    upstream: str
    config: dict
    model_name: str


_cache: dict[str, tuple[float, tuple[_Deployed, ...]]] = {}
_cache_lock = threading.Lock()


def forget_routes(**_kwargs) -> None:
    """Empty the cache (a signal receiver: an upstream, deployment or model changed)."""
    with _cache_lock:
        _cache.clear()


def upstream_config(upstream: Upstream) -> dict:
    """The backend config of an upstream; the settings' for the one that follows them."""
    if upstream.from_settings:
        return dict(settings.INFERENCE_BACKENDS.get("openai_compatible") or {})
    return {"ENGINE": "openai_compatible", "BASE_URL": upstream.base_url,
            "API_KEY": upstream.api_key, "TIMEOUT_SECONDS": upstream.read_timeout_seconds,
            "CONNECT_TIMEOUT_SECONDS": upstream.connect_timeout_seconds}


def _deployed(model: AiModel) -> tuple[_Deployed, ...]:
    ttl = settings.UPSTREAM_ROUTES_CACHE_SECONDS
    now = time.monotonic()
    cached = _cache.get(model.id)
    if cached is not None and cached[0] > now:
        return cached[1]
    rows = tuple(
        _Deployed(position=d.position, weight=d.weight, upstream=d.upstream.name,
                  config=upstream_config(d.upstream),
                  model_name=d.upstream_model or model.upstream_name)
        for d in Deployment.objects.filter(model_id=model.id, active=True, upstream__active=True)
        .select_related("upstream").order_by("position", "id")
    )
    if ttl > 0:
        with _cache_lock:
            _cache[model.id] = (now + ttl, rows)
    return rows


def _weighted_order(tier: list[_Deployed]) -> list[_Deployed]:
    """A weighted random order (Efraimidis-Spirakis): heavier goes first more often; weight 0
    only after every weighted one."""
    if len(tier) == 1:
        return tier
    return sorted(tier, key=lambda d: -(random.random() ** (1.0 / d.weight)) if d.weight else 1.0)


def route_for(model: AiModel) -> Route:
    """The route of a call to `model`. Raises UpstreamError when nothing is configured."""
    deployed = _deployed(model)
    if not deployed:
        return Route([Target(get_backend(model.backend), model.upstream_name, "")],
                     fallback=False)
    ordered: list[_Deployed] = []
    tier: list[_Deployed] = []
    for row in deployed:
        if tier and row.position != tier[0].position:
            ordered += _weighted_order(tier)
            tier = []
        tier.append(row)
    ordered += _weighted_order(tier)
    return Route([Target(backend_from_config(row.config, name=row.upstream), row.model_name,
                         row.upstream) for row in ordered], fallback=True)
