"""Changing one's own password: `/account` and `POST /api/session/password`, for every role,
over a real store. The current password is proven (a wrong one counts toward the lock), the
policy is `labgate user add`'s, the change is audited and the account's other sessions end."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx
import pytest

from middleware.store import Store
from middleware.store.accounts import SessionRow, UserRow, token_digest
from web.conftest import StubGateway
from web.console_support import PASSWORD
from web.test_console_api import sign_in
from web.test_console_pages import form_login, page_csrf

NEW = "a brand new passphrase"
ROLES = ("technician", "biologist", "admin")


def change(current: str = PASSWORD, new: str = NEW) -> dict[str, str]:
    return {"current_password": current, "new_password": new}


def failures(store: Store, name: str) -> int:
    return next(u["failed_logins"] for u in store.users() if u["name"] == name)


def open_elsewhere(store: Store, name: str) -> str:
    """Another open session of `name` (a second browser, as the store would hold it)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with store._sessions.begin() as session:
        user = session.query(UserRow).filter_by(name=name).one()
        session.add(
            SessionRow(
                token_sha256=token_digest(token),
                user_id=user.id,
                csrf="x",
                address="10.0.0.9",
                created_at=now,
                last_seen_at=now,
                is_open=True,
            )
        )
    return token


async def test_changing_the_password_needs_a_session(http: httpx.AsyncClient) -> None:
    assert (await http.post("/api/session/password", json=change())).status_code == 401
    answer = await http.get("/account")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


@pytest.mark.parametrize("role", ROLES)
async def test_every_role_changes_its_own_password_and_its_other_sessions_end(
    http: httpx.AsyncClient, gateway: StubGateway, role: str
) -> None:
    store = gateway.store
    await sign_in(http, store, role)
    name = f"{role}-1"
    elsewhere = open_elsewhere(store, name)
    assert store.session_for(elsewhere) is not None
    answer = await http.post("/api/session/password", json=change())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"user": name, "password_changed": True}
    assert store.session_for(elsewhere) is None  # the other browser is signed out
    assert (await http.get("/api/session")).status_code == 200  # this one stays
    assert store.login(name, PASSWORD, datetime.now(UTC)).refused == "bad_credentials"
    assert store.login(name, NEW, datetime.now(UTC)).token
    [audit] = store.audit_search(action="password_changed")
    assert (audit["actor"], audit["subject"]) == (name, f"user:{name}")
    assert audit["detail"] == {"by": "self", "sessions_ended": 1}
    with store.engine.connect() as connection:
        [stored] = connection.exec_driver_sql(
            f"select password_hash from users where name = '{name}'"
        ).scalars()
    assert stored.startswith("$argon2id$") and NEW not in stored


async def test_a_change_without_the_csrf_token_is_refused(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "technician")
    del http.headers["X-CSRF-Token"]
    assert (await http.post("/api/session/password", json=change())).status_code == 403
    http.headers["X-CSRF-Token"] = "forged"
    assert (await http.post("/api/session/password", json=change())).status_code == 403
    assert gateway.store.login("technician-1", PASSWORD, datetime.now(UTC)).token


async def test_the_policy_of_labgate_user_add_applies_and_costs_no_attempt(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "biologist")
    short = await http.post("/api/session/password", json=change(new="short"))
    assert short.status_code == 422 and "8 characters" in short.json()["detail"]
    same = await http.post("/api/session/password", json=change(new=PASSWORD))
    assert same.status_code == 422 and "differ" in same.json()["detail"]
    extra = await http.post("/api/session/password", json={**change(), "role": "admin"})
    assert extra.status_code == 422
    assert failures(gateway.store, "biologist-1") == 0
    assert gateway.store.audit_search(action="password_change") == []


