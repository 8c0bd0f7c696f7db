"""API keys over the JSON API (accounts.api): created, revoked, only one's own."""

import pytest


@pytest.mark.django_db
def test_keys_can_be_created_and_revoked_and_revocation_is_immediate(api, user, client_for):
    created = api.post("/api/keys", {"name": "ci"}, format="json")
    assert created.status_code == 201
    new_client = client_for(created.json()["key"])
    assert new_client.get("/api/credits").status_code == 200
    revoked = api.delete(f"/api/keys/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert new_client.get("/api/credits").status_code == 401
    assert api.get("/api/credits").status_code == 200  # the other key still works


@pytest.mark.django_db
def test_someone_elses_key_cannot_be_revoked(api, make_user):
    other = make_user()
    from accounts.services import create_api_key

    key, _secret = create_api_key(user=other, name="theirs")
    assert api.delete(f"/api/keys/{key.pk}").status_code == 404
    key.refresh_from_db()
    assert key.is_active
