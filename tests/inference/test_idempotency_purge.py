import datetime as dt

import pytest
from django.utils import timezone

from inference import tasks
from inference.models import IdempotentRequest

pytestmark = pytest.mark.django_db


def test_stored_responses_older_than_their_ttl_are_forgotten_and_fresh_ones_kept(user, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    now = timezone.now()
    old = IdempotentRequest.objects.create(user=user, key="old", endpoint="chat.completions",
                                           body_hash="x", created_at=now - dt.timedelta(hours=25))
    fresh = IdempotentRequest.objects.create(user=user, key="fresh", endpoint="chat.completions",
                                             body_hash="y", created_at=now - dt.timedelta(hours=23))
    assert tasks.purge_idempotency_records() == 1
    assert list(IdempotentRequest.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert not IdempotentRequest.objects.filter(pk=old.pk).exists()
    assert tasks.purge_idempotency_records() == 0
