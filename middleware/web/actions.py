"""What a signed-in person can change, shared by the JSON API and the console's forms. Each
action checks its own inputs (a reason is mandatory wherever the audit trail records one), runs
one store write with the person as author, and raises `Refused` with an HTTP status otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from middleware.store.accounts import AccountError, SignOutcome
from middleware.store.outbox_admin import OutboxActionRefused
from middleware.web.security import Principal, console_settings, now

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = [
    "Refused",
    "acknowledge_alarm",
    "change_user",
    "create_user",
    "outbox_action",
    "rollback",
    "set_device",
    "set_switch",
    "sign_results",
]


class Refused(Exception):
    """The action was not done: `status` for HTTP, `message` for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _text(value: str | None, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise Refused(422, f"{what} is required")
    if len(text) > 2000:
        raise Refused(422, f"{what} is too long")
    return text


async def sign_results(
    gateway: Gateway,
    who: Principal,
    result_ids: Sequence[int],
    decision: str,
    password: str,
    comment: str = "",
) -> SignOutcome:
    """A biologist validates or rejects held results, signing with the password again."""
    if decision not in {"validated", "rejected"}:
        raise Refused(422, "decision must be validated or rejected")
    ids = sorted({int(i) for i in result_ids})
    if not ids:
        raise Refused(422, "no result chosen")
    if decision == "rejected":
        comment = _text(comment, "a comment (why the result is rejected)")
    store = gateway.store
    settings = console_settings(gateway)
    refused = await store.run(
        store.check_signature, who.user, password, now(), settings.max_failed_logins
    )
    if refused:
        message = "signature refused: wrong password"
        if refused == "locked":
            message = "signature refused: the account is now locked (an admin unlocks it)"
        raise Refused(403, message)
    outcome = await store.run(
        store.sign_results,
        ids,
        decision,
        who.user,
        comment.strip(),
        gateway.settings.lis.name,
        now(),
    )
    return outcome


def _known_devices(gateway: Gateway) -> set[str]:
    return {instrument.name for instrument in gateway.settings.instruments}


async def set_device(
    gateway: Gateway, who: Principal, name: str, blocked: bool, reason: str | None
) -> None:
    reason = _text(reason, "a reason")
    store = gateway.store
    state = await store.read(store.governance_state)
    if name not in _known_devices(gateway) and name not in state.blocked_devices:
        raise Refused(404, f"no device named {name!r}")
    await store.run(store.set_device_blocked, name, blocked, who.user, reason, now())


async def acknowledge_alarm(
    gateway: Gateway, who: Principal, alarm_id: int, comment: str | None
) -> None:
    comment = _text(comment, "a comment")
    store = gateway.store
    try:
        await store.run(store.acknowledge_alarm, alarm_id, who.user, comment, now())
    except KeyError:
        raise Refused(404, f"no alarm {alarm_id}") from None


async def set_switch(
    gateway: Gateway, who: Principal, scope: str, name: str, enabled: bool, reason: str | None
) -> None:
    reason = _text(reason, "a reason")
    if scope not in {"global", "biologist"}:
        raise Refused(422, "scope must be global or biologist")
    if scope == "biologist":
        name = _text(name, "the biologist's name")
    else:
        name = ""
    store = gateway.store
    await store.run(store.set_switch, scope, name, enabled, who.user, reason, now())


async def rollback(gateway: Gateway, who: Principal, version_id: int, reason: str | None) -> int:
    reason = _text(reason, "a reason")
    store = gateway.store
    try:
        return await store.run(store.rollback, version_id, who.user, reason, now())
    except KeyError:
        raise Refused(404, f"no rule-set version {version_id}") from None


async def outbox_action(
    gateway: Gateway, who: Principal, outbox_id: int, action: str, reason: str | None
) -> dict[str, Any]:
    reason = _text(reason, "a reason")
    store = gateway.store
    try:
        if action == "resend":
            going = await store.run(store.resend, outbox_id, who.user, reason, now())
            return {"outbox_id": going, "state": "pending"}
        await store.run(store.release, outbox_id, who.user, reason, now())
        return {"outbox_id": outbox_id, "state": "pending"}
    except OutboxActionRefused as exc:
        raise Refused(409, str(exc)) from None


async def create_user(
    gateway: Gateway, who: Principal, name: str, role: str, password: str
) -> None:
    store = gateway.store
    try:
        await store.run(store.create_user, name, role, password, who.user, now())
    except AccountError as exc:
        raise Refused(422, str(exc)) from None


async def change_user(
    gateway: Gateway, who: Principal, name: str, action: str, reason: str | None
) -> None:
    """`unlock` (a locked or disabled account gets its access back) or `disable`."""
    store = gateway.store
    try:
        if action == "unlock":
            await store.run(store.unlock_user, name, who.user, now())
        elif action == "disable":
            if name == who.user:
                raise Refused(422, "an admin does not disable their own account")
            await store.run(store.disable_user, name, who.user, _text(reason, "a reason"), now())
        else:
            raise Refused(404, f"unknown action {action!r}")
    except AccountError as exc:
        raise Refused(404, str(exc)) from None
