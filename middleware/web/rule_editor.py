"""The console's rule-set editor: a stored version's YAML in a text area, checked as
`labgate rules check` checks a file (every problem with its line and field), its embedded cases
run (expected against obtained), its decisions replayed on the recent stored history against
the active version's (what would change: `rule_check`), and activated through
`activation.activate_text`, the path of `labgate rules activate` (GBUI XI-2's change record,
refusals recorded too).

Who may: everyone signed in reads and checks (a check changes nothing, and a technician may
prepare a change for a biologist); only a biologist activates, signing with the password
again as for results. Accepting a change is the biologist's (GBUI XI-1), as is a rollback
(`pages.py`).

The replay is bounded (the last `days`, at most `limit` results, both in the form) and runs in
a worker thread, one at a time: the daemon's event loop also serves the analysers, and the
store's writer thread commits their messages, so neither runs it.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoint
# annotations, which name dependency aliases local to the router factory (`Anyone`...).

import asyncio
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from middleware.activation import ActivationOutcome, activate_text
from middleware.store.governance import RuleSetVersion
from middleware.web.actions import Refused
from middleware.web.pages import templates
from middleware.web.rule_check import (
    DEFAULT_DAYS,
    DEFAULT_LIMIT,
    MAX_DAYS,
    MAX_LIMIT,
    SOURCE,
    ReplayWindow,
    RuleCheck,
    bounded_int,
    check_rules,
)
from middleware.web.security import ALL, REVIEW, Principal, console_settings, now, require

if TYPE_CHECKING:
    from middleware.gateway import Gateway
    from middleware.store import Store

__all__ = ["ActivateIn", "CheckIn", "RuleEditor", "rule_editor_router"]

#: Who activates (GBUI XI-1: accepting a change is the biologist's responsibility).
ACTIVATORS = REVIEW

#: A rule set is a page of YAML; this bounds what a request may make the parser chew.
MAX_TEXT = 500_000
#: How long a check waits for another person's replay to finish before giving up.
REPLAY_WAIT_SECONDS = 30.0

_STARTER = """\
name: new-rule-set
version: "1"
responsible_biologist: ""
enabled: true
tests: {}
cases: []
"""


class _ActiveChanged(Exception):
    """Another activation or rollback came between the replay and this activation."""


def _activate_against(
    store: "Store",
    compared_with: int | None,
    text: str,
    author: str,
    change: str,
    probation_days: int,
    comparison: dict[str, Any] | None,
) -> ActivationOutcome:
    """On the store's writer thread (writes are serialised there, so nothing comes between
    the look and the record): activate only if the version the replay compared against is
    still the active one, else the recorded comparison would describe another change."""
    state = store.governance_state()
    if (state.active.version_id if state.active else None) != compared_with:
        raise _ActiveChanged()
    return activate_text(
        store,
        text,
        SOURCE,
        author,
        change,
        probation_days=probation_days,
        comparison=comparison,
    )


class RuleEditor:
    """The editor's actions over one gateway's store, shared by the pages and the API."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        # One replay at a time: two threads replaying would take both cores from the analysers.
        self._replay_slot = asyncio.Semaphore(1)

    def history_url(self) -> str:
        # The store's own URL (with its password, which `str(url)` masks): the history is
        # read on a connection of its own, opened read-only.
        return self.gateway.store.engine.url.render_as_string(hide_password=False)

    async def version_text(self, version_id: int | None) -> tuple[str, RuleSetVersion | None]:
        """The text of stored version `version_id` (default: the active one, or a starter)."""
        store = self.gateway.store
        if version_id is None:
            state = await store.read(store.governance_state)
            if state.active is None:
                return _STARTER, None
            return state.active.text, state.active
        version = await store.read(store.ruleset_version, version_id)
        if version is None:
            raise Refused(404, f"no rule-set version {version_id}")
        return version.text, version

    async def check(self, text: str, window: ReplayWindow, *, replay: bool = True) -> RuleCheck:
        """Problems, cases and (with `replay`) what would change on the recent history."""
        if len(text) > MAX_TEXT:
            raise Refused(413, f"the rule set is longer than {MAX_TEXT} characters")
        store = self.gateway.store
        state = await store.read(store.governance_state)
        versions = await store.read(store.ruleset_versions)
        if not replay:
            # Validation and cases only: milliseconds, no slot needed.
            return await asyncio.to_thread(
                check_rules, text, state.active, versions, None, window, now()
            )
        try:
            async with asyncio.timeout(REPLAY_WAIT_SECONDS):
                await self._replay_slot.acquire()
        except TimeoutError:
            raise Refused(503, "another replay is still running: try again shortly") from None
        work = asyncio.ensure_future(
            asyncio.to_thread(
                check_rules, text, state.active, versions, self.history_url(), window, now()
            )
        )
        # The slot is freed when the thread is done, not when the request is: a thread cannot
        # be stopped, and a person who gives up waiting must not let a second replay start.
        work.add_done_callback(lambda _: self._replay_slot.release())
        return await asyncio.shield(work)

    async def activate(
        self,
        who: Principal,
        text: str,
        change: str,
        probation_days: int,
        password: str,
        window: ReplayWindow,
    ) -> tuple[RuleCheck, ActivationOutcome | None]:
        """Check, sign, replay and activate. The outcome is None when nothing was recorded
        (the text is not a rule set, or reuses a stored version's label): the problems say
        why. A rule set whose cases fail or are missing is recorded as refused, like the CLI."""
        change = change.strip()
        if not change:
            raise Refused(422, "describe the change (it goes in the change record, GBUI XI-2)")
        if len(change) > 2000:
            raise Refused(422, "the description of the change is too long")
        if not 0 <= probation_days <= 365:
            raise Refused(422, "the probation delay is 0 to 365 days")
        first = await self.check(text, window, replay=False)
        if first.ruleset is None or first.problems:
            return first, None
        await self._signature(who, password)
        checked = await self.check(text, window)
        store = self.gateway.store
        try:
            outcome = await store.run(
                _activate_against,
                store,
                checked.against.version_id if checked.against else None,
                text,
                who.user,
                change,
                probation_days,
                checked.comparison,
            )
        except _ActiveChanged:
            raise Refused(
                409, "the active rule set changed while this one was checked: check it again"
            ) from None
        return checked, outcome

    async def _signature(self, who: Principal, password: str) -> None:
        """The electronic signature: the password again, as for results (`/results/sign`)."""
        store = self.gateway.store
        refused = await store.run(
            store.check_signature,
            who.user,
            password,
            now(),
            console_settings(self.gateway).max_failed_logins,
        )
        if refused == "locked":
            raise Refused(403, "signature refused: the account is now locked (an admin unlocks it)")
        if refused:
            raise Refused(403, "signature refused: wrong password")


