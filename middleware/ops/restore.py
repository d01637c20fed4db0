"""Restoring the store from a backup (GBUI I-3 and I-4).

    refuse while the daemon answers      it would be writing into the store being replaced
    check the file                       checksum, integrity, a schema revision we know
    copy the current store aside         `...-pre-restore`: a wrong restore can be undone
    replace the store's contents         SQLite backup API into the store file (under its
                                         lock), or pg_restore's SQL run by psql in ONE
                                         transaction after dropping the tables
    migrate to the newest schema         a backup from an older labgate is brought up to date
    carry the audit trail over           audit rows written after the backup are put back:
                                         who did what is never rolled back with the data
    audit                                who, when, which file, and which messages the store
                                         held that the backup does not (they came after it)

The messages received after the backup are named because GBUI I-4 requires that everything
recorded since the last backup be recorded again: they are in the pre-restore copy.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from middleware.config.settings import ApiSettings, Settings
from middleware.ops import audit
from middleware.ops.backup import (
    Backup,
    BackupError,
    backend_of,
    postgres_target,
    sqlite_path,
    take_backup,
    tool,
    verify,
)
from middleware.store import Store, migrate
from middleware.store.tables import AuditRow, MessageRow
from middleware.store.times import utc

__all__ = ["RestoreRefused", "Restored", "daemon_answering", "restore"]

# Messages received this long before the backup are checked too: one received just before
# the snapshot may have been committed just after it.
_MARGIN = timedelta(minutes=5)
_LISTED = 1000  # message ids named in the audit row (all of them are in the pre-restore copy)


class RestoreRefused(Exception):
    """Nothing was changed: the reason says why."""


@dataclass(frozen=True, slots=True)
class Restored:
    backup: Backup
    safety_copy: Path | None
    revision: str | None
    tables: dict[str, int]
    missing_messages: list[str]


def daemon_answering(api: ApiSettings, timeout: float = 2.0) -> str | None:
    """The API address when a labgate daemon answers there, else None."""
    if api.port == 0:
        return None
    url = api.local_url
    if api.tls is not None:
        # Over TLS the handshake may be refused (a client certificate required) by a daemon
        # that is running all the same: whatever accepts connections there counts.
        host = "127.0.0.1" if api.host in {"0.0.0.0", "", "::"} else api.host
        try:
            socket.create_connection((host, api.port), timeout=timeout).close()
        except OSError:
            return None
        return url
    try:
        httpx.get(f"{url}/api/health", timeout=timeout)
    except httpx.HTTPError:
        return None
    return url


def restore(
    settings: Settings,
    path: Path,
    *,
    author: str,
    reason: str = "",
    safety_directory: Path | None = None,
) -> Restored:
    """Replace the configured store's contents with the backup at `path` (see the module)."""
    path = path.absolute()
    url = settings.store.url
    pg_bin = settings.backup.pg_bin if settings.backup else ""
    running = daemon_answering(settings.api)
    if running is not None:
        raise RestoreRefused(
            f"a labgate daemon answers at {running}: stop it first (systemctl stop labgate); "
            "restoring under it would lose what it writes"
        )
    try:
        backup = verify(path, pg_bin)
    except BackupError as exc:
        raise RestoreRefused(str(exc)) from None
    backend = backend_of(url)
    if backup.backend != backend:
        raise RestoreRefused(f"{path} is a {backup.backend} backup; the store is {backend}")
    candidates = _messages_since(url, backup)
    audit_since = _audit_since(url, backup)
    safety_copy = None
    if _store_exists(url):
        folder = safety_directory or (
            Path(settings.backup.directory) if settings.backup else path.parent
        )
        try:
            safety_copy = take_backup(
                url,
                folder,
                gateway=settings.gateway,
                trigger="pre-restore",
                label="pre-restore",
                pg_bin=pg_bin,
            ).path
        except BackupError as exc:
            raise RestoreRefused(f"the current store could not be copied aside: {exc}") from None
    if backend == "sqlite":
        _restore_sqlite(path, sqlite_path(url))
    else:
        _restore_postgres(path, url, pg_bin)
    store = Store.open(url)  # migrates to the newest schema
    try:
        revision = migrate.current_revision(store.engine)
        with store.engine.connect() as connection:
            present = set(
                connection.scalars(
                    select(MessageRow.message_id).where(MessageRow.message_id.in_(candidates))
                )
            )
        missing = [m for m in candidates if m not in present]
        carried = _carry_audit(store, audit_since)
        tables = _counts(store)
        audit.record(
            store.engine,
            author,
            "store_restored",
            path.name,
            {
                "file": str(path),
                "sha256": backup.sha256,
                "backup_created_at": backup.created_at.isoformat(),
                "backup_revision": backup.revision,
                "revision": revision,
                "reason": reason,
                "safety_copy": str(safety_copy) if safety_copy else None,
                "tables": tables,
                "audit_rows_carried_over": carried,
                "messages_not_in_backup": len(missing),
                "message_ids": missing[:_LISTED],
            },
        )
    finally:
        store.close()
    return Restored(backup, safety_copy, revision, tables, missing)


