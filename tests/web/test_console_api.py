"""The console's API over a real store: every endpoint answers only a session with a role that
may (401 without, 403 with the wrong role), changes need the CSRF token, and every action is in
the audit trail with the signed-in person as author."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from drivers.models import Patient, PreviousResult, Result, SpecimenReport
from middleware.store import IncomingMessage, Store
from web.conftest import StubGateway
from web.console_support import PASSWORD, add_user

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ROLES = ("technician", "biologist", "admin")


def held_message(number: int, *, reasons: tuple[str, ...] = ("delta_exceeded",)) -> IncomingMessage:
    result = Result(
        specimen_id=f"S{number}",
        test_code="GLU",
        value="9.4",
        numeric=Decimal("9.4"),
        units="mmol/L",
        flags=("H",),
        instrument="chem-1",
        sequence=1,
        measured_at=NOW,
        previous=PreviousResult("5.1", "mmol/L", NOW.replace(day=20)),
    )
    report = SpecimenReport(f"S{number}", Patient(f"P{number}", "DUPONT", "Marie"), (result,))
    return IncomingMessage(
        message_id=f"m{number}",
        connection="chem-1",
        protocol="astm",
        received_at=NOW,
        raw=b"\x021H|\\^&\r\x03AA\r\n",
        reports=(report,),
        decisions=(("held", reasons),),
        lis="lis",
    )


async def sign_in(http: httpx.AsyncClient, store: Store, role: str) -> str:
    """A session for a new account of `role`; returns its CSRF token (also set as header)."""
    name = f"{role}-1"
    if not any(u["name"] == name for u in store.users()):
        add_user(store, name, role)
    answer = await http.post("/api/session", json={"name": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    assert answer.json()["role"] == role
    csrf: str = answer.json()["csrf"]
    http.headers["X-CSRF-Token"] = csrf
    return csrf


# (method, path, JSON body, roles that may) for every endpoint behind a session.
ENDPOINTS: list[tuple[str, str, dict[str, object] | None, tuple[str, ...]]] = [
    ("GET", "/api/session", None, ROLES),
    ("GET", "/api/dashboard", None, ROLES),
    ("GET", "/api/validation", None, ROLES),
    ("GET", "/api/alarms", None, ROLES),
    ("GET", "/api/results?decision=held", None, ROLES),
    ("GET", "/api/trace?specimen=S1", None, ROLES),
    ("GET", "/api/outbox", None, ROLES),
    ("GET", "/api/rulesets", None, ROLES),
    ("GET", "/api/orders", None, ROLES),
    ("POST", "/api/orders", {"specimen_id": "O-1", "tests": ["GLU"]}, ROLES),
    ("GET", "/api/audit", None, ("biologist", "admin")),
    ("GET", "/api/audit.csv", None, ("biologist", "admin")),
    ("GET", "/api/users", None, ("admin",)),
    (
        "POST",
        "/api/users",
        {"name": "new-tech", "role": "technician", "password": "a long password"},
        ("admin",),
    ),
    ("POST", "/api/devices/chem-1/block", {"reason": "drift"}, ("biologist", "admin")),
    ("POST", "/api/devices/chem-1/unblock", {"reason": "fixed"}, ("biologist", "admin")),
    (
        "POST",
        "/api/switches",
        {"scope": "global", "enabled": False, "reason": "audit"},
        ("biologist",),
    ),
    (
        "POST",
        "/api/results/sign",
        {"result_ids": [1], "decision": "validated", "password": PASSWORD},
        ("biologist",),
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS)
async def test_every_endpoint_needs_a_session(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, object] | None,
    allowed: tuple[str, ...],
) -> None:
    answer = await http.request(method, path, json=body)
    assert answer.status_code == 401


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS)
async def test_every_endpoint_checks_the_role(
    http: httpx.AsyncClient,
    gateway: StubGateway,
    role: str,
    method: str,
    path: str,
    body: dict[str, object] | None,
    allowed: tuple[str, ...],
) -> None:
    gateway.store.save_message(held_message(1))
    await sign_in(http, gateway.store, role)
    answer = await http.request(method, path, json=body)
    if role in allowed:
        assert answer.status_code in (200, 201, 204), answer.text
    else:
        assert answer.status_code == 403, answer.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [(m, p, b) for m, p, b, allowed in ENDPOINTS if m == "POST" and "admin" in allowed],
)
async def test_a_change_without_the_csrf_token_is_refused(
    http: httpx.AsyncClient,
    gateway: StubGateway,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    await sign_in(http, gateway.store, "admin")
    del http.headers["X-CSRF-Token"]
    assert (await http.request(method, path, json=body)).status_code == 403
    http.headers["X-CSRF-Token"] = "forged"
    assert (await http.request(method, path, json=body)).status_code == 403


async def test_health_and_metrics_stay_open(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/health")).json()["status"] == "running"
    assert "labgate" in (await http.get("/metrics")).text


async def test_the_session_cookie_is_httponly_and_samesite_strict(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    add_user(gateway.store, "bio", "biologist")
    answer = await http.post("/api/session", json={"name": "bio", "password": PASSWORD})
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert "content-security-policy" in answer.headers


async def test_the_cookie_is_secure_when_the_console_says_so(sqlite_store: Store) -> None:
    from middleware.web.app import create_app

    gateway = StubGateway(sqlite_store, "  secure_cookies: true\n")
    add_user(sqlite_store, "bio", "biologist")
    transport = httpx.ASGITransport(app=create_app(gateway))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as http:
        answer = await http.post("/api/session", json={"name": "bio", "password": PASSWORD})
    assert "secure" in answer.headers["set-cookie"].lower()


async def test_three_failed_logins_lock_the_account_until_an_admin_unlocks_it(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    store = gateway.store
    add_user(store, "tech", "technician")
    for _ in range(3):
        answer = await http.post("/api/session", json={"name": "tech", "password": "wrong!!!"})
        assert answer.status_code == 401
    good = await http.post("/api/session", json={"name": "tech", "password": PASSWORD})
    assert good.status_code == 401 and "locked" in good.json()["detail"]
    await sign_in(http, store, "admin")
    assert (await http.post("/api/users/tech/unlock", json={})).status_code == 200
    again = await http.post("/api/session", json={"name": "tech", "password": PASSWORD})
    assert again.status_code == 200
    actions = [(row["actor"], row["action"]) for row in store.audit_search(limit=50)]
    assert ("labgate", "user_locked") in actions
    assert ("admin-1", "user_unlocked") in actions
    assert actions.count(("tech", "login_failed")) == 3
    assert ("tech", "login_refused") in actions  # the right password, but locked
    assert ("tech", "login") in actions


async def test_one_session_per_user_the_newer_login_wins(
    gateway: StubGateway,
) -> None:
    from middleware.web.app import create_app

    add_user(gateway.store, "bio", "biologist")
    app = create_app(gateway)  # type: ignore[arg-type]
    first = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
    second = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
    async with first, second:
        login = {"name": "bio", "password": PASSWORD}
        assert (await first.post("/api/session", json=login)).status_code == 200
        assert (await first.get("/api/session")).status_code == 200
        assert (await second.post("/api/session", json=login)).status_code == 200
        assert (await first.get("/api/session")).status_code == 401
        assert (await second.get("/api/session")).status_code == 200


async def test_an_idle_session_expires(http: httpx.AsyncClient, gateway: StubGateway) -> None:
    await sign_in(http, gateway.store, "technician")
    assert (await http.get("/api/dashboard")).status_code == 200
    with gateway.store.engine.begin() as connection:
        connection.exec_driver_sql(
            "update sessions set last_seen_at = '2020-01-01 00:00:00.000000'"
        )
    assert (await http.get("/api/dashboard")).status_code == 401
    assert any(r["action"] == "session_expired" for r in gateway.store.audit_search())


async def test_logout_ends_the_session(http: httpx.AsyncClient, gateway: StubGateway) -> None:
    await sign_in(http, gateway.store, "technician")
    assert (await http.delete("/api/session")).status_code == 204
    assert (await http.get("/api/dashboard")).status_code == 401


async def test_a_disabled_account_cannot_sign_in_and_is_kept(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    add_user(gateway.store, "gone", "technician")
    await sign_in(http, gateway.store, "admin")
    refused = await http.post("/api/users/gone/disable", json={})
    assert refused.status_code == 422  # a reason is required
    assert (await http.post("/api/users/gone/disable", json={"reason": "left"})).status_code == 200
    users = {u["name"]: u["status"] for u in (await http.get("/api/users")).json()}
    assert users["gone"] == "disabled"
    again = await http.post("/api/session", json={"name": "gone", "password": PASSWORD})
    assert again.status_code == 401


async def test_a_biologist_validates_held_results_in_a_batch_with_a_signature(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    store = gateway.store
    for number in (1, 2, 3):
        store.save_message(held_message(number))
    # Message 1 has already reached the LIS (its bytes are fixed): validating it needs a
    # correction; messages 2 and 3 are still waiting and leave with the new decision.
    [first] = store.due("lis", NOW)
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            f"update outbox set state = 'delivered', payload = x'00' where id = {first.outbox_id}"
        )
    await sign_in(http, store, "biologist")
    queue = (await http.get("/api/results?decision=held")).json()
    assert {r["specimen_id"] for r in queue} == {"S1", "S2", "S3"}
    shown = queue[0]
    assert shown["previous_value"] == "5.1" and shown["delta"] == "+4.3"
    assert shown["reasons"] == ["delta_exceeded"] and shown["flags"] == ["H"]
    ids = [r["id"] for r in queue]
    wrong = await http.post(
        "/api/results/sign",
        json={"result_ids": ids, "decision": "validated", "password": "not mine"},
    )
    assert wrong.status_code == 403
    signed = await http.post(
        "/api/results/sign",
        json={"result_ids": ids, "decision": "validated", "password": PASSWORD},
    )
    assert signed.json() == {"decision": "validated", "results": 3, "corrections": 1}
    assert (await http.get("/api/results?decision=held")).json() == []
    validated = (await http.get("/api/results?decision=validated")).json()
    assert {r["biologist"] for r in validated} == {"biologist-1"}
    corrections = [row for row in store.outbox_list() if row["kind"] == "correction"]
    assert [c["message_id"] for c in corrections] == ["m1"]
    audit = store.audit_search(action="result_validated")
    assert len(audit) == 3 and {a["actor"] for a in audit} == {"biologist-1"}
    # Signing again changes nothing: they are no longer held.
    again = await http.post(
        "/api/results/sign",
        json={"result_ids": ids, "decision": "rejected", "password": PASSWORD, "comment": "x"},
    )
    assert again.json()["results"] == 0


async def test_rejecting_needs_a_comment(http: httpx.AsyncClient, gateway: StubGateway) -> None:
    gateway.store.save_message(held_message(1))
    await sign_in(http, gateway.store, "biologist")
    body = {"result_ids": [1], "decision": "rejected", "password": PASSWORD}
    assert (await http.post("/api/results/sign", json=body)).status_code == 422
    body["comment"] = "haemolysed specimen"
    assert (await http.post("/api/results/sign", json=body)).json()["results"] == 1


async def test_wrong_signatures_lock_the_account(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    gateway.store.save_message(held_message(1))
    await sign_in(http, gateway.store, "biologist")
    body = {"result_ids": [1], "decision": "validated", "password": "bad guess"}
    for _ in range(3):
        assert (await http.post("/api/results/sign", json=body)).status_code == 403
    assert (await http.get("/api/session")).status_code == 401  # locked: session ended


async def test_device_block_needs_a_reason_and_is_audited_with_the_user(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "admin")
    assert (await http.post("/api/devices/chem-1/block", json={})).status_code == 422
    assert (await http.post("/api/devices/nope/block", json={"reason": "x"})).status_code == 404
    answer = await http.post("/api/devices/chem-1/block", json={"reason": "QC drift"})
    assert answer.status_code == 200
    assert (await http.get("/api/validation")).json()["blocked_devices"] == ["chem-1"]
    dashboard = (await http.get("/api/dashboard")).json()
    assert dashboard["blocked_devices"] == ["chem-1"]
    assert [c["blocked"] for c in dashboard["connections"] if c["name"] == "chem-1"] == [True]
    [row] = gateway.store.audit_search(action="device_blocked")
    assert row["actor"] == "admin-1" and row["detail"] == {"reason": "QC drift"}


async def test_alarm_acknowledgement_switches_rollback_and_outbox_actions(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    from middleware.store.governance import ActivationRecord

    store = gateway.store
    alarm = store.raise_alarm("link_lost", "lis", "no answer", NOW)
    record = ActivationRecord("Dr A", "first", {}, {}, True)
    first, _ = store.record_activation(
        name="chem", version="1", biologist="Dr A", source="x", text="a", record=record, at=NOW
    )
    store.record_activation(
        name="chem", version="2", biologist="Dr A", source="x", text="b", record=record, at=NOW
    )
    store.save_message(held_message(1))
    [item] = store.due("lis", NOW)
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            f"update outbox set state = 'rejected' where id = {item.outbox_id}"
        )
    await sign_in(http, store, "biologist")
    alarm_id = alarm.alarm_id
    assert (await http.post(f"/api/alarms/{alarm_id}/ack", json={})).status_code == 422
    acked = await http.post(f"/api/alarms/{alarm_id}/ack", json={"comment": "LIS restarted"})
    assert acked.status_code == 200
    assert (await http.post("/api/alarms/999/ack", json={"comment": "x"})).status_code == 404
    switch = {"scope": "biologist", "name": "Dr A", "enabled": False, "reason": "holiday"}
    assert (await http.post("/api/switches", json=switch)).status_code == 200
    assert (await http.get("/api/validation")).json()["disabled_biologists"] == ["Dr A"]
    rollback = await http.post(f"/api/rulesets/{first}/rollback", json={"reason": "v2 wrong"})
    assert rollback.status_code == 200
    versions = (await http.get("/api/rulesets")).json()
    assert [v["version"] for v in versions if v["active"]] == ["1"]
    resend = await http.post(f"/api/outbox/{item.outbox_id}/resend", json={"reason": "fixed"})
    assert resend.json() == {"outbox_id": item.outbox_id, "state": "pending"}
    refused = await http.post(f"/api/outbox/{item.outbox_id}/release", json={"reason": "x"})
    assert refused.status_code == 409
    actions = {(r["actor"], r["action"]) for r in store.audit_search()}
    assert {
        ("biologist-1", "alarm_acknowledged"),
        ("biologist-1", "autovalidation_off"),
        ("biologist-1", "ruleset_rolled_back"),
        ("biologist-1", "outbox_resend"),
    } <= actions


async def test_the_audit_trail_filters_and_exports_csv(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "admin")
    await http.post("/api/devices/chem-1/block", json={"reason": 'a, "quoted" reason'})
    rows = (await http.get("/api/audit?action=device_")).json()
    assert [r["action"] for r in rows] == ["device_blocked"]
    assert (await http.get("/api/audit?actor=nobody")).json() == []
    exported = await http.get("/api/audit.csv?actor=admin-1")
    assert exported.headers["content-type"].startswith("text/csv")
    lines = exported.text.splitlines()
    assert lines[0] == "id,at,actor,action,subject,detail"
    rows_out = list(csv.reader(io.StringIO(exported.text)))
    [blocked] = [r for r in rows_out if r[3] == "device_blocked"]
    assert json.loads(blocked[5]) == {"reason": 'a, "quoted" reason'}
    assert len(lines) == len(rows_out)


async def test_orders_still_work_for_a_signed_in_person(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "technician")
    created = await http.post("/api/orders", json={"specimen_id": "O-9", "tests": ["GLU"]})
    assert created.status_code == 201
    listed = (await http.get("/api/orders?specimen_id=O-9")).json()
    assert [o["specimen_id"] for o in listed] == ["O-9"]
