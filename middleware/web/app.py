"""The daemon's HTTP side: the JSON API and the web console, in one FastAPI app served by the
gateway (uvicorn, in the daemon's event loop).

Open without a session: `/api/health` and `/metrics` (supervisors, `labgate status`: no
patient data), `/login` and `/static/`. Everything else needs a console session with a role
that may (see `security.py`); the API listens on loopback unless the lab decides otherwise
(config `api.host`), and should then be put behind TLS (GBUI II-3).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from middleware.web.account import account_router
from middleware.web.api import api_router
from middleware.web.pages import page_router, templates
from middleware.web.qc_pages import qc_router
from middleware.web.rule_editor import rule_editor_router
from middleware.web.security import NotSignedIn

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from middleware.gateway import Gateway

__all__ = ["create_app"]

# Pages may load only what the daemon serves: no inline script, no other origin, no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(gateway: Gateway) -> FastAPI:
    """The API and console of one running gateway."""
    app = FastAPI(
        title="labgate",
        version=gateway.version,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    app.mount(
        "/static",
        StaticFiles(directory=str(Path(__file__).with_name("static"))),
        name="static",
    )
    app.include_router(api_router(gateway))
    app.include_router(page_router(gateway))
    app.include_router(rule_editor_router(gateway))
    app.include_router(qc_router(gateway))
    app.include_router(account_router(gateway))

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?why=expired&next={quote(target)}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail, "who": None, "path": ""},
            status_code=exc.status_code,
        )

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app
