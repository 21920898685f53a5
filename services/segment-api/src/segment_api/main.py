"""segment-api: the HTTP API, with the outbox relay running in the same process."""

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from segment_api.customers.router import router as customers_router
from segment_api.deps import ApiKeyCache
from segment_api.destinations.router import router as destinations_router
from segment_api.fields import refuse_lone_surrogates, refuse_nul_parameters
from segment_api.idempotency import IdempotencyMiddleware, finish_pending, purge_expired_keys
from segment_api.middleware import BodyLimitMiddleware, CorrelationMiddleware, HeadMiddleware
from segment_api.openapi import document_api, serve_doc_pages
from segment_api.orders.router import router as orders_router
from segment_api.problems import install_problem_handlers
from segment_api.rules.refresher import rule_runner
from segment_api.rules.router import router as rules_router
from segment_api.rules.settings import RefreshSettings
from segment_api.segments.router import router as segments_router
from segment_api.settings import ApiSettings
from segment_api.subscriptions.router import router as subscriptions_router
from segment_api.syncs.router import router as syncs_router
from segment_api.targets.router import router as targets_router
from segments_shared.apikeys import create_key
from segments_shared.backoff import Backoff, BackoffPolicy
from segments_shared.bus.relay import OutboxRelay
from segments_shared.bus.topology import Topology
from segments_shared.db.engine import autocommit, create_engine, session_url
from segments_shared.db.notify import Listener
from segments_shared.gauges import WaitingGauges
from segments_shared.health import (
    Dependency,
    EmbeddedServer,
    database_check,
    flag_check,
    health_routes,
)
from segments_shared.jobs.store import NOTIFY_CHANNEL
from segments_shared.lifecycle import freeze_startup_objects
from segments_shared.observability import configure_logging
from segments_shared.secrets import SecretBox

log = logging.getLogger(__name__)

DESCRIPTION = """
Customers, orders and segments of an online store, and their delivery to email service
providers and commerce stores.

* **Auth**: `Authorization: Bearer <api key>`; scopes `segments:read`, `segments:write`,
  `syncs:write`, `admin`.
* **Errors**: RFC 9457 problem details (`application/problem+json`); a 422 lists each invalid
  field in `errors` with a JSON pointer into the body or the name of the query parameter.
* **Lists**: `?limit=` (1 to 1000) and `?cursor=` (the previous page's `next_cursor`).
* **Money**: decimal strings with two decimals. **Timestamps**: RFC 3339, UTC.
"""


async def _stopped(task: asyncio.Task[None], seconds: float) -> None:
    """Wait for a task told to stop, cancelling it if it takes longer. Whatever it ended
    with (an error, a cancellation on shutdown) is not re-raised here, so that the rest of
    the shutdown runs: wait_for() re-raised a cancellation, which no `except Exception`
    catches, and the relay was never stopped nor the engine disposed."""
    done, pending = await asyncio.wait({task}, timeout=seconds)
    for still_running in pending:
        still_running.cancel()
    for ended in done:
        if not ended.cancelled() and ended.exception() is not None:
            log.error("%s ended with an error", ended.get_name(), exc_info=ended.exception())


