"""The HTTP API: health for `labgate status` and supervisors, Prometheus metrics.

It listens on loopback by default (config `api.host`); the console issue adds authentication
before anything that shows patient data or changes state is exposed (GBUI II-3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["create_app"]


def create_app(gateway: Gateway) -> FastAPI:
    """The API of one running gateway."""
    app = FastAPI(
        title="labgate",
        version=gateway.version,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        depth = await gateway.store.read(gateway.store.outbox_depth)
        return {
            "status": gateway.state,
            "gateway": gateway.settings.gateway,
            "version": gateway.version,
            "started_at": gateway.started_at.isoformat(),
            "outbox_depth": depth,
            "connections": [c.as_dict() for c in gateway.health.connections.values()],
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        depth = await gateway.store.read(gateway.store.outbox_depth, gateway.settings.lis.name)
        gateway.health.outbox_depth.labels(gateway.settings.lis.name).set(depth)
        return Response(generate_latest(gateway.health.registry), media_type=CONTENT_TYPE_LATEST)

    return app
