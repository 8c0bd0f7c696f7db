"""Settings read from the environment (django-environ); defaults serve a fresh dev machine."""

import datetime as dt
import os
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF

from config.observability.logging import django_logging

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("SECRET_KEY", default="dev-only-insecure-secret-key-change-me")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS ------------------------------------------------------------------------------------
# Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https (only
# if the proxy overwrites that header). The redirect and the secure cookies follow DEBUG: off for
# ./scripts/run on http://127.0.0.1:8000, on in production unless turned off. HSTS is opt-in
# (browsers remember it: start small, then a year with subdomains and preload).
SECURE_PROXY_SSL_HEADER = env.tuple("SECURE_PROXY_SSL_HEADER", default=None) or None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "csp",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, no CDN
    "accounts",
    "credits",
    "inference",
    "billing",
]

MIDDLEWARE = [
    # First: answers /healthz, /readyz and /metrics before host checks and redirects;
    # counts and names every other request (config/observability/).
    "config.observability.middleware.ObservabilityMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out login attempt into accounts.lockout's page.
    "axes.middleware.AxesMiddleware",
]

# The metered calls an API key makes (config/gateway.py): none of the pages' sessions, CSRF,
# messages, CSP or login lockout, and no thread hop per middleware.
GATEWAY_MIDDLEWARE = [
    "config.observability.middleware.ObservabilityMiddleware",
    "config.gateway.SecurityMiddleware",
    "config.gateway.CommonMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "billing.context_processors.web",
                "csp.context_processors.nonce",  # {{ CSP_NONCE }} for a <script> or <style>
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the dev server, worker and beat share one file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
# PostgreSQL connections come from a pool per process (Django's psycopg pool), so they do not
# grow with concurrent streams: a request, or one ledger step of a stream, borrows one and
# gives it back. Fleet-wide, put PgBouncer in front (README, "Running N web processes").
# DB_POOL_MAX_SIZE=0 turns the pool off (then CONN_MAX_AGE applies).
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=8)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_POOL_MAX_SIZE > 0:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(env.int("DB_POOL_MIN_SIZE", default=2), DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env.float("DB_POOL_TIMEOUT_SECONDS", default=10),  # waiting for a free one
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django requires 0
# The metered path's hand-written statements (config.rows.cursor) are prepared on each
# connection, so PostgreSQL plans each once. psycopg needs a threshold for that: set out of
# reach, so the ORM's statements are never prepared by count. Off: for a PgBouncer older
# than 1.21 in transaction mode (it cannot follow named prepared statements).
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_PREPARED_STATEMENTS:
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 1 << 30)
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
# Threads per process that run the async gateway's ledger steps (hold, first token,
# settlement); each borrows a pooled connection for one step only.
LEDGER_THREADS = env.int("LEDGER_THREADS", default=max(DB_POOL_MAX_SIZE, 4))
# A web worker's garbage collector (config/serving.py, from gunicorn's post_worker_init):
# what start-up loaded is frozen, out of every later collection's walk.
GC_FREEZE_AFTER_START = env.bool("GC_FREEZE_AFTER_START", default=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
# Axes first: it refuses a locked-out login before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "billing:dashboard"
LOGOUT_REDIRECT_URL = "landing"

# --- Content-Security-Policy (django-csp) ---------------------------------------------------
# Scripts and styles from our own origin only; an inline <script> or <style> needs the request's
# nonce (nonce="{{ CSP_NONCE }}") and style="" attributes are refused, so pages use classes.
# Stripe Checkout is where the buy form's redirect goes. CSP_REPORT_ONLY=true reports, blocks nothing.
_CSP = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF, "https://checkout.stripe.com"],
    },
}
if env.bool("CSP_REPORT_ONLY", default=False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = _CSP
else:
    CONTENT_SECURITY_POLICY = _CSP

# --- Login brute force (django-axes; accounts/lockout.py) ------------------------------------
# After LOGIN_FAILURE_LIMIT wrong passwords for one account from one address, that pair is
# locked out of the web and admin logins until LOGIN_LOCKOUT_MINUTES after its last failure.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = dt.timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a successful login clears the pair's failures
AXES_USERNAME_FORM_FIELD = "username"  # AuthenticationForm's field (the email here)
AXES_USERNAME_CALLABLE = "accounts.lockout.login_username"
AXES_CLIENT_IP_CALLABLE = "accounts.network.client_ip"
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False  # no banner on every manage.py command; lockouts are still logged

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="TokenBank <no-reply@tokenbank.local>")

# --- Redis, cache and Celery -------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    # Enqueueing happens in web requests: fail in well under a second when Redis
    # is down (the caller logs and moves on; a periodic sweep catches up).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "max_retries": 0,  # kombu's default retries a refused connection for ~2 s
        "socket_connect_timeout": 0.5,
        "socket_timeout": 2,
        "visibility_timeout": 3600,  # acks_late: an unacked task comes back after this
    }
else:
    # Embedded default: shared across processes through the database, no server needed.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "django_cache",
        }
    }
    _broker_dir = VAR_DIR / "celery-broker"
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(VAR_DIR / "celery-processed"),
        "control_folder": str(VAR_DIR / "celery-control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# Setting names are Celery's lowercase names under the CELERY_ namespace
# (CELERY_TASK_TIME_LIMIT -> task_time_limit), read by config/celery.py.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True  # no result backend: tasks record their effects in the database
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # with acks_late, a worker holds one unacked task at a time
# Broker lost mid-task: stop it; acks_late redelivers it and the tasks are idempotent.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_TIMEOUT = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A failed publish is not retried in the caller (no retry storm in a web request).
CELERY_TASK_PUBLISH_RETRY = False
CELERY_TIMEZONE = TIME_ZONE
# The periodic schedule's one home: static, code-reviewed, identical in every
# environment, and usable by `worker --beat` on the filesystem broker (see README).
CELERY_BEAT_SCHEDULE = {
    "expire-credits": {
        "task": "credits.tasks.expire_credits",
        "schedule": 60.0,
        "options": {"expires": 55},  # a backlog after an outage collapses into the next run
    },
    "release-stale-holds": {
        "task": "credits.tasks.release_stale_holds",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "catch-up-notifications": {
        "task": "credits.tasks.catch_up_notifications",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "notify-expiring-credits": {
        "task": "credits.tasks.notify_expiring_credits",
        "schedule": crontab(hour=8, minute=0),
    },
    "void-unverified-promotions": {
        "task": "credits.tasks.void_unverified_promotions",
        "schedule": 600.0,
        "options": {"expires": 590},
    },
    # The books, every night (credits.reconciliation): records a run, tells staff once per
    # new mismatch, changes no money.
    "reconcile-books": {
        "task": "credits.tasks.reconcile_books",
        "schedule": crontab(hour=env.int("RECONCILIATION_HOUR", default=3), minute=30),
        "options": {"expires": 6 * 3600},
    },
    "purge-idempotency-records": {
        "task": "inference.tasks.purge_idempotency_records",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
}

# --- Notifications -----------------------------------------------------------
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")
LOW_BALANCE_THRESHOLD_USD = env("LOW_BALANCE_THRESHOLD_USD", default="1")
EXPIRING_SOON_DAYS = env.int("EXPIRING_SOON_DAYS", default=3)
# How far back the periodic sweep looks for events whose notification was never enqueued.
NOTIFICATION_CATCH_UP_HOURS = env.int("NOTIFICATION_CATCH_UP_HOURS", default=48)

# --- Money and the promotion -------------------------------------------------
PROMOTION_AMOUNT_USD = env("PROMOTION_AMOUNT_USD", default="20")
PROMOTION_WINDOW_SECONDS = env.int("PROMOTION_WINDOW_SECONDS", default=180)
PROMOTION_EXPIRY_DAYS = env.int("PROMOTION_EXPIRY_DAYS", default=30)
# "Extended while active" expiry (a promotion's expiry_rule): never later than this many
# days after the grant when the promotion names no cap of its own.
PROMOTION_EXPIRY_CAP_DAYS = env.int("PROMOTION_EXPIRY_CAP_DAYS", default=90)
# Referrals (credits.promotion.referrals), when no ReferralProgram row was saved in the admin:
# the referrer's REFERRAL grant and the referred user's welcome bonus, when the referred
# user's first purchase is paid; their expiry in days (0: never); rewards per referrer a month.
REFERRAL_REFERRER_USD = env("REFERRAL_REFERRER_USD", default="10")
REFERRAL_REFERRED_USD = env("REFERRAL_REFERRED_USD", default="10")
REFERRAL_EXPIRY_DAYS = env.int("REFERRAL_EXPIRY_DAYS", default=90)
REFERRAL_MONTHLY_CAP = env.int("REFERRAL_MONTHLY_CAP", default=10)
# A hold whose call journaled nothing for this long (credits.services.record_progress;
# a live call writes every second) belongs to a call that died: the sweep settles it.
STALE_HOLD_SECONDS = env.int("STALE_HOLD_SECONDS", default=15 * 60)
# A stream ends (a final SSE error event, charged for what it delivered) after this long,
# well inside STALE_HOLD_SECONDS, so no call outlives the sweep.
STREAM_MAX_SECONDS = env.int("STREAM_MAX_SECONDS", default=10 * 60)
# A sweep unit (a user, a hold) failing this many runs in a row is reported to staff once.
SWEEP_FAILURE_REPORT_AFTER = env.int("SWEEP_FAILURE_REPORT_AFTER", default=3)
# How long an Idempotency-Key's stored response is kept (then the key may be reused).
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
# Staff money actions (admin): above the threshold a second staff member must approve;
# the Support group may grant and refund up to its limit.
ADMIN_APPROVAL_THRESHOLD_USD = env("ADMIN_APPROVAL_THRESHOLD_USD", default="100")
SUPPORT_GRANT_LIMIT_USD = env("SUPPORT_GRANT_LIMIT_USD", default="50")  # per action
# What one Support member may grant, refund and adjust in all per day (TIME_ZONE days).
SUPPORT_DAILY_LIMIT_USD = env("SUPPORT_DAILY_LIMIT_USD", default="50")

# --- Abuse controls of the sign-up credit (credits/promotion/) -------------------
# Checks of a sign-up's email address, run by accounts.services.register_user.
SIGNUP_CHECKS = ["credits.promotion.signup.check_signup_email"]
# What `manage.py credits_verify` reconciles besides the balances (each returns mismatches).
LEDGER_RECONCILERS = [
    "inference.reconcile.charges_match_usage_records",
    "billing.reconcile.purchases_match_grants",
]
# Proxies whose X-Forwarded-For we believe (IPs or CIDRs). Empty: REMOTE_ADDR is the client.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
# Over these, the sign-up still works but the promotion is withheld (0 = no limit).
SIGNUPS_PER_IP_PER_HOUR = env.int("SIGNUPS_PER_IP_PER_HOUR", default=3)
SIGNUPS_PER_NETWORK_PER_HOUR = env.int("SIGNUPS_PER_NETWORK_PER_HOUR", default=10)  # /24, /64
PROMOTIONS_PER_NETWORK_PER_DAY = env.int("PROMOTIONS_PER_NETWORK_PER_DAY", default=5)
# Promotional credit granted across all users; past it the promotion pauses (0 = no cap).
PROMOTION_CAP_USD_PER_HOUR = env("PROMOTION_CAP_USD_PER_HOUR", default="0")
PROMOTION_CAP_USD_PER_DAY = env("PROMOTION_CAP_USD_PER_DAY", default="0")
# On: the sign-up credit is granted at first token but spendable only once the email is
# verified (a link is emailed at sign-up); voided if not verified within the hours below.
PROMOTION_REQUIRE_EMAIL_VERIFICATION = env.bool("PROMOTION_REQUIRE_EMAIL_VERIFICATION",
                                                default=False)
PROMOTION_VERIFICATION_HOURS = env.int("PROMOTION_VERIFICATION_HOURS", default=24)

# --- Buying credit -----------------------------------------------------------
# With no Stripe keys the embedded `test` provider (a local TEST MODE page) takes payments.
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
PURCHASE_MIN_USD = env("PURCHASE_MIN_USD", default="5")
PURCHASE_MAX_USD = env("PURCHASE_MAX_USD", default="1000")
# The TEST MODE provider credits without payment: on by default only with DEBUG, so a
# production deploy that forgot its Stripe keys refuses purchases instead of giving credit.
PAYMENTS_TEST_MODE = env.bool("PAYMENTS_TEST_MODE", default=DEBUG)

# --- REST framework ----------------------------------------------------------
REST_FRAMEWORK = {
    # Bearer API keys first (so a missing key answers 401), then the web pages' session
    # cookie; session-authenticated POSTs must send the X-CSRFToken header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "inference.errors.exception_handler",
    # JSON only; refuses bodies nested too deep and lone surrogates with a 400.
    "DEFAULT_PARSER_CLASSES": ["accounts.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # Never trust X-Forwarded-For for throttling identity unless a proxy is configured.
    "NUM_PROXIES": 0,
}

# --- Inference ---------------------------------------------------------------
# Named backends; an AiModel's `backend` field picks one (see inference/backends.py).
DEMO_BACKEND_TOKEN_DELAY_MS = env.float("DEMO_BACKEND_TOKEN_DELAY_MS", default=0)
INFERENCE_BACKENDS = {
    "demo": {"ENGINE": "demo"},
    "openai_compatible": {
        "ENGINE": "openai_compatible",
        "BASE_URL": env("UPSTREAM_BASE_URL", default="http://127.0.0.1:11434/v1"),
        "API_KEY": env("UPSTREAM_API_KEY", default=""),
        "TIMEOUT_SECONDS": env.float("UPSTREAM_TIMEOUT_SECONDS", default=60),
    },
}
# How long a process reuses a model's deployments (inference.routing) before reading them again.
UPSTREAM_ROUTES_CACHE_SECONDS = env.float("UPSTREAM_ROUTES_CACHE_SECONDS", default=10)
# Bench only: False skips holds, charges, usage records and the promotion.
INFERENCE_BILLING_ENABLED = env.bool("INFERENCE_BILLING_ENABLED", default=True)
# Per API key (an admin override per key; 0 = off), counted atomically in Redis
# (accounts/throttles.py). API_RATE_LIMIT_PER_MINUTE is the old name of the first.
RATE_LIMIT_REQUESTS_PER_MINUTE = env.int(
    "RATE_LIMIT_REQUESTS_PER_MINUTE", default=env.int("API_RATE_LIMIT_PER_MINUTE", default=120))
RATE_LIMIT_TOKENS_PER_MINUTE = env.int("RATE_LIMIT_TOKENS_PER_MINUTE", default=1_000_000)
REGISTER_RATE_LIMIT_PER_HOUR = env.int("REGISTER_RATE_LIMIT_PER_HOUR", default=20)  # per address

SPECTACULAR_SETTINGS = {
    "TITLE": "TokenBank inference API",
    "DESCRIPTION": "OpenAI-compatible inference, metered from a credit ledger.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Operating it (README, "Operating TokenBank") ---------------------------------------
# LOG_FORMAT=json: one JSON object per line, with the request's id, user, key and model.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
LOGGING = django_logging(log_format=LOG_FORMAT, level=env("LOG_LEVEL", default="INFO"))
# Celery's worker keeps our log format instead of installing its own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"
# /readyz: how long the database and Redis may take to answer.
READYZ_TIMEOUT_SECONDS = env.float("READYZ_TIMEOUT_SECONDS", default=2)
# /metrics: allowed with `Authorization: Bearer <METRICS_BEARER_TOKEN>` or from an address in
# METRICS_ALLOWED_IPS (IPs or CIDRs; the scraper's own address, not X-Forwarded-For).
METRICS_BEARER_TOKEN = env("METRICS_BEARER_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
# Several processes per host add up: each writes its samples under this directory (the same
# for the web workers and a Celery worker on the host; config/gunicorn.py empties it at start).
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", PROMETHEUS_MULTIPROC_DIR)
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
# Gauges read from the books at scrape time (holds, the last reconciliation).
METRICS_COLLECTORS = ["credits.gauges.LedgerGauges"]
# OpenTelemetry traces: on when set (e.g. http://collector:4318); the OTEL_* variables apply.
OTEL_EXPORTER_OTLP_ENDPOINT = env("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
# The nightly reconciliation: users per batch (one read-only snapshot each).
RECONCILIATION_BATCH_SIZE = env.int("RECONCILIATION_BATCH_SIZE", default=500)
