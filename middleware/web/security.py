"""Who is asking, and may they: console sessions, roles and CSRF (GBUI II-3).

- The session cookie carries a random token (the store keeps only its SHA-256); it is HttpOnly,
  SameSite=Strict, and Secure on HTTPS (always with `api.tls` or `console.secure_cookies`).
- A session idle longer than `console.idle_minutes` is ended (audited) at its next request.
- Every request that changes something carries the session's CSRF token, in the
  `X-CSRF-Token` header (API) or the `csrf` form field (pages); SameSite=Strict is the
  second line.
- `require(*roles)` is the dependency every page and endpoint declares; a missing or expired
  session is `NotSignedIn` (401 on /api, a redirect to the login page elsewhere), a role that
  may not is 403.

Open without a session, on purpose: `/api/health` and `/metrics` (supervisors and
`labgate status`; no patient data), the login page and the static files.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from starlette.responses import Response

from middleware.config.settings import ConsoleSettings

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = [
    "ADMIN",
    "ALL",
    "CONTROL",
    "COOKIE",
    "REVIEW",
    "NotSignedIn",
    "Principal",
    "console_settings",
    "require",
    "set_session_cookie",
]

COOKIE = "labgate_session"
LOGIN_COOKIE = "labgate_login"  # double-submit token of the login form (no session yet)

# The role matrix. Reading is everyone's; deciding on results and on the rules is a
# biologist's; blocking devices and the outbox are the lab's (biologist or admin); accounts are
# the admin's.
ALL = ("technician", "biologist", "admin")
REVIEW = ("biologist",)
CONTROL = ("biologist", "admin")
ADMIN = ("admin",)

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# A session's last-seen time is written at most this often (a write per request would queue
# behind the analysers' commits).
_TOUCH_EVERY = timedelta(seconds=20)


class NotSignedIn(Exception):
    """No valid session: 401 for the API, the login page for the console."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The person behind a request."""

    user: str
    role: str
    csrf: str
    session_id: int


def console_settings(gateway: Gateway) -> ConsoleSettings:
    settings = getattr(gateway.settings, "console", None) or ConsoleSettings()
    if getattr(gateway.settings.api, "tls", None) is not None and not settings.secure_cookies:
        # The listener speaks only HTTPS: every cookie is Secure, whatever the request's
        # scheme claims (a forwarded-proto header must not get a session cookie sent in clear).
        settings = settings.model_copy(update={"secure_cookies": True})
    return settings


def now() -> datetime:
    return datetime.now(UTC)


def secure(request: Request, settings: ConsoleSettings) -> bool:
    return settings.secure_cookies or request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, gateway: Gateway, token: str) -> None:
    settings = console_settings(gateway)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=secure(request, settings),
        path="/",
    )


async def principal(request: Request, gateway: Gateway) -> Principal | None:
    """The signed-in person, once per request (ends an idle session on the way)."""
    if hasattr(request.state, "principal"):
        found: Principal | None = request.state.principal
        return found
    token = request.cookies.get(COOKIE, "")
    found = None
    if token:
        store = gateway.store
        view = await store.read(store.session_for, token)
        if view is not None:
            moment = now()
            idle = timedelta(minutes=console_settings(gateway).idle_minutes)
            if moment - view.last_seen_at > idle:
                await store.run(store.end_session, view.session_id, moment, "expired")
            else:
                if moment - view.last_seen_at > _TOUCH_EVERY:
                    await store.run(store.touch_session, view.session_id, moment)
                found = Principal(view.user, view.role, view.csrf, view.session_id)
    request.state.principal = found
    return found


async def _csrf_token(request: Request) -> str:
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf")
        return value if isinstance(value, str) else ""
    return ""


def require(gateway: Gateway, *roles: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the request's principal, if signed in with one of `roles` (and, for a
    change, with the session's CSRF token)."""

    async def dependency(request: Request) -> Principal:
        who = await principal(request, gateway)
        if who is None:
            raise NotSignedIn()
        if who.role not in roles:
            raise HTTPException(status_code=403, detail=f"the {who.role} role may not do this")
        if request.method in _UNSAFE:
            given = await _csrf_token(request)
            if not given or not hmac.compare_digest(given.encode(), who.csrf.encode()):
                raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
        return who

    return dependency
