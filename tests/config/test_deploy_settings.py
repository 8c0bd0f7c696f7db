"""Production settings come from the environment: `check --deploy` is clean with them set, and the
defaults keep the developer's http://127.0.0.1:8000 working."""

import os
import secrets
import subprocess
import sys

from django.conf import settings

# Variables these tests set or expect unset; the caller's own values must not leak in.
DEPLOY_VARIABLES = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "SECURE_SSL_REDIRECT",
                    "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
                    "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER")

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(64),
    "ALLOWED_HOSTS": "tokenbank.example",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
}


def _run(args: list[str], **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DEPLOY_VARIABLES}
    env.update(variables)
    return subprocess.run([sys.executable, *args], cwd=settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_production_environment():
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **PRODUCTION)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


def _settings_in_a_fresh_process(**variables: str) -> list[str]:
    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'; "
            "django.setup(); from django.conf import settings as s; "
            "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
            "s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER)")
    result = _run(["-c", code], **variables)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_defaults_serve_plain_http_on_a_developers_machine():
    # Unset: DEBUG defaults on, so no redirect to https, cookies over http, no HSTS.
    assert _settings_in_a_fresh_process() == ["False", "False", "False", "0", "None"]


def test_with_debug_off_the_redirect_and_secure_cookies_are_on_unless_turned_off():
    assert _settings_in_a_fresh_process(DEBUG="false")[:3] == ["True", "True", "True"]
    assert _settings_in_a_fresh_process(DEBUG="false", SECURE_SSL_REDIRECT="false")[0] == "False"