async def test_a_wrong_current_password_counts_toward_the_lock(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    store = gateway.store
    await sign_in(http, store, "biologist")
    wrong = change(current="not my password")
    first = await http.post("/api/session/password", json=wrong)
    assert first.status_code == 403 and first.json()["detail"] == "wrong current password"
    assert failures(store, "biologist-1") == 1
    await http.post("/api/session/password", json=wrong)
    third = await http.post("/api/session/password", json=wrong)
    assert third.status_code == 403 and "locked" in third.json()["detail"]
    # The lock ends every session, the one that tried too.
    assert (await http.get("/api/session")).status_code == 401
    assert store.login("biologist-1", PASSWORD, datetime.now(UTC)).refused == "locked"
    actions = [(r["actor"], r["action"]) for r in store.audit_search(limit=20)]
    assert actions.count(("biologist-1", "password_change_failed")) == 3
    assert ("labgate", "user_locked") in actions
    assert ("biologist-1", "password_changed") not in actions


@pytest.mark.parametrize("role", ROLES)
async def test_the_account_page_changes_the_password_from_its_form(
    http: httpx.AsyncClient, gateway: StubGateway, role: str
) -> None:
    store = gateway.store
    await sign_in(http, store, role)
    page = await http.get("/account")
    assert page.status_code == 200 and 'href="/account" class="here"' in page.text
    csrf = page_csrf(page.text)
    form = {"csrf": csrf, "current_password": PASSWORD, "new_password": NEW}
    typo = await http.post("/account/password", data={**form, "new_password_again": NEW + "x"})
    assert "error=the%20two%20new%20passwords%20differ" in typo.headers["location"]
    assert failures(store, f"{role}-1") == 0  # a typo is not an attempt
    done = await http.post("/account/password", data={**form, "new_password_again": NEW})
    assert done.status_code == 303 and done.headers["location"].startswith("/account?ok=")
    assert "password changed" in (await http.get(done.headers["location"])).text
    assert store.login(f"{role}-1", NEW, datetime.now(UTC)).token


async def test_the_form_needs_its_csrf_token_and_a_lock_signs_out(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    store = gateway.store
    await sign_in(http, store, "technician")
    del http.headers["X-CSRF-Token"]
    form = {"current_password": "wrong one", "new_password": NEW, "new_password_again": NEW}
    assert (await http.post("/account/password", data=form)).status_code == 403
    assert failures(store, "technician-1") == 0
    csrf = page_csrf((await http.get("/account")).text)
    for _ in range(2):
        answer = await http.post("/account/password", data={**form, "csrf": csrf})
        assert "error=wrong%20current%20password" in answer.headers["location"]
    locked = await http.post("/account/password", data={**form, "csrf": csrf})
    assert locked.headers["location"] == "/login?why=locked"
    assert 'labgate_session=""' in locked.headers["set-cookie"]
    assert (await http.get("/account")).status_code == 303


async def test_signing_in_with_the_form_after_a_change(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "admin")
    assert (await http.post("/api/session/password", json=change())).status_code == 200
    http.cookies.clear()
    assert (await form_login(http, "admin-1")).startswith("/login?why=bad_credentials")
    assert await form_login(http, "admin-1", NEW) == "/"


def test_the_store_changes_a_password_on_both_backends(store: Store) -> None:
    now = datetime.now(UTC)
    store.create_user("anne", "biologist", PASSWORD, "root", now)
    kept = store.login("anne", PASSWORD, now)
    view = store.session_for(kept.token)
    assert view is not None
    other = open_elsewhere(store, "anne")
    assert store.change_own_password("anne", "wrong!!!", NEW, now, view.session_id) == (
        "bad_credentials"
    )
    assert store.change_own_password("anne", PASSWORD, NEW, now, view.session_id) == ""
    assert store.session_for(kept.token) is not None and store.session_for(other) is None
    with store.engine.connect() as connection:
        reasons = set(connection.exec_driver_sql("select ended_reason from sessions").scalars())
    assert reasons == {None, "password_changed"}
    assert store.login("anne", NEW, now).token
    assert failures(store, "anne") == 0  # the success reset the count