def create_app(settings: ApiSettings, refresh_settings: RefreshSettings | None = None) -> FastAPI:
    refreshing = refresh_settings if refresh_settings is not None else settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings, pre_ping=False)
        relay = OutboxRelay(
            engine,
            settings.amqp_url.get_secret_value(),
            Topology(settings.bus_prefix),
            name="segment-api-relay",
            # Its event loop serves requests: a worker's relay publishes when one runs.
            prefer_standby=True,
            session_url=session_url(settings),
        )
        app.state.engine = engine
        app.state.read_engine = autocommit(engine)
        app.state.relay = relay
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        bootstrap_task = asyncio.create_task(_ensure_bootstrap_key(engine, settings))
        purge_task = asyncio.create_task(purge_expired_keys(engine))
        # Rule segments are recomputed here: the API owns them and sees every change.
        refresher = rule_runner(engine, refreshing, f"segment-api-{uuid.uuid4().hex[:12]}")
        app.state.refresher = refresher
        refresher_task = asyncio.create_task(refresher.run(), name="rule-refresher")
        listener = Listener(session_url(settings), name="segment-api-notifications")
        listener.on(NOTIFY_CHANNEL, refresher.wake_for)
        listener_task = asyncio.create_task(listener.run(), name="notifications")
        gauges = WaitingGauges(
            "segment-api",
            engine,
            settings.amqp_url.get_secret_value(),
            Topology(settings.bus_prefix),
            dependencies,
        )
        gauges_task = asyncio.create_task(gauges.run(), name="gauges")
        # With the database up this takes milliseconds; without it, start anyway. The first
        # refresher round computes rule segments never computed (the defaults after install).
        await asyncio.wait({bootstrap_task}, timeout=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(refresher.first_round.wait(), 5)
        freeze_startup_objects()
        try:
            yield
        finally:
            bootstrap_task.cancel()
            purge_task.cancel()
            listener.stop()
            refresher.stop()
            gauges.stop()
            await _stopped(gauges_task, 5)
            await _stopped(listener_task, 10)
            await _stopped(refresher_task, 10)
            relay.stop()
            await _stopped(relay_task, 10)
            await finish_pending()
            await engine.dispose()

    app = FastAPI(
        title="Segments API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={},
        dependencies=[Depends(refuse_nul_parameters), Depends(refuse_lone_surrogates)],
        # Served with their assets by serve_doc_pages, not from a CDN.
        docs_url=None,
        redoc_url=None,
        # One schema per model for bodies sent and received: the rule grammar is recursive,
        # and pydantic would publish a recursive model used both ways twice (-Input, -Output).
        separate_input_output_schemas=False,
    )
    app.state.settings = settings
    app.state.api_keys = ApiKeyCache(settings.api_key_cache_seconds)
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    app.state.secret_box = SecretBox(secret) if secret else None

    serve_doc_pages(app)
    install_problem_handlers(app)
    for router in (
        customers_router,
        orders_router,
        rules_router,
        targets_router,
        segments_router,
        destinations_router,
        syncs_router,
        subscriptions_router,
    ):
        app.include_router(router)

    def _database_up() -> Dependency:
        async def check() -> bool:
            return await database_check(app.state.engine)()

        return Dependency("database", check)

    def _broker_connected() -> bool:
        relay: OutboxRelay | None = getattr(app.state, "relay", None)
        return relay is not None and relay.broker_connected

    # The outbox absorbs a broker outage, so the broker is reported but not required.
    dependencies = [
        _database_up(),
        Dependency("broker", flag_check(_broker_connected), required=False),
    ]
    for route in health_routes(dependencies):
        app.router.routes.append(route)

    # Innermost first: the idempotency check sees the body after the size limit.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "If-None-Match",
                "Idempotency-Key",
                "X-Correlation-ID",
                "X-Request-ID",
            ],
            # The response headers the contract declares, readable by the page's script.
            expose_headers=["ETag", "Location", "Idempotent-Replayed", "X-Correlation-ID"],
        )
    app.add_middleware(HeadMiddleware)
    app.add_middleware(CorrelationMiddleware)
    document_api(app)
    return app


async def _ensure_bootstrap_key(engine: AsyncEngine, settings: ApiSettings) -> None:
    """Declare the bootstrap admin key, retrying while the database is unreachable (the API
    still starts and `/readyz` says what is wrong)."""
    if settings.bootstrap_api_key is None:
        return
    backoff = Backoff(BackoffPolicy(0.5, 10.0))
    while True:
        try:
            async with engine.begin() as conn:
                await create_key(
                    conn, "bootstrap", ["admin"], settings.bootstrap_api_key.get_secret_value()
                )
            return
        except (OSError, SQLAlchemyError) as exc:
            log.warning("cannot declare the bootstrap API key yet", extra={"error": repr(exc)})
            await asyncio.sleep(backoff.next_delay())


class StopRequests:
    """Signals asking the server to stop. A second one, a while after the first, skips the
    wait for open connections and the application's shutdown; one arriving with the first is
    the same request (Ctrl-C reaches every process of the terminal's group, and `make run`'s
    script then sends SIGTERM too), or the shutdown would be cut short."""

    # Seconds after the first signal from which another one forces the exit.
    AGAIN_AFTER = 1.0

    def __init__(self) -> None:
        self.first: float | None = None

    def force(self, now: float) -> bool:
        if self.first is None:
            self.first = now
            return False
        return now - self.first >= self.AGAIN_AFTER


async def serve(settings: ApiSettings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        proxy_headers=True,
    )
    server = EmbeddedServer(config)
    stops = StopRequests()

    def request_stop() -> None:
        server.force_exit = stops.force(time.monotonic())
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    await server.serve()


def main() -> None:
    settings = ApiSettings()
    configure_logging("segment-api", settings.log_level)
    # We handle the signals ourselves: uvicorn's own handling re-raises SIGTERM after a
    # graceful stop, so the process would end "killed" instead of exiting 0.
    loop_factory = uvicorn.Config(app="", log_config=None).get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
