"""`labgate doctor`: what a technician runs first when something is wrong on a gateway.

Each check says what it looked at and what it found, and a problem says what to do about it:

    configuration   the file is valid (else every problem with its file, line and field)
    serial          each serial port is there, is a terminal, and opens read-write for this user
    database        reachable, writable, at the newest migration
    clock           not before the newest thing stored (a clock that went back breaks the
                    trace's order and the delta checks' "previous result")
    disk            free space where the store and the backups are written
    peers           the LIS (and analysers labgate connects to) accept a TCP connection
    listening       the API and analyser ports are free, or held by the labgate daemon itself
    backups         an automatic backup is configured, and the newest one is recent

A finding is `ok`, `warn` (worth knowing, not wrong) or `fail`. Run it as the service's user
(`sudo -u labgate labgate doctor ...`): permissions are that user's.
"""

from __future__ import annotations

import errno
import glob
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
from sqlalchemy import column as column_clause
from sqlalchemy import create_engine, func, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

from middleware.config import ConfigError, Settings, load_settings
from middleware.config.settings import (
    ApiSettings,
    Hl7InstrumentSettings,
    SerialTransport,
    TcpClientTransport,
    TcpServerTransport,
)
from middleware.ops.backup import BackupError, backend_of, newest_backup, sqlite_path, tool
from middleware.store import migrate

__all__ = ["Finding", "diagnose"]

Status = Literal["ok", "warn", "fail"]

GIB = 1 << 30
MIN_FREE_BYTES = 1 * GIB
MIN_FREE_SHARE = 0.05  # below: fail
LOW_FREE_SHARE = 0.10  # below: warn
BACKUP_STALE = timedelta(hours=26)  # a daily backup missed
CLOCK_TOLERANCE = timedelta(seconds=60)
_EARLIEST_SANE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    text: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "text": self.text}


def diagnose(
    config: str | Path,
    *,
    timeout: float = 3.0,
    min_free_bytes: int = MIN_FREE_BYTES,
    now: datetime | None = None,
) -> list[Finding]:
    """Every check, in the order a technician would want them."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        return [Finding("configuration", "fail", str(problem)) for problem in exc.problems]
    findings = [
        Finding(
            "configuration",
            "ok",
            f"{config}: valid ({len(settings.instruments)} instrument(s), "
            f"LIS {settings.lis.name!r} at {settings.lis.host}:{settings.lis.port})",
        )
    ]
    findings += _serial_ports(settings)
    database, newest = _database(settings, timeout)
    findings += database
    findings += _clock(newest, now or datetime.now(UTC))
    findings += _disk(settings, min_free_bytes)
    findings += _peers(settings, timeout)
    findings += _listening(settings, timeout)
    findings += _backups(settings, now or datetime.now(UTC))
    return findings


# --- serial ports --------------------------------------------------------------------------


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _owner(info: os.stat_result) -> tuple[str, str]:
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return owner, group


def _serial_ports(settings: Settings) -> Iterator[Finding]:
    for instrument in settings.instruments:
        transport = instrument.transport
        if isinstance(transport, SerialTransport):
            yield _serial_port(instrument.name, transport.port)


def _serial_port(name: str, port: str) -> Finding:
    path = Path(port)
    if not path.exists():
        patterns = ("/dev/serial/by-id/*", "/dev/ttyUSB*", "/dev/ttyACM*")
        present = sorted({found for pattern in patterns for found in glob.glob(pattern)})
        hint = (
            f"present: {', '.join(present)}"
            if present
            else "no USB serial adapter is plugged in; check the cable and `dmesg`"
        )
        return Finding("serial", "fail", f"{name}: {port} is not present ({hint})")
    info = path.stat()
    owner, group = _owner(info)
    mode = f"{stat.filemode(info.st_mode)} {owner}:{group}"
    if not stat.S_ISCHR(info.st_mode):
        return Finding("serial", "fail", f"{name}: {port} is not a serial device ({mode})")
    user = _user()
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except PermissionError:
        return Finding(
            "serial",
            "fail",
            f"{name}: {port}: permission denied for {user} ({mode}); add {user} to group "
            f"{group} (usermod -aG {group} {user}) and restart labgate",
        )
    except OSError as exc:
        busy = " (another program holds it?)" if exc.errno == errno.EBUSY else ""
        return Finding("serial", "fail", f"{name}: {port}: cannot open: {exc.strerror}{busy}")
    try:
        termios.tcgetattr(fd)
    except termios.error:
        return Finding("serial", "fail", f"{name}: {port} opens but is not a serial line")
    finally:
        os.close(fd)
    return Finding("serial", "ok", f"{name}: {port} opens read-write for {user} ({mode})")


# --- database and clock ----------------------------------------------------------------------


def _database(settings: Settings, timeout: float) -> tuple[list[Finding], datetime | None]:
    url = settings.store.url
    findings: list[Finding] = []
    connect_args: dict[str, Any]
    if backend_of(url) == "sqlite":
        path = sqlite_path(url)
        where = str(path)
        folder = path.parent if str(path.parent) else Path(".")
        if not path.exists():
            if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
                return [
                    Finding(
                        "database", "warn", f"no store yet at {path}: labgate creates it at start"
                    )
                ], None
            return [
                Finding(
                    "database",
                    "fail",
                    f"no store at {path}, and {_user()} cannot create it in {folder.resolve()}",
                )
            ], None
        for target, needs in ((path, os.R_OK | os.W_OK), (folder, os.W_OK | os.X_OK)):
            if not os.access(target, needs):
                findings.append(
                    Finding(
                        "database",
                        "fail",
                        f"{target.resolve()} is not writable by {_user()} (SQLite writes the "
                        "store and its -wal file beside it)",
                    )
                )
        connect_args = {"timeout": timeout}
    else:
        where = backend_of(url) + " " + url.rpartition("@")[2]
        connect_args = {"connect_timeout": max(1, int(timeout))}
    engine = create_engine(url, connect_args=connect_args)
    try:
        try:
            current = migrate.current_revision(engine)
            with engine.connect() as connection:
                tables = set(inspect(connection).get_table_names())
                newest = _newest_record(connection, tables)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            findings.append(Finding("database", "fail", f"{where}: cannot be read: {reason}"))
            return findings, None
    finally:
        engine.dispose()
    head = migrate.head_revision()
    known = _known_revisions()
    if current is None:
        if tables:
            findings.append(
                Finding("database", "fail", f"{where}: has tables but no labgate schema revision")
            )
        else:
            findings.append(
                Finding("database", "warn", f"{where}: empty; labgate creates its tables at start")
            )
    elif current == head:
        findings.append(
            Finding("database", "ok", f"{where}: reachable, at the newest migration ({head})")
        )
    elif current in known:
        findings.append(
            Finding(
                "database",
                "fail",
                f"{where}: at migration {current}, this labgate's newest is {head}: start "
                "labgate (it migrates at start) and run the doctor again",
            )
        )
    else:
        findings.append(
            Finding(
                "database",
                "fail",
                f"{where}: at migration {current}, unknown to this labgate (a newer version "
                "wrote it): install that version again",
            )
        )
    return findings, newest


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


def _newest_record(connection: Any, tables: set[str]) -> datetime | None:
    newest: datetime | None = None
    for name, column in (
        ("messages", "received_at"),
        ("trace", "at"),
        ("transmissions", "sent_at"),
        ("audit", "at"),
    ):
        if name not in tables:
            continue
        latest = table(name, column_clause(column)).c[column]
        value = connection.execute(select(func.max(latest))).scalar()
        if isinstance(value, str):  # SQLite: a bare column carries no type to convert with
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime):
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            newest = value if newest is None or value > newest else newest
    return newest


def _clock(newest: datetime | None, now: datetime) -> list[Finding]:
    findings: list[Finding] = []
    shown = f"{now:%Y-%m-%d %H:%M:%S} UTC"
    if now < _EARLIEST_SANE:
        findings.append(Finding("clock", "fail", f"the clock says {shown}: set the time"))
    elif newest is not None and now + CLOCK_TOLERANCE < newest:
        findings.append(
            Finding(
                "clock",
                "fail",
                f"the clock says {shown}, before the newest stored record "
                f"({newest:%Y-%m-%d %H:%M:%S} UTC): it went back; set it right (timedatectl, "
                "NTP) before starting labgate",
            )
        )
    else:
        after = ", after the newest stored record" if newest is not None else ""
        findings.append(Finding("clock", "ok", f"{shown}{after}"))
    synchronised = _ntp_synchronised()
    if synchronised is False:
        findings.append(
            Finding("clock", "warn", "not synchronised by NTP (timedatectl show): it may drift")
        )
    return findings


def _ntp_synchronised() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        answer = subprocess.run(
            ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = answer.stdout.strip()
    return None if answer.returncode != 0 or value not in {"yes", "no"} else value == "yes"


# --- disk ------------------------------------------------------------------------------------


def _existing(folder: Path) -> Path:
    folder = folder.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _disk(settings: Settings, min_free_bytes: int) -> list[Finding]:
    folders: dict[str, Path] = {}
    url = settings.store.url
    if backend_of(url) == "sqlite":
        folders["store"] = sqlite_path(url).parent
    if settings.backup is not None:
        folders["backups"] = Path(settings.backup.directory)
    if not folders:
        folders["working folder"] = Path(".")
    findings = []
    for label, folder in folders.items():
        where = _existing(folder)
        usage = shutil.disk_usage(where)
        share = usage.free / usage.total if usage.total else 0.0
        text = (
            f"{label} {where}: {usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB "
            f"({share:.0%})"
        )
        if usage.free < min_free_bytes or share < MIN_FREE_SHARE:
            findings.append(
                Finding(
                    "disk",
                    "fail",
                    f"{text}: too little (at least {min_free_bytes / GIB:.1f} GiB and "
                    f"{MIN_FREE_SHARE:.0%}); a full disk stops every acknowledgement",
                )
            )
        elif share < LOW_FREE_SHARE:
            findings.append(Finding("disk", "warn", f"{text}: getting low"))
        else:
            findings.append(Finding("disk", "ok", text))
    return findings


# --- the network -----------------------------------------------------------------------------


def _peers(settings: Settings, timeout: float) -> Iterator[Finding]:
    lis = settings.lis
    yield _connect("peers", f"LIS {lis.name!r}", lis.host, lis.port, timeout)
    for instrument in settings.instruments:
        transport = instrument.transport
        if isinstance(transport, TcpClientTransport):
            yield _connect(
                "peers", f"analyser {instrument.name!r}", transport.host, transport.port, timeout
            )
        if isinstance(instrument, Hl7InstrumentSettings) and instrument.orders is not None:
            orders = instrument.orders
            if orders.connection == "order-port" and orders.port is not None:
                yield _connect(
                    "peers",
                    f"order port of {instrument.name!r}",
                    orders.host,
                    orders.port,
                    timeout,
                )


def _connect(check: str, label: str, host: str, port: int, timeout: float) -> Finding:
    where = f"{label} at {host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        return Finding(
            check, "fail", f"{where}: no answer within {timeout:g} s (firewall, wrong address?)"
        )
    except socket.gaierror as exc:
        return Finding(check, "fail", f"{where}: unknown host ({exc.strerror})")
    except OSError as exc:
        hint = (
            " (nothing listens there: is its interface started?)"
            if exc.errno == errno.ECONNREFUSED
            else ""
        )
        return Finding(check, "fail", f"{where}: {exc.strerror or exc}{hint}")
    return Finding(check, "ok", f"{where} accepts connections")


def _probe_api(api: ApiSettings, timeout: float) -> tuple[str, dict[str, Any] | None]:
    """('labgate', health) when our daemon answers, ('other', None) when something else
    does, ('none', None) when nothing does."""
    url = f"{api.local_url}/api/health"
    try:
        # Health only (no patient data, nothing sent): the certificate is not the question.
        response = httpx.get(url, timeout=timeout, verify=api.tls is None)
    except httpx.HTTPError:
        return "none", None
    try:
        health = response.json()
    except ValueError:
        return "other", None
    if isinstance(health, dict) and {"gateway", "status", "version"} <= health.keys():
        return "labgate", health
    return "other", None


def _listening(settings: Settings, timeout: float) -> list[Finding]:
    api = settings.api
    ports: list[tuple[str, str, int]] = []
    if api.port:
        ports.append(("API", api.host, api.port))
    for instrument in settings.instruments:
        if isinstance(instrument.transport, TcpServerTransport) and instrument.transport.port:
            transport = instrument.transport
            ports.append((f"analyser {instrument.name!r}", transport.host, transport.port))
    if settings.lis.orders is not None and settings.lis.orders.port:
        orders = settings.lis.orders
        ports.append(("LIS orders", orders.host, orders.port))
    if api.port:
        kind, health = _probe_api(api, timeout)
        if kind == "labgate" and health is not None:
            return [
                Finding(
                    "listening",
                    "ok",
                    f"the labgate daemon answers at {api.host}:{api.port} ({health['status']}, "
                    f"version {health['version']}); it holds its {len(ports)} port(s)",
                )
            ]
        if kind == "other":
            return [
                Finding(
                    "listening",
                    "fail",
                    f"API {api.host}:{api.port}: another program answers HTTP there",
                ),
                *(_free("listening", *p) for p in ports[1:]),
            ]
    return [_free("listening", *p) for p in ports]


def _free(check: str, label: str, host: str, port: int) -> Finding:
    where = f"{label} {host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            text = f"{where}: in use by another program, and no labgate daemon answers (ss -ltnp)"
        elif exc.errno == errno.EACCES:
            text = (
                f"{where}: not permitted to listen below 1024 (use a higher port, or "
                "AmbientCapabilities=CAP_NET_BIND_SERVICE in the unit)"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            text = f"{where}: {host} is not an address of this machine"
        else:
            text = f"{where}: cannot listen: {exc.strerror or exc}"
        return Finding(check, "fail", text)
    return Finding(check, "ok", f"{where} is free")


# --- backups ---------------------------------------------------------------------------------


def _backups(settings: Settings, now: datetime) -> list[Finding]:
    backup = settings.backup
    if backup is None:
        return [
            Finding(
                "backups",
                "warn",
                "no automatic backup configured (GBUI I-4 asks for one a day): add a "
                "`backup:` section",
            )
        ]
    findings = []
    folder = Path(backup.directory)
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        findings.append(Finding("backups", "fail", f"{folder} is not writable by {_user()}"))
    if backend_of(settings.store.url) == "postgresql":
        try:
            findings.append(Finding("backups", "ok", f"pg_dump: {tool('pg_dump', backup.pg_bin)}"))
        except BackupError as exc:
            findings.append(Finding("backups", "fail", str(exc)))
    newest = newest_backup(folder, settings.gateway)
    if newest is None:
        findings.append(
            Finding("backups", "warn", f"no backup yet in {folder} (the daemon takes one at start)")
        )
        return findings
    age = now - newest.created_at
    hours = age.total_seconds() / 3600
    text = f"newest {newest.path.name}, {hours:.1f} h old, daily at {backup.at}"
    if age > BACKUP_STALE:
        findings.append(
            Finding(
                "backups",
                "fail",
                f"{text}: the daily backup is not happening (journalctl -u labgate | grep backup)",
            )
        )
    else:
        findings.append(Finding("backups", "ok", text))
    return findings
