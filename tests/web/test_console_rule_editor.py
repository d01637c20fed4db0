"""The rule-set editor over a real store (SQLite file, and PostgreSQL for the read-only history):
every role reads and checks, only a biologist activates (signature, CSRF), problems come back
with line and field, the embedded cases with expected and obtained, the replay of the stored
results with what would change; every activation attempt that reaches the store is in the
change records and the audit trail, refusals included (GBUI XI-2)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.test_astm_transports import daemon, tcp_server_instrument
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from drivers.models import Patient, Result, SpecimenReport
from middleware.activation import activate_text, replay_summary
from middleware.store import IncomingMessage, Store
from middleware.store.history import open_read_only, read_history
from middleware.validation.ruleset import load_ruleset_text
from middleware.web.app import create_app
from middleware.web.rule_diff import diff_decisions
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from web.conftest import StubGateway
from web.console_support import PASSWORD, add_user
from web.test_console_api import sign_in
from web.test_console_browser import browser, log_in, step, wait_until  # noqa: F401 (fixture)

HEADER = """\
name: chemistry
version: "{version}"
responsible_biologist: Dr A. Martin
enabled: true
tests:
  GLU:
    unit: mmol/L
    autoverify_range: {{low: 3.0, high: {high}}}
"""
CASES = """\
cases:
  - name: normal glucose autovalidates
    result: {test_code: GLU, value: "5.2", unit: mmol/L}
    expect: {decision: autovalidated}
  - name: very high glucose is held
    result: {test_code: GLU, value: "30", unit: mmol/L}
    expect: {decision: held, reasons: [outside_autoverify_range]}
