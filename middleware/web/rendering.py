"""One console page rendered with the context every template expects (who is signed in, the
gateway's name and version, the flash message of the redirect that led here), for the routers
that live outside `pages.py` (QC, account)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from middleware.web.pages import templates
from middleware.web.security import Principal, console_settings

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["render"]


def render(
    gateway: Gateway, request: Request, name: str, who: Principal | None, **context: Any
) -> HTMLResponse:
    """The template `name` as `pages.py` renders its own: never cached (patient data)."""
    context.update(
        who=who,
        gateway_name=gateway.settings.gateway,
        version=gateway.version,
        ok=request.query_params.get("ok", ""),
        error=request.query_params.get("error", ""),
        refresh=console_settings(gateway).refresh_seconds,
        path=request.url.path,
    )
    response = templates.TemplateResponse(request, name, context)
    response.headers["Cache-Control"] = "no-store"
    return response