# --- the JSON API ----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckIn(_Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    days: int = Field(default=DEFAULT_DAYS, ge=1, le=MAX_DAYS)
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    replay: bool = True


class ActivateIn(_Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    change: str = Field(min_length=1, max_length=2000)
    password: str = Field(min_length=1, max_length=256)
    probation_days: int = Field(default=0, ge=0, le=365)  # as `labgate rules activate`
    days: int = Field(default=DEFAULT_DAYS, ge=1, le=MAX_DAYS)
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


def _http(exc: Refused) -> HTTPException:
    return HTTPException(status_code=exc.status, detail=exc.message)


def _version_json(version: RuleSetVersion) -> dict[str, Any]:
    return {
        "version_id": version.version_id,
        "name": version.name,
        "version": version.version,
        "biologist": version.biologist,
        "source": version.source,
        "created_at": version.created_at.isoformat(),
        "created_by": version.created_by,
        "active": version.active,
        "sha256": version.sha256,
        "text": version.text,
    }


def _refusal(check: RuleCheck, outcome: ActivationOutcome | None) -> str:
    if outcome is None:
        count = len(check.problems)
        return f"not a rule set that can be activated: {count} problem(s), nothing recorded"
    return (
        f"refused: {outcome.anomaly}; change record {outcome.change_id} kept "
        f"({outcome.cases_passed} case(s) passed, {outcome.cases_failed} failed)"
    )


def rule_editor_router(gateway: "Gateway") -> APIRouter:
    """The editor's pages (`/rules/edit`) and API (`/api/rulesets/...`)."""
    router = APIRouter()
    editor = RuleEditor(gateway)
    Anyone = Annotated[Principal, Depends(require(gateway, *ALL))]
    Activator = Annotated[Principal, Depends(require(gateway, *ACTIVATORS))]

    def render(
        request: Request, who: Principal, check: RuleCheck, window: ReplayWindow, **context: Any
    ) -> HTMLResponse:
        bad_lines = {p["line"] for p in check.problems if p["line"] is not None}
        context.update(
            who=who,
            gateway_name=gateway.settings.gateway,
            version=gateway.version,
            ok=request.query_params.get("ok", ""),
            error=context.get("error", ""),
            path=request.url.path,
            check=check,
            window=window,
            line_count=len(check.text.split("\n")),  # as the text area counts them
            bad_lines=bad_lines,
            may_activate=who.role in ACTIVATORS,
            limits={"max_days": MAX_DAYS, "max_limit": MAX_LIMIT},
        )
        context.setdefault("change", "")
        context.setdefault("probation_days", 0)
        context.setdefault("base", None)
        context.setdefault("outcome", None)
        response = templates.TemplateResponse(request, "rule_edit.html", context)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def form(request: Request) -> dict[str, str]:
        data = await request.form()
        fields = {key: value for key, value in data.items() if isinstance(value, str)}
        # Browsers send a text area's lines with CRLF (HTML forms); the rule set is kept as
        # the YAML file it would be, so the same edit keeps the same digest.
        fields["text"] = fields.get("text", "").replace("\r\n", "\n")
        return fields

    # --- pages -----------------------------------------------------------------------------

    @router.get("/rules/edit", response_class=HTMLResponse)
    async def edit_page(request: Request, who: Anyone, version: int | None = None) -> Response:
        try:
            text, base = await editor.version_text(version)
        except Refused as exc:
            raise _http(exc) from None
        window = ReplayWindow()
        check = RuleCheck(text=text)
        return render(request, who, check, window, base=base)

    @router.post("/rules/edit", response_class=HTMLResponse)
    async def check_page(request: Request, who: Anyone) -> Response:
        data = await form(request)
        window = ReplayWindow.from_form(data.get("days"), data.get("limit"))
        try:
            check = await editor.check(data["text"], window)
        except Refused as exc:
            return render(request, who, RuleCheck(text=data["text"]), window, error=exc.message)
        return render(
            request,
            who,
            check,
            window,
            checked=True,
            change=data.get("change", ""),
            probation_days=bounded_int(data.get("probation_days"), 0, 0, 365),
        )

    @router.post("/rules/edit/activate", response_class=HTMLResponse)
    async def activate_page(request: Request, who: Activator) -> Response:
        data = await form(request)
        window = ReplayWindow.from_form(data.get("days"), data.get("limit"))
        change = data.get("change", "")
        probation_days = bounded_int(data.get("probation_days"), 0, 0, 365)
        keep = {"change": change, "probation_days": probation_days}
        try:
            check, outcome = await editor.activate(
                who, data["text"], change, probation_days, data.get("password", ""), window
            )
        except Refused as exc:
            if exc.status == 403 and "locked" in exc.message:
                return RedirectResponse("/login?why=locked", status_code=303)
            return render(
                request, who, RuleCheck(text=data["text"]), window, error=exc.message, **keep
            )
        if outcome is not None and outcome.accepted:
            message = (
                f"{outcome.ruleset} activated as version {outcome.version_id} "
                f"(change record {outcome.change_id}), signed by {who.user}"
            )
            return RedirectResponse(f"/rules?ok={quote(message)}", status_code=303)
        return render(
            request,
            who,
            check,
            window,
            checked=True,
            outcome=outcome,
            error=_refusal(check, outcome),
            **keep,
        )

    # --- API -------------------------------------------------------------------------------

    @router.get("/api/rulesets/{version_id}")
    async def ruleset_version(version_id: int, _: Anyone) -> dict[str, Any]:
        """One stored version, with its YAML text."""
        version = await gateway.store.read(gateway.store.ruleset_version, version_id)
        if version is None:
            raise HTTPException(status_code=404, detail=f"no rule-set version {version_id}")
        return _version_json(version)

    @router.post("/api/rulesets/check")
    async def check_api(body: CheckIn, _: Anyone) -> dict[str, Any]:
        """Problems (line, field), the embedded cases (expected, obtained) and what would
        change on the recent stored history against the active version. Changes nothing."""
        try:
            check = await editor.check(
                body.text, ReplayWindow(body.days, body.limit), replay=body.replay
            )
        except Refused as exc:
            raise _http(exc) from None
        return check.as_json()

    @router.post("/api/rulesets", status_code=201)
    async def activate_api(body: ActivateIn, who: Activator) -> dict[str, Any]:
        """Activate a rule set (a biologist's signature: the password again). 422 when it is
        not a rule set (nothing recorded) or its cases fail or are missing (the refusal is
        recorded, its change record given)."""
        try:
            check, outcome = await editor.activate(
                who,
                body.text,
                body.change,
                body.probation_days,
                body.password,
                ReplayWindow(body.days, body.limit),
            )
        except Refused as exc:
            raise _http(exc) from None
        if outcome is None or not outcome.accepted:
            raise HTTPException(
                status_code=422,
                detail={
                    "message": _refusal(check, outcome),
                    "change_record": outcome.change_id if outcome else None,
                    "problems": check.problems,
                    "cases": check.cases,
                },
            )
        return {
            "accepted": True,
            "ruleset": outcome.ruleset,
            "version_id": outcome.version_id,
            "change_record": outcome.change_id,
            "cases_passed": outcome.cases_passed,
            "cases_failed": outcome.cases_failed,
            "replay": check.comparison,
            "signed_by": who.user,
        }

    return router