"""
# Line 8 of every text below is the autoverify range.
AUTOVERIFY_LINE = 8


def rules(version: str = "1", high: str = "15.0", cases: str = CASES) -> str:
    return HEADER.format(version=version, high=high) + cases


ACTIVE = rules("1", "15.0")
EDITED = rules("2", "10.0")  # 12.5 mmol/L is no longer auto-validated


def glucose(number: int, value: str, hours_ago: float, patient: str = "") -> IncomingMessage:
    """A stored patient result, measured `hours_ago`."""
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    result = Result(
        specimen_id=f"S{number}",
        test_code="GLU",
        value=value,
        numeric=Decimal(value),
        units="mmol/L",
        instrument="chem-1",
        sequence=1,
        measured_at=at,
    )
    patient_id = patient or f"P{number}"
    report = SpecimenReport(f"S{number}", Patient(patient_id, "DUPONT", "Marie"), (result,))
    return IncomingMessage(
        message_id=f"m{number}",
        connection="chem-1",
        protocol="astm",
        received_at=at,
        raw=b"\x021H|\\^&\r\x03AA\r\n",
        reports=(report,),
        decisions=(("autovalidated", ()),),
        lis="lis",
    )


def seed(store: Store, values: tuple[str, ...] = ("5.2", "12.5", "18.0")) -> list[int]:
    """The active rule set (as `labgate rules activate` would) and some stored results, a
    few hours apart; returns the result ids."""
    outcome = activate_text(store, ACTIVE, "rules.yaml", "dr-seed", "first version")
    assert outcome.accepted
    for number, value in enumerate(values, 1):
        store.save_message(glucose(number, value, hours_ago=10 - number))
    return [event["id"] for event in history(store)]


def history(store: Store) -> list[dict[str, Any]]:
    engine = open_read_only(store.engine.url.render_as_string(hide_password=False))
    try:
        return [e for e in read_history(engine) if e["kind"] == "result"]
    finally:
        engine.dispose()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def activation(text: str = EDITED, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "text": text,
        "change": "GLU auto-validated up to 10 mmol/L",
        "password": PASSWORD,
        "probation_days": 14,
    }
    body.update(extra)
    return body


# --- reading and checking: every role ------------------------------------------------------


@pytest.mark.parametrize("role", ["technician", "biologist", "admin"])
async def test_every_role_reads_the_active_text_and_checks_an_edit(
    http: httpx.AsyncClient, gateway: StubGateway, role: str
) -> None:
    ids = seed(gateway.store)
    await sign_in(http, gateway.store, role)

    [stored] = (await http.get("/api/rulesets")).json()
    version = await http.get(f"/api/rulesets/{stored['version_id']}")
    assert version.status_code == 200
    assert version.json()["text"] == ACTIVE and version.json()["active"] is True

    page = await http.get("/rules/edit")
    assert page.status_code == 200
    assert "high: 15.0}" in page.text and 'id="rule-text"' in page.text
    # The activation form is a biologist's only.
    assert ('id="rule-activate"' in page.text) == (role == "biologist")

    answer = await http.post("/api/rulesets/check", json={"text": EDITED})
    assert answer.status_code == 200, answer.text
    check = answer.json()
    assert check["valid"] and check["activatable"] and check["problems"] == []
    assert check["ruleset"]["version"] == "2"
    assert [(c["name"], c["passed"]) for c in check["cases"]] == [
        ("normal glucose autovalidates", True),
        ("very high glucose is held", True),
    ]
    assert check["cases"][1]["obtained"] == {
        "decision": "held",
        "reasons": ["outside_autoverify_range"],
    }
    replay = check["replay"]
    assert (replay["results"], replay["changed"]) == (3, 1)
    assert replay["against"] == "chemistry 1"
    assert replay["transitions"] == {"autovalidated → held": 1}
    assert replay["changed_per_test"] == {"GLU": 1}
    [row] = replay["rows"]
    assert row["id"] == ids[1] and row["value"] == "12.5" and row["specimen"] == "S2"
    assert row["before"] == {"decision": "autovalidated", "reasons": []}
    assert row["after"] == {"decision": "held", "reasons": ["outside_autoverify_range"]}
    # A check changes nothing.
    assert len(gateway.store.change_records()) == 1


async def test_a_stored_version_that_does_not_exist_is_404(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "technician")
    assert (await http.get("/api/rulesets/99")).status_code == 404
    assert (await http.get("/rules/edit?version=99")).status_code == 404


async def test_without_an_active_rule_set_the_editor_starts_from_a_skeleton_and_compares_with_no_rule(  # noqa: E501
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    for number, value in enumerate(("5.2", "12.5"), 1):
        gateway.store.save_message(glucose(number, value, hours_ago=3))
    await sign_in(http, gateway.store, "biologist")
    page = await http.get("/rules/edit")
    assert "name: new-rule-set" in page.text
    check = (await http.post("/api/rulesets/check", json={"text": ACTIVE})).json()
    # Today nothing is auto-validated (no_rule): with this rule set both results would be.
    assert check["replay"]["transitions"] == {"held → autovalidated": 2}
    assert check["replay"]["against"].startswith("no active rule set")


# --- problems with their line and field ------------------------------------------------------


async def test_a_wrong_value_comes_back_with_its_line_and_field(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "technician")
    check = (await http.post("/api/rulesets/check", json={"text": rules("2", "ten")})).json()
    assert check["valid"] is False and check["activatable"] is False
    assert check["replay"] is None and check["cases"] == []
    [problem] = check["problems"]
    assert problem["line"] == AUTOVERIFY_LINE
    assert problem["field"] == "tests.GLU.autoverify_range.high"
    assert "valid decimal" in problem["message"]
    assert "high: ten" in problem["excerpt"]


async def test_broken_yaml_comes_back_with_its_line(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    await sign_in(http, gateway.store, "biologist")
    broken = rules().replace("unit: mmol/L\n", "unit: [mmol/L\n", 1)
    [problem] = (await http.post("/api/rulesets/check", json={"text": broken})).json()["problems"]
    assert problem["message"].startswith("not valid YAML")
    assert problem["line"] is not None and problem["line"] >= 7


async def test_the_page_shows_the_problem_beside_its_line(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "technician")
    csrf = csrf_of((await http.get("/rules/edit")).text)
    # The text comes back as the browser sends a text area: CRLF line ends.
    text = rules("2", "ten").replace("\n", "\r\n")
    page = await http.post("/rules/edit", data={"csrf": csrf, "text": text, "days": "7"})
    assert page.status_code == 200
    problems = re.search(r'<ol class="rule-problems" id="rule-problems".*?</ol>', page.text, re.S)
    assert problems is not None
    assert f"line {AUTOVERIFY_LINE}" in problems.group(0)
    assert "tests.GLU.autoverify_range.high" in problems.group(0)
    assert f"{AUTOVERIFY_LINE} | " in problems.group(0)
    assert f'<span data-line="{AUTOVERIFY_LINE}" class="rule-bad">' in page.text
    assert '<span data-line="7">' in page.text  # only the wrong line is marked
    assert "\r" not in page.text.split('id="rule-text"')[1].split("</textarea>")[0]


async def test_a_new_text_under_a_stored_label_needs_a_new_version(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    """The daemon reloads its rule set when the active name or version changes, and each
    decision records only "name version": a second text under one label would go unseen."""
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    same_label = rules("1", "10.0")
    check = (await http.post("/api/rulesets/check", json={"text": same_label})).json()
    [problem] = check["problems"]
    assert (problem["field"], problem["line"]) == ("version", 2)
    assert "new version" in problem["message"]
    assert check["activatable"] is False
    answer = await http.post("/api/rulesets", json=activation(same_label))
    assert answer.status_code == 422
    assert answer.json()["detail"]["change_record"] is None
    assert len(gateway.store.change_records()) == 1


# --- the replay window -----------------------------------------------------------------------


async def test_the_replay_keeps_the_latest_results_of_the_window(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    activate_text(gateway.store, ACTIVE, "rules.yaml", "dr-seed", "first version")
    gateway.store.save_message(glucose(1, "12.5", hours_ago=10 * 24))  # outside 7 days
    gateway.store.save_message(glucose(2, "12.5", hours_ago=5))
    gateway.store.save_message(glucose(3, "12.0", hours_ago=2))
    await sign_in(http, gateway.store, "technician")

    async def replayed(**window: int) -> dict[str, Any]:
        answer = await http.post("/api/rulesets/check", json={"text": EDITED, **window})
        assert answer.status_code == 200, answer.text
        replay: dict[str, Any] = answer.json()["replay"]
        return replay

    week = await replayed()
    assert (week["results"], week["changed"], week["window"]["truncated"]) == (2, 2, False)
    assert [row["specimen"] for row in week["rows"]] == ["S2", "S3"]
    latest = await replayed(limit=1)
    assert (latest["results"], latest["window"]["truncated"]) == (1, True)
    assert [row["specimen"] for row in latest["rows"]] == ["S3"]
    everything = await replayed(days=30)
    assert everything["results"] == 3
    bad = await http.post("/api/rulesets/check", json={"text": EDITED, "days": 1000})
    assert bad.status_code == 422


def test_the_diff_counts_what_the_activation_record_counts(sqlite_store: Store) -> None:
    """The editor's diff and `labgate rules activate --replay` count the same changes."""
    values = ("5.2", "12.5", "18.0", "9.9", "10.1", "2.0")
    for number, value in enumerate(values, 1):
        sqlite_store.save_message(glucose(number, value, hours_ago=number, patient="P1"))
    events = history(sqlite_store)
    active, edited = load_ruleset_text(ACTIVE), load_ruleset_text(EDITED)
    diff = diff_decisions(active, edited, events)
    expected = replay_summary(edited, active, events)
    summary = diff.summary(expected["against"])
    assert {k: summary[k] for k in expected} == expected
    assert summary["changed"] == 2  # 12.5 and 10.1
    assert summary["transitions"] == {"autovalidated → held": 2}


