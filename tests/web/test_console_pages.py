"""The console's pages over HTTP (no browser): the login form and its CSRF cookie, the
redirect to it when signed out, every page rendered for every role that may see it and refused
to the others, forms refused without the session's CSRF token, and `labgate user`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import pytest

from middleware.cli import main as labgate
from middleware.store import Store
from web.conftest import StubGateway
from web.console_support import PASSWORD, add_user
from web.test_console_api import held_message

PAGES = {
    "/": ("technician", "biologist", "admin"),
    "/fragments/dashboard": ("technician", "biologist", "admin"),
    "/results": ("technician", "biologist", "admin"),
    "/results?view=all": ("technician", "biologist", "admin"),
    "/rules": ("technician", "biologist", "admin"),
    "/trace?specimen=S1": ("technician", "biologist", "admin"),
    "/devices": ("technician", "biologist", "admin"),
    "/outbox": ("technician", "biologist", "admin"),
    "/audit": ("biologist", "admin"),
    "/users": ("admin",),
}


async def form_login(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> str:
    """Sign in through the login form; returns the page it led to."""
    page = await http.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = await http.post(
        "/login", data={"name": name, "password": password, "csrf": csrf.group(1), "next": "/"}
    )
    assert answer.status_code == 303
    return answer.headers["location"]


def page_csrf(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found is not None
    return found.group(1)


async def test_a_signed_out_visitor_is_sent_to_the_login_page(http: httpx.AsyncClient) -> None:
    answer = await http.get("/results?view=all")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login?why=expired&next=/results")


async def test_the_login_form_needs_its_csrf_cookie(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    add_user(gateway.store, "tech", "technician")
    answer = await http.post("/login", data={"name": "tech", "password": PASSWORD, "csrf": "x"})
    assert answer.headers["location"].startswith("/login")
    assert "labgate_session" not in answer.headers.get("set-cookie", "")
    assert await form_login(http, "tech") == "/"
    assert (await http.get("/")).status_code == 200


async def test_a_wrong_password_says_so_and_the_login_next_stays_local(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    add_user(gateway.store, "tech", "technician")
    assert (await form_login(http, "tech", "nope-nope")).startswith("/login?why=bad_credentials")
    assert "Wrong name or password" in (await http.get("/login?why=bad_credentials")).text
    page = await http.get("/login?next=//evil.example/")
    assert 'name="next" value="/"' in page.text


@pytest.mark.parametrize("role", ["technician", "biologist", "admin"])
async def test_every_page_checks_the_role(
    http: httpx.AsyncClient, gateway: StubGateway, role: str
) -> None:
    gateway.store.save_message(held_message(1))
    add_user(gateway.store, role, role)
    await form_login(http, role)
    for path, roles in PAGES.items():
        answer = await http.get(path)
        if role in roles:
            assert answer.status_code == 200, (path, answer.text)
            assert f'<span id="user">{role}</span>' in answer.text or path.startswith("/frag")
        else:
            assert answer.status_code == 403, path


async def test_the_review_queue_shows_every_indicator_and_signs_from_the_form(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    gateway.store.save_message(held_message(1, reasons=("critical_value", "delta_exceeded")))
    add_user(gateway.store, "bio", "biologist")
    await form_login(http, "bio")
    page = (await http.get("/results")).text
    for shown in ("S1", "P1", "9.4 mmol/L", "critical_value", "delta_exceeded", "5.1", "+4.3"):
        assert shown in page
    assert 'class="critical"' in page
    csrf = page_csrf(page)
    signed = await http.post(
        "/results/sign",
        data={"csrf": csrf, "result": "1", "decision": "validated", "password": PASSWORD},
    )
    assert signed.headers["location"].startswith("/results?ok=")
    assert "Nothing to review" in (await http.get("/results")).text
    without = await http.post(
        "/results/sign", data={"result": "1", "decision": "validated", "password": PASSWORD}
    )
    assert without.status_code == 403  # no CSRF token


async def test_a_technician_cannot_block_a_device_from_a_form(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    add_user(gateway.store, "tech", "technician")
    await form_login(http, "tech")
    csrf = page_csrf((await http.get("/devices")).text)
    answer = await http.post("/devices/chem-1/block", data={"csrf": csrf, "reason": "x"})
    assert answer.status_code == 403
    assert gateway.store.governance_state().blocked_devices == frozenset()


async def test_an_admin_creates_unlocks_and_disables_accounts_from_the_users_page(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    add_user(gateway.store, "root", "admin")
    await form_login(http, "root")
    csrf = page_csrf((await http.get("/users")).text)
    made = await http.post(
        "/users", data={"csrf": csrf, "name": "anne", "role": "biologist", "password": "short"}
    )
    assert "error=" in made.headers["location"]  # 8 characters at least
    made = await http.post(
        "/users",
        data={"csrf": csrf, "name": "anne", "role": "biologist", "password": "long enough"},
    )
    assert "ok=" in made.headers["location"]
    gone = await http.post("/users/anne/disable", data={"csrf": csrf, "reason": "left the lab"})
    assert "ok=" in gone.headers["location"]
    assert 'data-user="anne"' in (await http.get("/users")).text  # kept, disabled
    back = await http.post("/users/anne/unlock", data={"csrf": csrf})
    assert "ok=" in back.headers["location"]
    assert {u["name"]: u["status"] for u in gateway.store.users()}["anne"] == "active"


async def test_the_dashboard_acknowledges_an_alarm(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    from datetime import UTC, datetime

    raised = gateway.store.raise_alarm("link_lost", "lis", "no answer", datetime.now(UTC))
    add_user(gateway.store, "tech", "technician")
    await form_login(http, "tech")
    page = (await http.get("/")).text
    assert "link_lost" in page
    answer = await http.post(
        f"/alarms/{raised.alarm_id}/ack", data={"csrf": page_csrf(page), "comment": "seen"}
    )
    assert "ok=" in answer.headers["location"]
    assert gateway.store.alarms()[0]["acknowledged_by"] == "tech"


def test_the_first_admin_is_created_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from middleware.store import Store

    config = tmp_path / "lab.yaml"
    db = tmp_path / "labgate.db"
    config.write_text(f"store:\n  url: sqlite:///{db}\nlis:\n  port: 1\n", encoding="utf-8")
    where = ["--config", str(config)]
    monkeypatch.setattr("sys.stdin", io.StringIO("a strong password\n"))
    assert labgate(["user", "add", "root", "--role", "admin", "--password-stdin", *where]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a strong password\n"))
    assert labgate(["user", "add", "root", "--role", "admin", "--password-stdin", *where]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert labgate(["user", "add", "bob", "--role", "technician", *where]) == 2
    store = Store.open(f"sqlite:///{db}")
    try:
        for _ in range(3):
            assert store.login("root", "wrong password", store_now()).refused
        assert store.login("root", "a strong password", store_now()).refused == "locked"
    finally:
        store.close()
    assert labgate(["user", "unlock", "root", "--author", "it", *where]) == 0
    assert labgate(["user", "disable", "root", "--author", "it", "--reason", "test", *where]) == 0
    assert labgate(["user", "list", *where]) == 0
    assert "disabled" in capsys.readouterr().out
    store = Store.open(f"sqlite:///{db}")
    try:
        actions = [row["action"] for row in store.audit_search()]
    finally:
        store.close()
    assert {"user_created", "user_locked", "user_unlocked", "user_disabled"} <= set(actions)


def store_now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_the_devices_page_shows_each_meters_lock_and_operator_list(
    sqlite_store: Store,
) -> None:
    """GBUI XIII: a point-of-care meter's lock as it acknowledged it, and who may test on it
    (an operator whose certification ran out is marked)."""
    from datetime import UTC, date, datetime

    from middleware.config import load_settings_text
    from middleware.health import ConnectionHealth, DeviceState
    from middleware.web.app import create_app
    from web.conftest import SETTINGS

    extra = """
  - name: glucose-3
    protocol: poct1a
    location: ward 3
    transport: {type: tcp-server, port: 0}
    operators:
      - {id: 1042, name: Nurse A, valid_until: 2999-12-31}
      - {id: 77, name: Nurse B, valid_until: 2020-01-31}