def _store_exists(url: str) -> bool:
    if backend_of(url) == "sqlite":
        return sqlite_path(url).is_file()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return bool(inspect(connection).get_table_names())
    except SQLAlchemyError as exc:
        raise RestoreRefused(f"the store cannot be reached: {exc}") from None
    finally:
        engine.dispose()


def _messages_since(url: str, backup: Backup) -> list[str]:
    """Ids of the messages the current store received from shortly before the backup on."""
    if backend_of(url) == "sqlite" and not sqlite_path(url).is_file():
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if "messages" not in inspect(connection).get_table_names():
                return []
            return list(
                connection.scalars(
                    select(MessageRow.message_id)
                    .where(MessageRow.received_at >= backup.created_at - _MARGIN)
                    .order_by(MessageRow.received_at)
                )
            )
    except SQLAlchemyError as exc:
        raise RestoreRefused(f"the store cannot be read: {exc}") from None
    finally:
        engine.dispose()


_AuditKey = tuple[datetime, str, str, str]


def _audit_since(url: str, backup: Backup) -> list[dict[str, Any]]:
    """The audit rows the current store holds from shortly before the backup on."""
    if backend_of(url) == "sqlite" and not sqlite_path(url).is_file():
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if "audit" not in inspect(connection).get_table_names():
                return []
            a = AuditRow
            rows = connection.execute(
                select(a.at, a.actor, a.action, a.subject, a.detail)
                .where(a.at >= backup.created_at - _MARGIN)
                .order_by(a.at, a.id)
            ).all()
            return [dict(row._mapping) for row in rows]
    except SQLAlchemyError as exc:
        raise RestoreRefused(f"the store cannot be read: {exc}") from None
    finally:
        engine.dispose()


def _key(row: Mapping[Any, Any]) -> _AuditKey:
    return (utc(row["at"]) or row["at"], row["actor"], row["action"], row["subject"])


def _carry_audit(store: Store, rows: list[dict[str, Any]]) -> int:
    """Put back the audit rows written after the backup (the record of the backup itself,
    actions taken since): the trail of who did what is never rolled back with the data."""
    if not rows:
        return 0
    a = AuditRow
    earliest = min(utc(row["at"]) or row["at"] for row in rows)
    with store.engine.begin() as connection:
        present = {
            _key(row._mapping)
            for row in connection.execute(
                select(a.at, a.actor, a.action, a.subject).where(a.at >= earliest)
            )
        }
        missing = [row for row in rows if _key(row) not in present]
        if missing:
            connection.execute(insert(AuditRow), missing)
    return len(missing)


def _counts(store: Store) -> dict[str, int]:
    from sqlalchemy import func, table

    counts: dict[str, int] = {}
    with store.engine.connect() as connection:
        for name in sorted(inspect(connection).get_table_names()):
            counts[name] = int(
                connection.execute(select(func.count()).select_from(table(name))).scalar_one()
            )
    return counts


def _restore_sqlite(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro&immutable=1", uri=True)
        try:
            dst = sqlite3.connect(target, timeout=30)
            try:
                # Through SQLite rather than a file copy: it takes the store's write lock, and
                # the store's WAL (if one was left) cannot replay stale pages over the result.
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise RestoreRefused(f"SQLite restore into {target} failed: {exc}") from None


def _restore_postgres(path: Path, url: str, pg_bin: str) -> None:
    """Drop the store's tables and recreate them from the archive, all in one transaction:
    either the backup's contents are there afterwards, or the store is as it was."""
    pg_restore, psql = tool("pg_restore", pg_bin), tool("psql", pg_bin)
    uri, env = postgres_target(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
    finally:
        engine.dispose()
    drops = "".join(f'DROP TABLE IF EXISTS "{name}" CASCADE;\n' for name in tables)
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        producer = subprocess.Popen(
            [pg_restore, "--no-owner", "--no-privileges", "--file=-", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=restore_err,
            env=env,
        )
        consumer = subprocess.Popen(
            [
                psql,
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                f"--dbname={uri}",
                "--file=-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_err,
            env=env,
        )
        assert producer.stdout is not None and consumer.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # psql stopped on an error: said below
            consumer.stdin.write(drops.encode())
            shutil.copyfileobj(producer.stdout, consumer.stdin, 1 << 20)
        with contextlib.suppress(BrokenPipeError):
            consumer.stdin.close()
        producer.stdout.close()
        produced, consumed = producer.wait(), consumer.wait()
        errors: list[str] = []
        outcomes = ((produced, restore_err, "pg_restore"), (consumed, psql_err, "psql"))
        for code, stream, name in outcomes:
            if code != 0:
                stream.seek(0)
                said = stream.read().decode(errors="replace").strip()
                errors.append(f"{name}: {said or f'exit status {code}'}")
        if errors:
            raise RestoreRefused(
                "PostgreSQL restore failed and was rolled back, the store is unchanged: "
                + "; ".join(errors)
            )
