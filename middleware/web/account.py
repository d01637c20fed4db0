"""A signed-in person's own account: the `/account` page and `POST /api/session/password`.

Changing one's password takes the current password and the new one (twice on the page: a typo
would lock the person out). The policy is the one of `labgate user add` (the store's, at least
8 characters, GBUI VII-2), plus a new password that differs from the current one. The change is
audited, and the account's other sessions end; the session that asked stays open. A wrong
current password counts as a failed attempt and may lock the account (see
`AccountStore.change_own_password` for why).
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoint
# annotations, which name dependency aliases local to the router factory (`Anyone`).

from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from middleware.store.accounts import MIN_PASSWORD, AccountError
from middleware.web.rendering import render
from middleware.web.security import ALL, COOKIE, Principal, console_settings, now, require

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["PasswordChange", "account_router"]


class PasswordChange(BaseModel):
    """The body of `POST /api/session/password`."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


class _Refused(Exception):
    def __init__(self, status: int, message: str, locked: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.locked = status, message, locked


async def _change_password(gateway: "Gateway", who: Principal, current: str, new: str) -> None:
    """Change `who`'s password; `_Refused` says why not."""
    store = gateway.store
    try:
        refused = await store.run(
            store.change_own_password,
            who.user,
            current,
            new,
            now(),
            who.session_id,
            console_settings(gateway).max_failed_logins,
        )
    except AccountError as exc:
        raise _Refused(422, str(exc)) from None
    if refused == "locked":
        raise _Refused(403, "wrong current password: the account is now locked", locked=True)
    if refused:
        raise _Refused(403, "wrong current password")


def account_router(gateway: "Gateway") -> APIRouter:
    """`/account` (page and form) and `POST /api/session/password`, for every role."""
    router = APIRouter()
    Anyone = Annotated[Principal, Depends(require(gateway, *ALL))]

    @router.get("/account", response_class=HTMLResponse)
    async def account_page(request: Request, who: Anyone) -> HTMLResponse:
        return render(
            gateway,
            request,
            "account.html",
            who,
            min_password=MIN_PASSWORD,
            max_failed=console_settings(gateway).max_failed_logins,
        )

    @router.post("/account/password")
    async def password_form(request: Request, who: Anyone) -> Response:
        data = await request.form()
        fields = {key: value for key, value in data.items() if isinstance(value, str)}
        new = fields.get("new_password", "")
        if new != fields.get("new_password_again", ""):
            # Checked before the current password: a typo costs no failed attempt.
            message = "the two new passwords differ"
            return RedirectResponse(f"/account?error={quote(message)}", status_code=303)
        try:
            await _change_password(gateway, who, fields.get("current_password", ""), new)
        except _Refused as exc:
            if exc.locked:
                response = RedirectResponse("/login?why=locked", status_code=303)
                response.delete_cookie(COOKIE, path="/")
                return response
            return RedirectResponse(f"/account?error={quote(exc.message)}", status_code=303)
        done = "password changed; your other sessions have ended"
        return RedirectResponse(f"/account?ok={quote(done)}", status_code=303)

    @router.post("/api/session/password")
    async def password_api(body: PasswordChange, who: Anyone) -> dict[str, Any]:
        """Change the signed-in person's password (`current_password`, `new_password`)."""
        try:
            await _change_password(gateway, who, body.current_password, body.new_password)
        except _Refused as exc:
            raise HTTPException(status_code=exc.status, detail=exc.message) from None
        return {"user": who.user, "password_changed": True}

    return router
