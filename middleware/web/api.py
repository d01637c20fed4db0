"""The JSON API. `/api/health` and `/metrics` are open (supervisors, `labgate status`); every
other endpoint needs a session (`POST /api/session`) with a role that may, and changes carry
the session's CSRF token in `X-CSRF-Token`."""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoint
# annotations, which name dependency aliases local to the router factory (`Anyone`...).

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from middleware.store.archive import TraceQuery
from middleware.web import actions, views
from middleware.web.schemas import OrderIn
from middleware.web.security import (
    ADMIN,
    ALL,
    CONTROL,
    COOKIE,
    REVIEW,
    Principal,
    console_settings,
    now,
    principal,
    require,
    set_session_cookie,
)

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["api_router"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_Body):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class SignIn(_Body):
    result_ids: list[int] = Field(min_length=1, max_length=1000)
    decision: Literal["validated", "rejected"]
    password: str = Field(min_length=1, max_length=256)
    comment: str = ""


class ReasonIn(_Body):
    reason: str = ""


class CommentIn(_Body):
    comment: str = ""


class SwitchIn(_Body):
    scope: Literal["global", "biologist"]
    name: str = ""
    enabled: bool
    reason: str = ""


class UserIn(_Body):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["technician", "biologist", "admin"]
    password: str = Field(min_length=1, max_length=256)


def _refused(exc: actions.Refused) -> HTTPException:
    return HTTPException(status_code=exc.status, detail=exc.message)