"""
    gateway = StubGateway(sqlite_store)
    gateway.settings = load_settings_text(
        SETTINGS.replace("console:", extra.lstrip("\n") + "console:")
    )
    gateway.health.add(ConnectionHealth("glucose-3", "poct1a", "tcp-server", "127.0.0.1:0"))
    gateway.health.attach_device(
        "glucose-3",
        DeviceState(
            blocked=lambda: True,
            locked=True,
            condition="L",
            device_locked=True,
            status_at=datetime.now(UTC),
            operators=2,
            operators_version="a1b2c3d4e5f6",
            operators_state="accepted",
        ),
    )
    add_user(gateway.store, "tech", "technician")
    transport = httpx.ASGITransport(app=create_app(gateway))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as http:
        await form_login(http, "tech")
        page = (await http.get("/devices")).text
    section = page[page.index('data-poc="glucose-3"') :]
    assert 'data-lock="locked"' in section and "ward 3" in section
    assert "a1b2c3d4e5f6" in section and "accepted" in section
    assert "1042" in section and "Nurse A" in section and "2999-12-31" in section
    expired_row = section[section.index("Nurse B") - 200 : section.index("Nurse B") + 200]
    assert "expired" in expired_row
    assert date(2020, 1, 31).isoformat() in expired_row
