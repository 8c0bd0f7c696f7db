"""The inference app's doors for other apps' signals: each calls one service."""

from django.dispatch import receiver

from credits.signals import holds_swept
from inference import services


@receiver(holds_swept, dispatch_uid="inference.record_swept_calls")
def record_calls_of_swept_holds(sender, *, settled, now, **kwargs) -> None:
    services.record_swept_calls(hold_ids=[h.hold_id for h in settled], now=now)