def api_router(gateway: "Gateway") -> APIRouter:
    """The API of one running gateway."""
    router = APIRouter()
    anyone = Depends(require(gateway, *ALL))
    reviewer = Depends(require(gateway, *REVIEW))
    controller = Depends(require(gateway, *CONTROL))
    admin = Depends(require(gateway, *ADMIN))
    Anyone = Annotated[Principal, anyone]
    Reviewer = Annotated[Principal, reviewer]
    Controller = Annotated[Principal, controller]
    Admin = Annotated[Principal, admin]

    # --- open: supervisors ---------------------------------------------------------------

    @router.get("/api/health")
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

    @router.get("/metrics")
    async def metrics() -> Response:
        depth = await gateway.store.read(gateway.store.outbox_depth, gateway.settings.lis.name)
        gateway.health.outbox_depth.labels(gateway.settings.lis.name).set(depth)
        return Response(generate_latest(gateway.health.registry), media_type=CONTENT_TYPE_LATEST)

    # --- sessions ------------------------------------------------------------------------

    @router.post("/api/session")
    async def login(body: LoginIn, request: Request, response: Response) -> dict[str, Any]:
        """Log in: the session cookie, and the CSRF token to send with every change."""
        settings = console_settings(gateway)
        address = request.client.host if request.client else ""
        outcome = await gateway.store.run(
            gateway.store.login,
            body.name,
            body.password,
            now(),
            address,
            settings.max_failed_logins,
        )
        if outcome.refused:
            detail = {
                "bad_credentials": "wrong name or password",
                "locked": "account locked: an admin unlocks it",
                "disabled": "account disabled",
            }.get(outcome.refused, "refused")
            raise HTTPException(status_code=401, detail=detail)
        set_session_cookie(response, request, gateway, outcome.token)
        return {"user": outcome.name, "role": outcome.role, "csrf": outcome.csrf}

    @router.get("/api/session")
    async def me(who: Anyone) -> dict[str, Any]:
        return {"user": who.user, "role": who.role, "csrf": who.csrf}

    @router.delete("/api/session", status_code=204)
    async def logout(request: Request, response: Response) -> None:
        who = await principal(request, gateway)
        if who is not None:
            await gateway.store.run(gateway.store.end_session, who.session_id, now(), "logout")
        response.delete_cookie(COOKIE, path="/")

    # --- reading -------------------------------------------------------------------------

    @router.get("/api/dashboard")
    async def dashboard(_: Anyone) -> dict[str, Any]:
        return await views.dashboard(gateway)

    @router.get("/api/validation")
    async def validation(_: Anyone) -> dict[str, Any]:
        return await views.validation(gateway)

    @router.get("/api/alarms")
    async def alarms(_: Anyone, open_only: bool = True, limit: int = 100) -> list[dict[str, Any]]:
        """Alarm episodes, newest first (open ones by default)."""
        return await gateway.store.read(gateway.store.alarms, open_only, min(limit, 1000))

    @router.get("/api/results")
    async def results(
        _: Anyone,
        decision: str | None = None,
        instrument: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Patient results newest first; `decision=held` is the review queue."""
        return await gateway.store.read(
            gateway.store.results_page, decision, min(limit, 1000), before, instrument
        )

    @router.get("/api/trace")
    async def trace(
        _: Anyone,
        patient: str | None = None,
        specimen: str | None = None,
        message: str | None = None,
        control_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        raw: bool = False,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        query = TraceQuery(
            patient_id=patient or None,
            specimen_id=specimen or None,
            message_id=message or None,
            control_id=control_id or None,
            since=since,
            until=until,
            limit=min(limit, 500),
            raw=raw,
        )
        return await gateway.store.read(gateway.store.trace, query)

    @router.get("/api/outbox")
    async def outbox(_: Anyone, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await gateway.store.read(gateway.store.outbox_list, state, min(limit, 1000))

    @router.get("/api/rulesets")
    async def rulesets(_: Anyone) -> list[dict[str, Any]]:
        versions = await gateway.store.read(gateway.store.ruleset_versions)
        return [
            {
                "version_id": v.version_id,
                "name": v.name,
                "version": v.version,
                "biologist": v.biologist,
                "created_at": v.created_at.isoformat(),
                "created_by": v.created_by,
                "active": v.active,
                "sha256": v.sha256,
            }
            for v in versions
        ]

    @router.get("/api/audit")
    async def audit(
        _: Controller,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        return await gateway.store.read(
            gateway.store.audit_search, actor, action, since, until, min(limit, 10000)
        )

    @router.get("/api/audit.csv")
    async def audit_csv(
        _: Controller,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 10000,
    ) -> Response:
        rows = await gateway.store.read(
            gateway.store.audit_search, actor, action, since, until, min(limit, 100000)
        )
        return Response(
            views.audit_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="labgate-audit.csv"'},
        )

    @router.get("/api/users")
    async def users(_: Admin) -> list[dict[str, Any]]:
        return await gateway.store.read(gateway.store.users)

    # --- orders (as before, now signed in) ------------------------------------------------

    @router.post("/api/orders", status_code=201)
    async def create_order(_: Anyone, order: OrderIn) -> dict[str, Any]:
        """Keep an order for a specimen: answered to the analyser's query, or downloaded to
        `instrument` at once when it is given."""
        if order.instrument and order.instrument not in gateway.sessions:
            raise HTTPException(status_code=422, detail=f"no instrument named {order.instrument!r}")
        order_id = await gateway.store.run(
            gateway.store.add_order, order.to_model(), order.instrument
        )
        if order.instrument:
            gateway.sessions[order.instrument].orders_waiting()
        return {"id": order_id, "specimen_id": order.specimen_id, "state": "pending"}

    @router.get("/api/orders")
    async def list_orders(_: Anyone, specimen_id: str | None = None) -> list[dict[str, Any]]:
        return await gateway.store.read(gateway.store.list_orders, specimen_id)

    # --- actions -------------------------------------------------------------------------

    @router.post("/api/results/sign")
    async def sign(body: SignIn, who: Reviewer) -> dict[str, Any]:
        """A biologist validates or rejects held results (password re-entered)."""
        try:
            outcome = await actions.sign_results(
                gateway, who, body.result_ids, body.decision, body.password, body.comment
            )
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {
            "decision": body.decision,
            "results": outcome.results,
            "corrections": outcome.corrections,
        }

    @router.post("/api/alarms/{alarm_id}/ack")
    async def ack(alarm_id: int, body: CommentIn, who: Anyone) -> dict[str, Any]:
        try:
            await actions.acknowledge_alarm(gateway, who, alarm_id, body.comment)
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {"id": alarm_id, "acknowledged_by": who.user}

    @router.post("/api/devices/{name}/{action}")
    async def device(
        name: str, action: Literal["block", "unblock"], body: ReasonIn, who: Controller
    ) -> dict[str, Any]:
        try:
            await actions.set_device(gateway, who, name, action == "block", body.reason)
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {"device": name, "blocked": action == "block"}

    @router.post("/api/switches")
    async def switch(body: SwitchIn, who: Reviewer) -> dict[str, Any]:
        try:
            await actions.set_switch(gateway, who, body.scope, body.name, body.enabled, body.reason)
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {"scope": body.scope, "name": body.name, "enabled": body.enabled}

    @router.post("/api/rulesets/{version_id}/rollback")
    async def rollback(version_id: int, body: ReasonIn, who: Reviewer) -> dict[str, Any]:
        try:
            change = await actions.rollback(gateway, who, version_id, body.reason)
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {"version_id": version_id, "change_record": change}

    @router.post("/api/outbox/{outbox_id}/{action}")
    async def outbox_action(
        outbox_id: int, action: Literal["resend", "release"], body: ReasonIn, who: Controller
    ) -> dict[str, Any]:
        try:
            return await actions.outbox_action(gateway, who, outbox_id, action, body.reason)
        except actions.Refused as exc:
            raise _refused(exc) from None

    @router.post("/api/users", status_code=201)
    async def create_user(body: UserIn, who: Admin) -> dict[str, Any]:
        try:
            await actions.create_user(gateway, who, body.name, body.role, body.password)
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {"name": body.name, "role": body.role, "status": "active"}

    @router.post("/api/users/{name}/{action}")
    async def change_user(
        name: str, action: Literal["unlock", "disable"], body: ReasonIn, who: Admin
    ) -> dict[str, Any]:
        try:
            await actions.change_user(gateway, who, name, action, body.reason)
        except actions.Refused as exc:
            raise _refused(exc) from None
        return {"name": name, "status": "active" if action == "unlock" else "disabled"}

    return router
