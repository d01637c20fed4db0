"""The console's pages: server-rendered HTML (Jinja2), plain forms that post back and redirect
(the answer shown on the page they return to), and one small script for live refresh. Every
page declares the roles that may see it; every form carries the session's CSRF token."""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoint
# annotations, which name dependency aliases local to the router factory (`Anyone`...).

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from middleware.config.settings import Poct1aInstrumentSettings
from middleware.store.accounts import ROLES
from middleware.store.archive import TraceQuery
from middleware.web import actions, views
from middleware.web.security import (
    ADMIN,
    ALL,
    CONTROL,
    COOKIE,
    LOGIN_COOKIE,
    REVIEW,
    Principal,
    console_settings,
    now,
    principal,
    require,
    secure,
    set_session_cookie,
)

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["page_router", "templates"]

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
templates.env.filters["visible"] = views.visible_bytes


def _short_time(value: str | None) -> str:
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["when"] = _short_time

_MESSAGES = {
    "bad_credentials": "Wrong name or password.",
    "locked": "This account is locked after too many failed attempts: an admin unlocks it.",
    "disabled": "This account is disabled.",
    "expired": "Please sign in.",
}


def _back(path: str, *, ok: str = "", error: str = "") -> RedirectResponse:
    sep = "&" if "?" in path else "?"
    if ok:
        path += f"{sep}ok={quote(ok)}"
    elif error:
        path += f"{sep}error={quote(error)}"
    return RedirectResponse(path, status_code=303)


def _safe_next(value: str) -> str:
    return value if value.startswith("/") and not value.startswith("//") else "/"


