import os

import django

from config.observability.tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
setup_tracing(service="web")  # before the middleware loads; nothing when OTEL_* is unset
django.setup(set_prefix=False)  # as get_asgi_application() does

from config.gateway import GatewayHandler, takes_gateway  # noqa: E402 (after django.setup())
from config.request_threads import RequestThreadsHandler  # noqa: E402
from inference.backends import upstream_sessions  # noqa: E402

site = RequestThreadsHandler()  # Django's ASGI handler, its request threads reused
gateway = GatewayHandler()


async def application(scope, receive, send):
    """The site, and the metered calls an API key makes on their own lean path
    (config/gateway.py)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif takes_gateway(scope):
        await gateway(scope, receive, send)
    else:
        await site(scope, receive, send)


async def lifespan(receive, send):
    """The server's start and stop (ASGI lifespan; uvicorn and its gunicorn worker send
    them). Its event loop serves for the process's life, so upstream connections are kept
    and reused on it, and closed when the server stops."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            upstream_sessions.keep_for_this_loop()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await upstream_sessions.close_this_loop()
            await send({"type": "lifespan.shutdown.complete"})
            return