async def test_the_editor_replays_and_activates_on_each_store_backend(store: Store) -> None:
    gateway = StubGateway(store)
    seed(store)
    transport = httpx.ASGITransport(app=create_app(gateway))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as http:
        await sign_in(http, store, "biologist")
        check = (await http.post("/api/rulesets/check", json={"text": EDITED})).json()
        assert (check["replay"]["results"], check["replay"]["changed"]) == (3, 1)
        answer = await http.post("/api/rulesets", json=activation())
        assert answer.status_code == 201, answer.text
    assert store.governance_state().active.version == "2"  # type: ignore[union-attr]


# --- activation: who, CSRF, signature --------------------------------------------------------


@pytest.mark.parametrize("role", ["technician", "admin"])
async def test_only_a_biologist_activates(
    http: httpx.AsyncClient, gateway: StubGateway, role: str
) -> None:
    seed(gateway.store)
    csrf = await sign_in(http, gateway.store, role)
    answer = await http.post("/api/rulesets", json=activation())
    assert answer.status_code == 403
    assert f"the {role} role may not" in answer.json()["detail"]
    form = {"csrf": csrf, "text": EDITED, "change": "x", "password": PASSWORD}
    assert (await http.post("/rules/edit/activate", data=form)).status_code == 403
    assert len(gateway.store.change_records()) == 1
    assert gateway.store.governance_state().active.version == "1"  # type: ignore[union-attr]