def _moment(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _point_of_care(gateway: "Gateway") -> list[dict[str, Any]]:
    """Each POCT1-A device with its lock as the device last acknowledged it and the operator
    list labgate keeps for it (GBUI XIII-2: only certified operators test; the list is the
    configuration's, sent to the device, whose acceptance is shown)."""
    today = datetime.now(UTC).date()
    devices = []
    for instrument in gateway.settings.instruments:
        if not isinstance(instrument, Poct1aInstrumentSettings):
            continue
        health = gateway.health.connections.get(instrument.name)
        device = health.device if health is not None else None
        devices.append(
            {
                "name": instrument.name,
                "location": instrument.location,
                "device": device.as_dict() if device is not None else {},
                "operators": [
                    {
                        "id": operator.id,
                        "name": operator.name,
                        "valid_until": operator.valid_until,
                        "expired": operator.valid_until is not None
                        and operator.valid_until < today,
                    }
                    for operator in instrument.operators
                ],
            }
        )
    return devices


def page_router(gateway: "Gateway") -> APIRouter:
    router = APIRouter(default_response_class=HTMLResponse)
    Anyone = Annotated[Principal, Depends(require(gateway, *ALL))]
    Reviewer = Annotated[Principal, Depends(require(gateway, *REVIEW))]
    Controller = Annotated[Principal, Depends(require(gateway, *CONTROL))]
    Admin = Annotated[Principal, Depends(require(gateway, *ADMIN))]
    refresh = console_settings(gateway).refresh_seconds

    def render(request: Request, name: str, who: Principal | None, **context: Any) -> HTMLResponse:
        context.update(
            who=who,
            gateway_name=gateway.settings.gateway,
            version=gateway.version,
            ok=request.query_params.get("ok", ""),
            error=request.query_params.get("error", ""),
            refresh=refresh,
            path=request.url.path,
        )
        response = templates.TemplateResponse(request, name, context)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def form(request: Request) -> dict[str, str]:
        data = await request.form()
        return {key: value for key, value in data.items() if isinstance(value, str)}

    # --- signing in ----------------------------------------------------------------------

    @router.get("/login")
    async def login_page(request: Request, next: str = "/") -> Response:
        if await principal(request, gateway) is not None:
            return RedirectResponse(_safe_next(next), status_code=303)
        token = secrets.token_urlsafe(24)
        message = _MESSAGES.get(request.query_params.get("why", ""), "")
        response = render(
            request, "login.html", None, csrf=token, next=_safe_next(next), message=message
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=secure(request, console_settings(gateway)),
            path="/login",
        )
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        data = await form(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        target = _safe_next(data.get("next", "/"))
        if not expected or not secrets.compare_digest(expected, data.get("csrf", "")):
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        settings = console_settings(gateway)
        outcome = await gateway.store.run(
            gateway.store.login,
            data.get("name", "").strip(),
            data.get("password", ""),
            now(),
            request.client.host if request.client else "",
            settings.max_failed_logins,
        )
        if outcome.refused:
            return RedirectResponse(
                f"/login?why={outcome.refused}&next={quote(target)}", status_code=303
            )
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(response, request, gateway, outcome.token)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @router.post("/logout")
    async def logout(who: Anyone) -> Response:
        await gateway.store.run(gateway.store.end_session, who.session_id, now(), "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- dashboard -----------------------------------------------------------------------

    @router.get("/")
    async def dashboard_page(request: Request, who: Anyone) -> HTMLResponse:
        data = await views.dashboard(gateway)
        return render(request, "dashboard.html", who, d=data)

    @router.get("/fragments/dashboard")
    async def dashboard_fragment(request: Request, who: Anyone) -> HTMLResponse:
        data = await views.dashboard(gateway)
        return render(request, "_dashboard.html", who, d=data)

    @router.post("/alarms/{alarm_id}/ack")
    async def ack(request: Request, alarm_id: int, who: Anyone) -> Response:
        data = await form(request)
        try:
            await actions.acknowledge_alarm(gateway, who, alarm_id, data.get("comment"))
        except actions.Refused as exc:
            return _back("/", error=exc.message)
        return _back("/", ok=f"alarm {alarm_id} acknowledged")

    # --- results and the review queue ----------------------------------------------------

    @router.get("/results")
    async def results_page(
        request: Request,
        who: Anyone,
        view: str = "held",
        before: int | None = None,
        instrument: str = "",
    ) -> HTMLResponse:
        decision = "held" if view == "held" else None
        rows = await gateway.store.read(
            gateway.store.results_page, decision, 100, before, instrument or None
        )
        held = await gateway.store.read(gateway.store.count_held)
        return render(
            request,
            "results.html",
            who,
            rows=rows,
            view="held" if decision else "all",
            held=held,
            instrument=instrument,
            next_before=rows[-1]["id"] if len(rows) == 100 else None,
        )

    @router.post("/results/sign")
    async def sign(request: Request, who: Reviewer) -> Response:
        data = await request.form()
        ids = [int(v) for v in data.getlist("result") if isinstance(v, str) and v.isdigit()]
        decision = str(data.get("decision", ""))
        password = str(data.get("password", ""))
        comment = str(data.get("comment", ""))
        try:
            outcome = await actions.sign_results(gateway, who, ids, decision, password, comment)
        except actions.Refused as exc:
            if exc.status == 403 and "locked" in exc.message:
                return RedirectResponse("/login?why=locked", status_code=303)
            return _back("/results", error=exc.message)
        return _back(
            "/results", ok=f"{outcome.results} result(s) {decision} and signed by {who.user}"
        )

    # --- rule sets and switches ----------------------------------------------------------

    @router.get("/rules")
    async def rules_page(request: Request, who: Anyone) -> HTMLResponse:
        store = gateway.store
        versions = await store.read(store.ruleset_versions)
        state = await views.validation(gateway)
        records = await store.read(store.change_records, 50)
        active = next((v for v in versions if v.active), None)
        return render(
            request,
            "rules.html",
            who,
            versions=list(reversed(versions)),
            active=active,
            state=state,
            records=records,
        )

    @router.post("/rules/switch")
    async def switch(request: Request, who: Reviewer) -> Response:
        data = await form(request)
        try:
            await actions.set_switch(
                gateway,
                who,
                data.get("scope", ""),
                data.get("name", ""),
                data.get("enabled") == "on",
                data.get("reason"),
            )
        except actions.Refused as exc:
            return _back("/rules", error=exc.message)
        return _back("/rules", ok="switch changed")

    @router.post("/rules/{version_id}/rollback")
    async def rollback(request: Request, version_id: int, who: Reviewer) -> Response:
        data = await form(request)
        try:
            await actions.rollback(gateway, who, version_id, data.get("reason"))
        except actions.Refused as exc:
            return _back("/rules", error=exc.message)
        return _back("/rules", ok=f"version {version_id} active again")

    # --- trace ---------------------------------------------------------------------------

    @router.get("/trace")
    async def trace_page(
        request: Request,
        who: Anyone,
        patient: str = "",
        specimen: str = "",
        message: str = "",
        control_id: str = "",
        since: str = "",
        until: str = "",
    ) -> HTMLResponse:
        asked = any((patient, specimen, message, control_id, since, until))
        stories: list[dict[str, Any]] = []
        if asked:
            query = TraceQuery(
                patient_id=patient.strip() or None,
                specimen_id=specimen.strip() or None,
                message_id=message.strip() or None,
                control_id=control_id.strip() or None,
                since=_moment(since),
                until=_moment(until),
                limit=20,
                raw=True,
            )
            stories = await gateway.store.read(gateway.store.trace, query)
        return render(
            request,
            "trace.html",
            who,
            stories=stories,
            asked=asked,
            q={
                "patient": patient,
                "specimen": specimen,
                "message": message,
                "control_id": control_id,
                "since": since,
                "until": until,
            },
        )

    # --- devices and the outbox ----------------------------------------------------------

    @router.get("/devices")
    async def devices_page(request: Request, who: Anyone) -> HTMLResponse:
        state = await gateway.store.read(gateway.store.governance_state)
        audit = await gateway.store.read(
            gateway.store.audit_search, None, "device_", None, None, 20
        )
        names = sorted({i.name for i in gateway.settings.instruments} | state.blocked_devices)
        devices = [
            {
                "name": name,
                "blocked": name in state.blocked_devices,
                "state": getattr(gateway.health.connections.get(name), "state", "unknown"),
            }
            for name in names
        ]
        return render(
            request,
            "devices.html",
            who,
            devices=devices,
            history=audit,
            point_of_care=_point_of_care(gateway),
        )

    @router.post("/devices/{name}/{action}")
    async def device(request: Request, name: str, action: str, who: Controller) -> Response:
        if action not in {"block", "unblock"}:
            return _back("/devices", error="unknown action")
        data = await form(request)
        try:
            await actions.set_device(gateway, who, name, action == "block", data.get("reason"))
        except actions.Refused as exc:
            return _back("/devices", error=exc.message)
        return _back("/devices", ok=f"{name} {action}ed")

    @router.get("/outbox")
    async def outbox_page(request: Request, who: Anyone, state: str = "") -> HTMLResponse:
        rows = await gateway.store.read(gateway.store.outbox_list, state or None, 100)
        return render(request, "outbox.html", who, rows=rows, state=state)

    @router.post("/outbox/{outbox_id}/{action}")
    async def outbox_action(
        request: Request, outbox_id: int, action: str, who: Controller
    ) -> Response:
        if action not in {"resend", "release"}:
            return _back("/outbox", error="unknown action")
        data = await form(request)
        try:
            await actions.outbox_action(gateway, who, outbox_id, action, data.get("reason"))
        except actions.Refused as exc:
            return _back("/outbox", error=exc.message)
        return _back("/outbox", ok=f"outbox message {outbox_id}: {action} done")

    # --- audit and accounts --------------------------------------------------------------

    @router.get("/audit")
    async def audit_page(
        request: Request,
        who: Controller,
        actor: str = "",
        action: str = "",
        since: str = "",
        until: str = "",
    ) -> HTMLResponse:
        rows = await gateway.store.read(
            gateway.store.audit_search,
            actor or None,
            action or None,
            _moment(since),
            _moment(until),
            200,
        )
        q = {"actor": actor, "action": action, "since": since, "until": until}
        export = "/api/audit.csv?" + "&".join(f"{k}={quote(v)}" for k, v in q.items() if v)
        return render(request, "audit.html", who, rows=rows, q=q, export=export)

    @router.get("/users")
    async def users_page(request: Request, who: Admin) -> HTMLResponse:
        rows = await gateway.store.read(gateway.store.users)
        return render(request, "users.html", who, users=rows, roles=ROLES)

    @router.post("/users")
    async def create_user(request: Request, who: Admin) -> Response:
        data = await form(request)
        try:
            await actions.create_user(
                gateway, who, data.get("name", ""), data.get("role", ""), data.get("password", "")
            )
        except actions.Refused as exc:
            return _back("/users", error=exc.message)
        return _back("/users", ok=f"user {data.get('name', '')} created")

    @router.post("/users/{name}/{action}")
    async def change_user(request: Request, name: str, action: str, who: Admin) -> Response:
        data = await form(request)
        try:
            await actions.change_user(gateway, who, name, action, data.get("reason"))
        except actions.Refused as exc:
            return _back("/users", error=exc.message)
        return _back("/users", ok=f"user {name}: {action} done")

    return router
