"""Fixtures of the console tests: an app over a real store (no daemon) for the API, and a
headless Chromium (Debian's, installed by scripts/chromium.sh) for the pages."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from middleware.config import load_settings_text
from middleware.health import ConnectionHealth, Health
from middleware.store import Store
from middleware.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "var" / "test-artefacts" / "console"

SETTINGS = """
gateway: LABGATE
lis:
  port: 2575
instruments:
  - name: chem-1
    protocol: astm
    transport: {type: tcp-server, port: 0}
  - name: poc-1
    protocol: astm
    transport: {type: tcp-server, port: 0}
console:
  idle_minutes: 15
"""


class StubGateway:
    """What the app reads from a gateway, over a real store, without the daemon's links."""

    def __init__(self, store: Store, extra: str = "") -> None:
        self.store = store
        self.settings = load_settings_text(SETTINGS + extra)
        self.version = "test"
        self.state = "running"
        self.started_at = datetime.now(UTC)
        self.health = Health()
        for name in ("chem-1", "poc-1"):
            self.health.add(ConnectionHealth(name, "astm", "tcp-server", "127.0.0.1:0"))
        self.health.add(ConnectionHealth("lis", "hl7", "mllp-client", "127.0.0.1:2575"))
        self.sessions: dict[str, Any] = {}
        self.validation = SimpleNamespace(qc=None)
        self.addresses: dict[str, tuple[str, int]] = {}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'labgate.db'}")
    yield opened
    opened.close()


@pytest.fixture
def gateway(sqlite_store: Store) -> StubGateway:
    return StubGateway(sqlite_store)


@pytest.fixture
async def http(gateway: StubGateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(gateway))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        yield client


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver) paths: Debian's chromium and chromium-driver, installed if missing."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "chromium.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        pytest.fail(f"chromium could not be installed: {done.stderr.strip()}")
    browser, driver = done.stdout.strip().splitlines()[-2:]
    return browser, driver


@pytest.fixture(scope="session")
def artefacts() -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS
