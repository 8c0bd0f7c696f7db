import os

from django.core.asgi import get_asgi_application

from config.observability.tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
setup_tracing(service="web")  # before the middleware loads; nothing when OTEL_* is unset
application = get_asgi_application()
