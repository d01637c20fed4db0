"""The HTTP API: health for `labgate status` and supervisors, Prometheus metrics.

It listens on loopback by default (config `api.host`); the console issue adds authentication
before anything that shows patient data or changes state is exposed (GBUI II-3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from middleware.web.schemas import OrderIn

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

    @app.post("/api/orders", status_code=201)
    async def create_order(order: OrderIn) -> dict[str, Any]:
        """Keep an order for a specimen: answered to the analyser's query, or downloaded to
        `instrument` at once when it is given (until the LIS sends orders over HL7)."""
        if order.instrument and order.instrument not in gateway.sessions:
            raise HTTPException(status_code=422, detail=f"no instrument named {order.instrument!r}")
        order_id = await gateway.store.run(
            gateway.store.add_order, order.to_model(), order.instrument
        )
        if order.instrument:
            gateway.sessions[order.instrument].orders_waiting()
        return {"id": order_id, "specimen_id": order.specimen_id, "state": "pending"}

    @app.get("/api/orders")
    async def list_orders(specimen_id: str | None = None) -> list[dict[str, Any]]:
        return await gateway.store.read(gateway.store.list_orders, specimen_id)

    @app.get("/api/validation")
    async def validation() -> dict[str, Any]:
        """What decides right now: the active rule-set version, the switches, the blocked
        devices, the QC plan in force, and the latest change records (GBUI XI-2)."""
        store = gateway.store
        state = await store.read(store.governance_state)
        records = await store.read(store.change_records, 10)
        active = state.active
        qc = gateway.validation.qc
        return {
            "ruleset": None
            if active is None
            else {
                "version_id": active.version_id,
                "name": active.name,
                "version": active.version,
                "biologist": active.biologist,
                "activated_by": active.created_by,
                "sha256": active.sha256,
            },
            "autovalidation": state.autovalidation,
            "disabled_biologists": sorted(state.disabled_biologists),
            "blocked_devices": sorted(state.blocked_devices),
            "qc_gate": qc is not None,
            "change_records": records,
        }

    @app.get("/api/alarms")
    async def alarms(open_only: bool = True, limit: int = 100) -> list[dict[str, Any]]:
        """Alarm episodes, newest first (open ones by default). Acknowledging is a person's
        act: `labgate alarms ack` (the console adds it with login)."""
        return await gateway.store.read(gateway.store.alarms, open_only, limit)

    @app.get("/metrics")
    async def metrics() -> Response:
        depth = await gateway.store.read(gateway.store.outbox_depth, gateway.settings.lis.name)
        gateway.health.outbox_depth.labels(gateway.settings.lis.name).set(depth)
        return Response(generate_latest(gateway.health.registry), media_type=CONTENT_TYPE_LATEST)

    return app