async def test_a_change_without_the_csrf_token_is_refused(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    del http.headers["X-CSRF-Token"]
    answer = await http.post("/api/rulesets", json=activation())
    assert (answer.status_code, answer.json()["detail"]) == (403, "missing or wrong CSRF token")
    assert (await http.post("/api/rulesets/check", json={"text": EDITED})).status_code == 403
    form = {"text": EDITED, "change": "x", "password": PASSWORD}
    assert (await http.post("/rules/edit/activate", data=form)).status_code == 403
    form["csrf"] = "not-the-token"
    assert (await http.post("/rules/edit/activate", data=form)).status_code == 403
    assert (await http.post("/rules/edit", data=form)).status_code == 403
    assert len(gateway.store.change_records()) == 1


async def test_signed_out_the_editor_sends_to_the_login_page(http: httpx.AsyncClient) -> None:
    answer = await http.get("/rules/edit?version=1")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login?why=expired&next=/rules/edit")
    assert (await http.post("/api/rulesets/check", json={"text": EDITED})).status_code == 401


async def test_a_biologist_activates_and_the_change_record_keeps_cases_and_replay(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    answer = await http.post("/api/rulesets", json=activation())
    assert answer.status_code == 201, answer.text
    done = answer.json()
    assert done["accepted"] and done["ruleset"] == "chemistry 2"
    assert (done["cases_passed"], done["cases_failed"]) == (2, 0)
    assert done["signed_by"] == "biologist-1"

    state = gateway.store.governance_state()
    assert state.active is not None and state.active.version_id == done["version_id"]
    assert state.active.text == EDITED and state.active.source == "console"
    assert state.active.created_by == "biologist-1"
    record = gateway.store.change_records(1)[0]
    assert record["id"] == done["change_record"]
    assert (record["author"], record["action"], record["accepted"]) == (
        "biologist-1",
        "activate",
        True,
    )
    assert record["change"] == "GLU auto-validated up to 10 mmol/L"
    assert record["probation_days"] == 14
    assert record["expected"]["very high glucose is held"] == {
        "decision": "held",
        "reasons": ["outside_autoverify_range"],
    }
    replay = record["obtained"]["replay"]
    assert (replay["results"], replay["changed"], replay["against"]) == (3, 1, "chemistry 1")
    assert replay["window"]["days"] == 7
    [audit] = gateway.store.audit_search(action="ruleset_activated", actor="biologist-1")
    assert audit["subject"] == "chemistry 2"
    assert audit["detail"]["change_record"] == done["change_record"]


async def test_a_wrong_signature_activates_nothing(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    answer = await http.post("/api/rulesets", json=activation(password="not my password"))
    assert (answer.status_code, answer.json()["detail"]) == (
        403,
        "signature refused: wrong password",
    )
    assert len(gateway.store.change_records()) == 1
    assert gateway.store.audit_search(action="signature_failed", actor="biologist-1")


async def test_a_failing_case_refuses_the_activation_and_the_refusal_is_recorded(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    # 12 mmol/L expected auto-validated, but the edit stops at 10.
    failing = rules("2", "10.0") + (
        "  - name: twelve autovalidates\n"
        '    result: {test_code: GLU, value: "12", unit: mmol/L}\n'
        "    expect: {decision: autovalidated}\n"
    )
    check = (await http.post("/api/rulesets/check", json={"text": failing})).json()
    assert check["valid"] and not check["activatable"] and check["cases_failed"] == 1
    [failed] = [c for c in check["cases"] if not c["passed"]]
    assert failed["expected"] == {"decision": "autovalidated", "reasons": []}
    assert failed["obtained"] == {"decision": "held", "reasons": ["outside_autoverify_range"]}

    answer = await http.post("/api/rulesets", json=activation(failing))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail["change_record"] is not None and "refused" in detail["message"]
    record = gateway.store.change_records(1)[0]
    assert record["id"] == detail["change_record"]
    assert (record["author"], record["accepted"], record["ruleset_version_id"]) == (
        "biologist-1",
        False,
        None,
    )
    assert "twelve autovalidates" in record["anomaly"]
    assert record["obtained"]["twelve autovalidates"]["decision"] == "held"
    assert record["obtained"]["replay"]["changed"] == 1
    [audit] = gateway.store.audit_search(action="ruleset_refused")
    assert (audit["actor"], audit["subject"]) == ("biologist-1", "chemistry 2")
    assert gateway.store.governance_state().active.version == "1"  # type: ignore[union-attr]


async def test_a_rule_set_without_cases_is_refused_and_recorded(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    answer = await http.post("/api/rulesets", json=activation(rules("2", "10.0", cases="")))
    assert answer.status_code == 422
    record = gateway.store.change_records(1)[0]
    assert record["accepted"] is False
    assert "no embedded test cases" in record["anomaly"]


async def test_a_text_that_is_not_a_rule_set_is_not_recorded_nor_signed(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    answer = await http.post("/api/rulesets", json=activation(rules("2", "ten"), password="wrong"))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail["change_record"] is None
    assert detail["problems"][0]["line"] == AUTOVERIFY_LINE
    assert len(gateway.store.change_records()) == 1
    # Nothing was signed: a wrong password typed with a bad text costs no attempt.
    assert not gateway.store.audit_search(action="signature_failed")


async def test_the_page_activates_with_a_signature_and_returns_to_the_rules(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    csrf = csrf_of((await http.get("/rules/edit")).text)
    form = {
        "csrf": csrf,
        "text": EDITED.replace("\n", "\r\n"),
        "change": "GLU up to 10",
        "probation_days": "7",
        "password": PASSWORD,
        "days": "7",
        "limit": "1000",
    }
    # The check first: the page shows the cases and the diff.
    page = await http.post("/rules/edit", data=form)
    assert 'id="rule-cases"' in page.text and 'id="rule-diff"' in page.text
    assert "<b>1</b> of 3 result(s)" in page.text
    answer = await http.post("/rules/edit/activate", data=form)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/rules?ok=")
    rules_page = await http.get(answer.headers["location"])
    assert "chemistry 2 activated as version" in rules_page.text
    active = gateway.store.governance_state().active
    assert active is not None and active.text == EDITED  # LF, as a file would have it
    assert gateway.store.change_records(1)[0]["probation_days"] == 7


async def test_the_page_keeps_the_text_and_shows_a_refusal(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    seed(gateway.store)
    await sign_in(http, gateway.store, "biologist")
    csrf = csrf_of((await http.get("/rules/edit")).text)
    without_cases = rules("2", "10.0", cases="")
    form = {"csrf": csrf, "text": without_cases, "change": "try", "password": PASSWORD}
    page = await http.post("/rules/edit/activate", data=form)
    assert page.status_code == 200
    assert "refused: the rule set has no embedded test cases" in page.text
    assert "high: 10.0}" in page.text  # the edit is not lost
    record = gateway.store.change_records(1)[0]
    assert f"Change record {record['id']}: refused" in page.text
    # A wrong signature says so, and the text is still there.
    form.update(text=EDITED, password="nope")
    page = await http.post("/rules/edit/activate", data=form)
    assert "signature refused: wrong password" in page.text and "high: 10.0}" in page.text


# --- in the browser --------------------------------------------------------------------------


def check_in_browser(driver: WebDriver, text: str) -> None:
    """Type `text` over the editor's and press Check; returns once the answer page is shown."""
    area = driver.find_element(By.ID, "rule-text")
    area.clear()
    area.send_keys(text)
    driver.find_element(By.ID, "rule-check").click()
    wait_until(driver, lambda d: _gone(area) and bool(d.find_elements(By.ID, "rule-text")))


def _gone(element: WebElement) -> bool:
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    return False


async def test_a_biologist_edits_checks_replays_and_activates_in_the_browser(
    tmp_path: Path,
    browser: WebDriver,  # noqa: F811 (the fixture imported above)
    artefacts: Path,
) -> None:
    async with daemon(tmp_path, tcp_server_instrument()) as running:
        gateway = running.gateway
        store = gateway.store
        await store.run(add_user, store, "dr-martin", "biologist")
        await store.run(activate_text, store, ACTIVE, "rules.yaml", "dr-seed", "first version")
        # Three glucose results from the simulated analyser make the stored history.
        analyser = AnalyserSimulator("127.0.0.1", gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            for number, value in enumerate(("5.2", "12.5", "18.0"), 1):
                result = SimulatedResult("GLU", value, "mmol/L", "3.9 to 6.1")
                message = build_result_message(f"ED-{number}", f"PAT-{number}", [result])
                assert await analyser.send(message) is True
        finally:
            await analyser.close()
        base = running.api
        shot = artefacts.joinpath

        # From the rule sets to the editor, with the active version's text.
        await step(log_in, browser, base, "dr-martin")
        await step(browser.get, f"{base}/rules")
        await step(browser.find_element(By.ID, "edit-active").click)
        await step(wait_until, browser, lambda d: bool(d.find_elements(By.ID, "rule-text")))
        area = browser.find_element(By.ID, "rule-text")
        assert area.get_property("value") == ACTIVE
        await step(browser.save_screenshot, str(shot("11-rule-editor.png")))

        # A mistake: the problem is shown with its line and field, the line is marked, and
        # the cursor is put on it.
        await step(check_in_browser, browser, rules("2", "ten"))
        problems = browser.find_element(By.ID, "rule-problems").text
        assert f"line {AUTOVERIFY_LINE}" in problems
        assert "tests.GLU.autoverify_range.high" in problems and "high: ten" in problems
        marked = browser.find_elements(By.CSS_SELECTOR, "#rule-gutter .rule-bad")
        assert [span.text for span in marked] == [str(AUTOVERIFY_LINE)]
        area = browser.find_element(By.ID, "rule-text")
        start = sum(len(line) + 1 for line in rules().splitlines()[: AUTOVERIFY_LINE - 1])
        assert area.get_property("selectionStart") == start  # rule_editor.js ran (CSP)
        assert not browser.find_elements(By.ID, "rule-diff")
        await step(browser.save_screenshot, str(shot("12-rule-inline-error.png")))

        # Fixed: the cases pass, and the replay shows the one result decided otherwise.
        await step(check_in_browser, browser, EDITED)
        assert not browser.find_elements(By.ID, "rule-problems")
        assert "2 passed, 0 failed" in browser.find_element(By.ID, "rule-cases-summary").text
        summary_element = browser.find_element(By.ID, "rule-cases-summary")
        summary = browser.find_element(By.ID, "rule-replay-summary").text
        assert "1 of 3 result(s) would be decided otherwise than by chemistry 1" in summary
        [changed] = browser.find_elements(By.CSS_SELECTOR, "#rule-diff tbody tr")
        assert "ED-2" in changed.text and "12.5" in changed.text
        assert "autovalidated" in changed.text and "outside_autoverify_range" in changed.text
        transitions = browser.find_element(By.ID, "rule-transitions").text
        assert "autovalidated → held 1" in transitions
        # (WebDriver's own script, not the page's: the CSP does not apply to it.)
        await step(browser.execute_script, "arguments[0].scrollIntoView()", summary_element)
        await step(browser.save_screenshot, str(shot("13-rule-replay-diff.png")))

        # Activate, signing with the password.
        def activate(driver: WebDriver) -> None:
            driver.find_element(By.ID, "rule-change").send_keys("GLU auto-validated up to 10")
            driver.find_element(By.ID, "rule-password").send_keys(PASSWORD)
            driver.find_element(By.ID, "rule-activate-button").click()
            wait_until(driver, lambda d: bool(d.find_elements(By.CSS_SELECTOR, ".flash.ok")))

        await step(activate, browser)
        assert "chemistry 2 activated as version" in browser.page_source
        assert "signed by dr-martin" in browser.page_source
        [active_row] = [
            row
            for row in browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
            if "active" in row.text
        ]
        assert "chemistry" in active_row.text and " 2 " in f" {active_row.text} "
        await step(browser.save_screenshot, str(shot("14-rule-activated.png")))

        [(author, accepted, obtained)] = running.rows(
            "select author, accepted, obtained from change_records "
            "where action = 'activate' order by id desc limit 1"
        )
        assert (author, bool(accepted)) == ("dr-martin", True)
        replayed = json.loads(obtained)["replay"]
        assert (replayed["results"], replayed["changed"]) == (3, 1)
        state = await store.read(store.governance_state)
        assert state.active is not None and state.active.text == EDITED

        # The daemon decides with it from now on: 12.5 mmol/L is held.
        deadline = time.monotonic() + 15
        while gateway.validation.pipeline.version != "chemistry 2":
            assert time.monotonic() < deadline, "the daemon did not load the new version"
            await asyncio.sleep(0.1)
        analyser = AnalyserSimulator("127.0.0.1", gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            result = SimulatedResult("GLU", "12.5", "mmol/L", "3.9 to 6.1")
            assert await analyser.send(build_result_message("ED-4", "PAT-4", [result])) is True
        finally:
            await analyser.close()
        [(decision, reasons, ruleset)] = running.rows(
            "select decision, reasons, ruleset from results where specimen_id = 'ED-4'"
        )
        assert (decision, json.loads(reasons), ruleset) == (
            "held",
            ["outside_autoverify_range"],
            "chemistry 2",
        )
    for name in ("11-rule-editor", "12-rule-inline-error", "13-rule-replay-diff"):
        assert artefacts.joinpath(f"{name}.png").stat().st_size > 5000
