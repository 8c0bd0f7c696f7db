"""The inference app's doors for other apps' signals: each calls one service."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from credits.signals import holds_swept
from inference import routing, services
from inference.models import AiModel, Deployment, Upstream


@receiver(holds_swept, dispatch_uid="inference.record_swept_calls")
def record_calls_of_swept_holds(sender, *, settled, now, **kwargs) -> None:
    services.record_swept_calls(hold_ids=[h.hold_id for h in settled], now=now)


def _forget_routes(sender, **kwargs) -> None:
    routing.forget_routes()


# An admin change to an upstream, a deployment or a model applies to this process at once
# (other processes within UPSTREAM_ROUTES_CACHE_SECONDS).
for _model in (Upstream, Deployment, AiModel):
    for _signal in (post_save, post_delete):
        _signal.connect(_forget_routes, sender=_model,
                        dispatch_uid=f"inference.forget_routes.{_model.__name__}.{id(_signal)}")
