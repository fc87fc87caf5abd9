"""Herald's HTTP API, assembled in one place.

    uvicorn api.app:create_app --factory

Each module under ``api/`` exports a ``routes`` list; ``create_app`` mounts
them, installs the one error shape and the metrics middleware, and opens the
server clients in the lifespan. Handlers find what they need on
``request.app.state``:

    settings    the Settings this app was built with
    postgres    asyncpg pool            redis      redis.asyncio client
    cassandra   cassandra-driver Session (await CQL with ``pipeline.stores.cassandra.run_async``)
    kafka       started AIOKafkaProducer
    audience    live pipeline.segments.AudienceStore (estimates and membership)
    key_cache   verified API keys (``api.auth``)
    pii         the email/phone encryption Keyring (``pipeline.pii``)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from api import (
    analytics, audit_log, callbacks, campaign_runs, campaigns, dashboard, dead_letters, erasure, health, inbox, journeys,
    keys, metrics, openapi, preferences, segments, sms_inbound, templates, tracking,
)
from api.auth import KeyCache
from api.body_limit import BodyLimitMiddleware
from api.clients import open_clients
from api.errors import exception_handlers
from config import Settings, get_settings
from pipeline.logs import configure_logging
from pipeline.pii_keys import pii_keyring
from pipeline.segments import open_audience

MODULES = (health, metrics, openapi, keys, campaigns, analytics, dashboard, campaign_runs, journeys, segments, templates,
           preferences, audit_log, tracking, callbacks, sms_inbound, inbox, dead_letters, erasure)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with open_clients(app.state.settings) as clients, open_audience(app.state.settings) as audience:
        app.state.audience = audience  # pipeline.segments.AudienceStore, following the user topics
        app.state.postgres = clients.postgres
        app.state.redis = clients.redis
        app.state.cassandra = clients.cassandra
        app.state.kafka = clients.kafka
        yield


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    app = Starlette(
        routes=[route for module in MODULES for route in module.routes],
        middleware=[
            Middleware(metrics.MetricsMiddleware),
            Middleware(BodyLimitMiddleware, limit=settings.api_max_body_bytes,
                       wider={"/callbacks/": settings.api_max_callback_bytes}),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    app.state.pii = pii_keyring(settings)  # email and phone at rest (pipeline/pii.py)
    configure_logging()  # no address or phone number reaches a log line
    return app
