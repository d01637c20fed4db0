"""The daemon's automatic daily backup (GBUI I-4): on time, caught up when missed, and every
run — failures too — logged, counted in /metrics and archived in the audit table."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from conftest import free_port
from e2e.daemon import Daemon
from ops_store_data import config, populate
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from middleware.config.settings import BackupSettings
from middleware.health import Health
from middleware.ops.backup import list_backups, verify
from middleware.ops.daily import DailyBackups, next_run
from middleware.store import Store


def test_next_run_is_the_next_local_time_of_day() -> None:
    early = datetime(2025, 3, 10, 1, 0).astimezone()  # a naive time read as local
    late = datetime(2025, 3, 10, 3, 0).astimezone()
    assert next_run("02:30", early) == datetime(2025, 3, 10, 2, 30).astimezone()
    assert next_run("02:30", late) == datetime(2025, 3, 11, 2, 30).astimezone()
    exactly = datetime(2025, 3, 10, 2, 30).astimezone()
    assert next_run("02:30", exactly) == datetime(2025, 3, 11, 2, 30).astimezone()


def _audit(url: str) -> list[tuple[str, str, dict[str, object]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("select actor, action, detail from audit")).all()
    finally:
        engine.dispose()
    return [(a, b, json.loads(c) if isinstance(c, str) else c) for a, b, c in rows]


async def test_a_failed_backup_is_logged_counted_and_audited(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    store = Store.open(url)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the backup folder should be")
    health = Health()
    daily = DailyBackups(BackupSettings(directory=str(blocked)), store, url, "gw", health)
    try:
        with capture_logs() as logs:
            assert await daily.once("daily") is None
    finally:
        store.close()
    assert [e["event"] for e in logs] == ["backup_failed"]
    assert "labgate_backup_failures_total 1.0" in generate_latest(health.registry).decode()
    [(actor, action, detail)] = _audit(url)
    assert (actor, action, detail["trigger"]) == ("labgate", "store_backup_failed", "daily")


async def test_a_missed_backup_is_taken_soon_after_start_then_daily(tmp_path: Path) -> None:
    """With the newest backup two days old, one is taken at once; the next waits for `at`."""
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    store = Store.open(url)
    populate(store)
    folder = tmp_path / "backups"
    now = datetime(2025, 3, 12, 9, 0).astimezone()
    clock = [now]
    daily = DailyBackups(
        BackupSettings(directory=str(folder), at="02:30", keep=5),
        store,
        url,
        "gw",
        Health(),
        clock=lambda: clock[0],
        catch_up_delay=0,
        nap=0.1,
    )
    task = asyncio.create_task(daily.run())
    try:
        async with asyncio.timeout(10):
            while not list_backups(folder, "gw"):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(list_backups(folder, "gw")) == 1  # and no other before 02:30 tomorrow
        clock[0] = datetime(2025, 3, 13, 2, 30, 1).astimezone()  # the wall clock moves on
        async with asyncio.timeout(10):
            while len(list_backups(folder, "gw")) < 2:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    assert [action for _, action, _ in _audit(url)].count("store_backup") == 2


async def test_a_daemon_with_a_backup_section_backs_the_store_up_by_itself(
    tmp_path: Path,
) -> None:
    api_port = free_port()
    db = tmp_path / "labgate.db"
    folder = tmp_path / "backups"
    cfg = config(
        tmp_path / "lab.yaml",
        f"sqlite:///{db}",
        api_port=api_port,
        lis_port=free_port(),
        backups=folder,
    )
    daemon = Daemon(cfg, api_port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    try:
        deadline = time.monotonic() + 40
        while not list_backups(folder, "gw-ops"):
            assert time.monotonic() < deadline, daemon.log()
            await asyncio.sleep(0.2)
        [backup] = list_backups(folder, "gw-ops")
        checked = verify(backup)
        assert checked.manifest["trigger"] == "daily" and checked.revision is not None
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{daemon.api}/metrics")).text
        stamp = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("labgate_backup_last_success_timestamp_seconds ")
        )
        assert abs(stamp - checked.created_at.timestamp()) < 1
        deadline = time.monotonic() + 10
        while not any(a == "store_backup" for _, a, _ in _audit(f"sqlite:///{db}")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        daemon.stop()
    assert '"backup_done"' in daemon.log()
    [(actor, _, detail)] = [row for row in _audit(f"sqlite:///{db}") if row[1] == "store_backup"]
    assert actor == "labgate" and detail["sha256"] == checked.sha256
    assert datetime.now(UTC) - checked.created_at < timedelta(minutes=2)
