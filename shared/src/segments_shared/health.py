"""`/healthz`, `/readyz` and `/metrics`, shared by the three services (docs/contract.md#health)."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(frozen=True)
class Dependency:
    name: str
    check: Callable[[], Awaitable[bool]]
    # A required dependency that is down makes the service not ready.
    required: bool = True


def database_check(engine: AsyncEngine) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with asyncio.timeout(2):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    return check


def flag_check(flag: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return flag()

    return check


async def readiness(dependencies: list[Dependency]) -> tuple[int, dict[str, object]]:
    states = await asyncio.gather(*(dependency.check() for dependency in dependencies))
    body: dict[str, object] = {
        "dependencies": {
            dependency.name: {"state": "up" if up else "down", "required": dependency.required}
            for dependency, up in zip(dependencies, states, strict=True)
        }
    }
    failing = [
        dependency.name
        for dependency, up in zip(dependencies, states, strict=True)
        if dependency.required and not up
    ]
    body["status"] = "not_ready" if failing else "ready"
    if failing:
        body["failing"] = failing
    return (503 if failing else 200), body


def health_routes(dependencies: list[Dependency]) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        status, body = await readiness(dependencies)
        return JSONResponse(body, status_code=status)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def create_health_app(dependencies: list[Dependency]) -> Starlette:
    return Starlette(routes=health_routes(dependencies))


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a service that handles SIGTERM and SIGINT itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_health(app: Starlette, host: str, port: int, stopping: asyncio.Event) -> None:
    """Serve the health app until `stopping` is set; the service owns the signals."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    await stopping.wait()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task
