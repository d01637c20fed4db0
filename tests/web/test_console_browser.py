"""The console in a real headless Chromium against a real daemon (in process, real sockets,
SQLite, simulated analyser and LIS): log in, see a result arrive on the live dashboard,
validate the held result with a signature (the LIS gets the correction), block the device,
follow the trace. A screenshot of every page is kept in var/test-artefacts/console/.

Selenium is synchronous: each browser step runs in a thread while the daemon keeps serving
in the test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from e2e.test_astm_transports import daemon, tcp_server_instrument
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message
from web.console_support import PASSWORD, add_user

T = TypeVar("T")


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[WebDriver]:
    path, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = path
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,768",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


async def step(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def wait_until(driver: WebDriver, check: Callable[[WebDriver], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not _holds(check, driver):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out on {driver.current_url}: {driver.page_source[:2000]}")
        time.sleep(0.1)


def _holds(check: Callable[[WebDriver], bool], driver: WebDriver) -> bool:
    """`check`, where an element the dashboard's live refresh replaced while it was being
    read means "not yet" (it is found again on the next look)."""
    try:
        return check(driver)
    except StaleElementReferenceException:
        return False


def log_in(driver: WebDriver, base: str, name: str, shot: Path | None = None) -> None:
    driver.get(f"{base}/login")
    if shot is not None:
        driver.save_screenshot(str(shot))
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "signin").click()
    wait_until(driver, lambda d: d.find_elements(By.ID, "user"))


def fill_and_submit(driver: WebDriver, form_css: str, reason: str) -> None:
    form = driver.find_element(By.CSS_SELECTOR, form_css)
    form.find_element(By.NAME, "reason").send_keys(reason)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


async def test_a_biologist_uses_the_console_end_to_end(
    tmp_path: Path, browser: WebDriver, artefacts: Path
) -> None:
    # One-second live refresh (the console section follows the instruments in the YAML).
    instrument = tcp_server_instrument() + "console:\n  refresh_seconds: 1\n"
    async with daemon(tmp_path, instrument) as running:
        gateway = running.gateway
        await gateway.store.run(add_user, gateway.store, "dr-martin", "biologist")
        await gateway.store.run(add_user, gateway.store, "it-admin", "admin")
        base = running.api
        shot = artefacts.joinpath

        # Log in; the dashboard shows the analyser's connection, nothing received yet.
        await step(log_in, browser, base, "dr-martin", shot("01-login.png"))
        assert browser.current_url.rstrip("/") == base
        row = browser.find_element(By.CSS_SELECTOR, "tr[data-connection=chem-1]")
        assert row.find_elements(By.CSS_SELECTOR, "td.num")[1].text == "0"

        # A result arrives from the simulated analyser: the live dashboard counts it.
        analyser = AnalyserSimulator("127.0.0.1", gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            message = build_result_message(
                "WEB-1", "PAT-1", [SimulatedResult("GLU", "12.5", "mmol/L", "3.9 to 6.1", "H")]
            )
            assert await analyser.send(message) is True
        finally:
            await analyser.close()

        def stored_one(driver: WebDriver) -> bool:
            cells = driver.find_elements(By.CSS_SELECTOR, "tr[data-connection=chem-1] td.num")
            return len(cells) > 1 and cells[1].text == "1"

        await step(wait_until, browser, stored_one)
        await step(browser.save_screenshot, str(shot("02-dashboard.png")))
        await running.lis.wait_for(1)  # it went to the LIS held (no rule set decides)

        # The review queue shows it held, with its flag; the biologist validates it, signing.
        await step(browser.get, f"{base}/results")
        [held] = browser.find_elements(By.CSS_SELECTOR, "tr[data-result]")
        assert "WEB-1" in held.text and "held" in held.text and "H" in held.text
        await step(browser.save_screenshot, str(shot("03-review-queue.png")))

        def sign(driver: WebDriver) -> None:
            driver.find_element(By.CSS_SELECTOR, "input[name=result]").click()
            driver.find_element(By.ID, "signature").send_keys(PASSWORD)
            driver.find_element(By.ID, "sign-button").click()
            wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash.ok"))

        await step(sign, browser)
        assert "1 result(s) validated and signed by dr-martin" in browser.page_source
        await step(browser.get, f"{base}/results?view=all")
        assert "validé" in browser.find_element(By.ID, "results").text
        await step(browser.save_screenshot, str(shot("04-results-validated.png")))
        # The LIS had it held: it now gets the correction naming the biologist's decision.
        await running.lis.wait_for(2)
        assert running.rows("select decision, biologist from results")[0] == (
            "validated",
            "dr-martin",
        )

        # Block the device, with a reason.
        await step(browser.get, f"{base}/devices")
        await step(fill_and_submit, browser, "tr[data-device=chem-1] form", "QC drift")
        await step(wait_until, browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash.ok"))
        assert "blocked" in browser.find_element(By.CSS_SELECTOR, "tr[data-device=chem-1]").text
        await step(browser.save_screenshot, str(shot("05-devices.png")))
        blocked = running.rows("select actor, subject from audit where action = 'device_blocked'")
        assert blocked == [("dr-martin", "device:chem-1")]

        # The trace: the analyser's bytes with their control characters, both sendings.
        await step(browser.get, f"{base}/trace?specimen=WEB-1")
        page = browser.find_element(By.TAG_NAME, "main").text
        assert "<STX>" in page and "<CR>" in page and "correction" in page and "AA" in page
        await step(browser.save_screenshot, str(shot("06-trace.png")))

        for name, path in (
            ("07-rules.png", "/rules"),
            ("08-outbox.png", "/outbox"),
            ("09-audit.png", "/audit"),
        ):
            await step(browser.get, base + path)
            assert browser.find_elements(By.ID, "user")
            await step(browser.save_screenshot, str(shot(name)))
        assert "result_validated" in browser.page_source

        # A biologist has no Users page; the admin has, and a new login ends the other session.
        await step(browser.get, f"{base}/users")
        assert "403" in browser.page_source
        await step(browser.delete_all_cookies)
        await step(log_in, browser, base, "it-admin")
        await step(browser.get, f"{base}/users")
        assert "dr-martin" in browser.find_element(By.ID, "users").text
        await step(browser.save_screenshot, str(shot("10-users.png")))
    for name in ("01-login", "02-dashboard", "03-review-queue", "06-trace", "10-users"):
        assert artefacts.joinpath(f"{name}.png").stat().st_size > 5000
