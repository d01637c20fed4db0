"""The QC page and the account page in a real headless Chromium against a real daemon (in
process, real sockets, SQLite, a QC plan): a technician sees the Levey-Jennings chart of the
stored QC runs with the 1-3s rejection marked (drawn in red by the console's stylesheet, not by
inline style: the CSP forbids it), then changes her password and signs in with the new one.
Screenshots go to var/test-artefacts/console/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from e2e.test_astm_transports import daemon, tcp_server_instrument
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from web.console_support import PASSWORD, add_user
from web.test_console_browser import browser, log_in, step, wait_until  # noqa: F401 (fixture)
from web.test_console_qc import qc_message

ROOT = Path(__file__).resolve().parents[2]
PLAN = 'targets:\n  - {instrument: chem-1, test: GLU, lot: "L1", level: "1", mean: 5.5, sd: 0.2}\n'
NEW = "another long passphrase"


def change_password(driver: WebDriver) -> None:
    driver.find_element(By.ID, "current-password").send_keys(PASSWORD)
    driver.find_element(By.ID, "new-password").send_keys(NEW)
    driver.find_element(By.ID, "new-password-again").send_keys(NEW)
    driver.find_element(By.ID, "change-password").click()
    wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash.ok"))


def sign_in_with(driver: WebDriver, base: str, name: str, password: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "signin").click()
    wait_until(driver, lambda d: d.find_elements(By.ID, "user") or "why=" in d.current_url)


async def test_a_technician_reads_the_qc_chart_and_changes_her_password(
    tmp_path: Path,
    browser: WebDriver,  # noqa: F811 (the fixture imported above)
    artefacts: Path,
) -> None:
    plan = tmp_path / "qc.yaml"
    plan.write_text(PLAN, encoding="utf-8")
    rules = ROOT / "config" / "rules" / "example.yaml"
    extra = f"validation:\n  rules: {rules}\n  qc: {plan}\n"
    async with daemon(tmp_path, tcp_server_instrument() + extra) as running:
        gateway = running.gateway
        store = gateway.store
        await store.run(add_user, store, "tech-anne", "technician")
        today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
        # Level 1 (mean 5.5, SD 0.2): +2.25 SD, +2.5 SD (2-2s), mean, +3.5 SD (1-3s), mean.
        for number, (days, value) in enumerate(
            ((5, "5.95"), (4, "6.0"), (3, "5.5"), (2, "6.2"), (1, "5.45"))
        ):
            at = today - timedelta(days=days)
            await store.run(store.save_message, qc_message(number, at, value))
        base = running.api
        shot = artefacts.joinpath

        await step(log_in, browser, base, "tech-anne")
        await step(browser.get, f"{base}/qc?instrument=chem-1&test=GLU")
        points = browser.find_elements(By.CSS_SELECTOR, "svg.lj g.lj-point")
        assert len(points) == 5
        rules = [p.get_attribute("data-rules") for p in points]
        assert rules == ["1-2s", "1-2s, 2-2s", "", "1-2s, 1-3s", ""]
        [marked] = [p for p in points if p.get_attribute("data-rules") == "1-2s, 1-3s"]
        assert "rejected" in (marked.get_attribute("class") or "")
        circle = marked.find_element(By.TAG_NAME, "circle")
        assert circle.value_of_css_property("fill") == "rgb(198, 40, 40)"  # console.css, red
        at = marked.get_attribute("data-at")
        label = browser.find_element(By.CSS_SELECTOR, f'text.lj-rule[data-at="{at}"]')
        assert label.text == "1-2s, 1-3s" and label.value_of_css_property("fill") == (
            "rgb(138, 20, 20)"
        )
        # The 1-3s point sits above the +3 SD line (y grows downwards).
        sd3_y = min(
            float(line.get_attribute("y1") or 0)
            for line in browser.find_elements(By.CSS_SELECTOR, "line.lj-sd3")
        )
        assert float(circle.get_attribute("cy") or 0) < sd3_y
        assert "1-3s" in browser.find_element(By.CSS_SELECTOR, "table.qc-violations").text
        await step(browser.save_screenshot, str(shot("11-qc.png")))

        await step(browser.get, f"{base}/account")
        await step(browser.save_screenshot, str(shot("12-account.png")))
        await step(change_password, browser)
        assert "password changed" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text
        await step(browser.save_screenshot, str(shot("13-password-changed.png")))
        await step(browser.delete_all_cookies)
        await step(sign_in_with, browser, base, "tech-anne", PASSWORD)
        assert "why=bad_credentials" in browser.current_url
        await step(sign_in_with, browser, base, "tech-anne", NEW)
        assert browser.find_element(By.ID, "user").text == "tech-anne"
        changed = running.rows("select actor from audit where action = 'password_changed'")
        assert changed == [("tech-anne",)]
    for name in ("11-qc", "12-account"):
        assert artefacts.joinpath(f"{name}.png").stat().st_size > 5000
