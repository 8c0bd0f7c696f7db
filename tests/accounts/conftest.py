from tests.api_fixtures import _fresh_rate_limits, api, api_key, client_for  # noqa: F401
