"""`labgate doctor` on a gateway where everything that can be wrong is, each problem reported
with what to do; then on a healthy one, with its daemon running, where all is good."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import ROOT, free_port
from e2e.daemon import Daemon
from ops_store_data import config

from middleware.ops.backup import take_backup
from middleware.ops.doctor import _serial_port, diagnose
from middleware.store import Store, migrate
from simulators.lis import LisSimulator

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can read: the doctor runs as `nobody` when the tests are root
    (root opens every device, so no permission problem could be shown otherwise)."""
    folder = Path(tempfile.mkdtemp(prefix="lg-doctor-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _open_to_others(path: Path) -> bool:
    """Whether another user can reach `path` (every folder above it searchable by others)."""
    return all(folder.stat().st_mode & 0o001 for folder in (path, *path.parents))


def _doctor(cfg: Path, *, as_nobody: bool = False) -> tuple[int, list[dict[str, str]]]:
    command_line = [sys.executable, "-m", "middleware", "doctor", "--config", str(cfg), "--json"]
    if as_nobody:
        if not (_open_to_others(ROOT) and _open_to_others(Path(sys.executable).parent)):
            # A checkout in a private folder (mktemp -d is 0700): `nobody` cannot import labgate.
            pytest.skip(f"{ROOT} is not readable by another user, so the doctor cannot run as one")
        command_line = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            *command_line,
        ]
    done = subprocess.run(
        [*command_line, "--timeout", "1"],
        capture_output=True,
        text=True,
        cwd=cfg.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _old_database(path: Path) -> None:
    """A store at the previous migration whose newest message is dated after the clock."""
    engine = sa.create_engine(f"sqlite:///{path}")
    config_ = migrate.alembic_config()
    with engine.begin() as connection:
        config_.attributes["connection"] = connection
        command.upgrade(config_, "head")
        command.downgrade(config_, "-1")
        connection.execute(
            sa.text(
                "insert into messages (message_id, connection, protocol, received_at, raw, "
                "status) values ('m-future', 'chem-1', 'astm', '2099-01-01 00:00:00', x'00', "
                "'stored')"
            )
        )
    engine.dispose()


def test_a_broken_gateway_gets_every_problem_reported(shared_dir: Path) -> None:
    as_nobody = os.geteuid() == 0
    master, slave = os.openpty()
    locked = os.ttyname(slave)
    if not as_nobody:
        os.chmod(locked, 0)
    db = shared_dir / "labgate.db"
    _old_database(db)
    db.chmod(0o644)
    backups = shared_dir / "backups"
    take_backup(
        f"sqlite:///{db}",
        backups,
        gateway="gw-ops",
        trigger="daily",
        now=datetime.now(UTC) - timedelta(days=3),
    )
    for path in (backups, *backups.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    api = socket.create_server(("127.0.0.1", 0))  # a program that holds the API port
    taken = socket.create_server(("127.0.0.1", 0))  # and an analyser's
    api_port, taken_port = api.getsockname()[1], taken.getsockname()[1]
    instruments = f"""instruments:
  - name: unplugged
    protocol: astm
    transport: {{type: serial, port: /dev/ttyLABGATE-NOPE}}
  - name: locked
    protocol: astm
    transport: {{type: serial, port: {locked}}}
  - name: taken
    protocol: astm
    transport: {{type: tcp-server, host: 127.0.0.1, port: {taken_port}}}
"""
    cfg = config(
        shared_dir / "lab.yaml",
        f"sqlite:///{db}",
        api_port=api_port,
        lis_port=free_port(),
        backups=backups,
        extra=instruments,
    )
    cfg.chmod(0o644)
    try:
        code, findings = _doctor(cfg, as_nobody=as_nobody)
    finally:
        api.close()
        taken.close()
        os.close(master)
        os.close(slave)
    problems = [f"{f['check']}: {f['text']}" for f in findings if f["status"] == "fail"]
    text = "\n".join(problems)
    assert code == 1
    expected = [
        "serial: unplugged: /dev/ttyLABGATE-NOPE is not present",
        f"serial: locked: {locked}: permission denied for",
        f"database: {db}: at migration {_previous_revision()}, this labgate's newest is "
        f"{migrate.head_revision()}: start labgate",
        "clock: the clock says",
        "peers: LIS 'lis' at 127.0.0.1:",
        f"listening: API 127.0.0.1:{api_port}: in use by another program",
        f"listening: analyser 'taken' 127.0.0.1:{taken_port}: in use by another program",
        "backups: newest labgate-gw-ops-",
    ]
    for start in expected:
        assert any(problem.startswith(start) for problem in problems), f"{start}\n--\n{text}"
    assert "usermod -aG" in text and "before the newest stored record (2099-01-01" in text
    assert "Connection refused" in text and "the daily backup is not happening" in text
    passed = {f["check"] for f in findings if f["status"] == "ok"}
    assert {"configuration", "disk"} <= passed


def _previous_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    head = script.get_revision(migrate.head_revision())
    assert head is not None and isinstance(head.down_revision, str)
    return head.down_revision


def test_little_free_space_is_a_problem(tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "lab.yaml",
        f"sqlite:///{tmp_path / 'labgate.db'}",
        api_port=free_port(),
        lis_port=free_port(),
    )
    findings = diagnose(cfg, timeout=1, min_free_bytes=1 << 60)
    [disk] = [f for f in findings if f.check == "disk"]
    assert disk.status == "fail" and "too little" in disk.text
    # A store not created yet and no backup section: worth knowing, not wrong.
    warned = {f.check for f in findings if f.status == "warn"}
    assert {"database", "backups"} <= warned


def test_an_invalid_configuration_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.yaml"
    cfg.write_text("lis:\n  host: 127.0.0.1\n  port: 99999\n")
    code, findings = _doctor(cfg)
    assert code == 1
    assert findings == [
        {
            "check": "configuration",
            "status": "fail",
            "text": f"{cfg}:3: lis.port: Input should be less than or equal to 65535",
        }
    ]


def test_a_serial_port_that_opens_is_fine() -> None:
    master, slave = os.openpty()
    try:
        finding = _serial_port("chem-1", os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert finding.status == "ok" and "opens read-write" in finding.text
    not_a_tty = _serial_port("chem-1", "/dev/null")
    assert not_a_tty.status == "fail" and "not a serial line" in not_a_tty.text


async def test_a_healthy_gateway_with_its_daemon_running_is_all_good(tmp_path: Path) -> None:
    lis = LisSimulator()
    lis_port = await lis.start()
    api_port = free_port()
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    cfg = config(
        tmp_path / "lab.yaml",
        url,
        api_port=api_port,
        lis_port=lis_port,
        backups=tmp_path / "backups",
        extra=f"""instruments:
  - name: chem-1
    protocol: astm
    transport: {{type: tcp-server, host: 127.0.0.1, port: {free_port()}}}
""",
    )
    Store.open(url).close()
    take_backup(url, tmp_path / "backups", gateway="gw-ops", trigger="daily")
    daemon = Daemon(cfg, api_port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    try:
        code, findings = await asyncio.to_thread(_doctor, cfg)
    finally:
        daemon.stop()
        await lis.close()
    assert code == 0, findings
    assert {f["status"] for f in findings} <= {"ok", "warn"}
    [listening] = [f for f in findings if f["check"] == "listening"]
    assert "the labgate daemon answers" in listening["text"]
