import os

from django.core.asgi import get_asgi_application

from config.observability.tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
setup_tracing(service="web")  # before the middleware loads; nothing when OTEL_* is unset
site = get_asgi_application()

from config.gateway import GatewayHandler, takes_gateway  # noqa: E402 (after django.setup())

gateway = GatewayHandler()


async def application(scope, receive, send):
    """The site, and the metered calls an API key makes on their own lean path
    (config/gateway.py)."""
    if takes_gateway(scope):
        await gateway(scope, receive, send)
    else:
        await site(scope, receive, send)
