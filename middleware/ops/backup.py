"""Backups of the store (GBUI I-4: a backup of all the data and its settings, at fixed
intervals, each run archived; a restore procedure from the latest one).

One backup is two files in the backup folder, named after the gateway and the UTC time:

    labgate-<gateway>-20250114T023000Z.sqlite   the SQLite store, one self-contained file, or
    labgate-<gateway>-20250114T023000Z.pgdump   pg_dump's custom format for PostgreSQL
    labgate-<gateway>-20250114T023000Z.json     its manifest: when, which schema revision,
                                                rows per table, SHA-256, the configuration

The data file is written under a temporary name and renamed when complete, and the manifest is
written last, so a backup with a manifest is a whole one. Both copies are consistent snapshots
taken while the daemon keeps working: SQLite's online backup API copies the database in one
step (WAL lets the daemon commit meanwhile), and pg_dump reads under a snapshot exported from a
transaction that also counts the rows, so the manifest describes exactly what was dumped.

Rotation keeps the newest `keep` backups of this gateway and deletes older ones; a copy taken
just before a restore (`...-pre-restore`) is never rotated away.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url

from middleware.store import migrate

__all__ = [
    "Abort",
    "Backend",
    "Backup",
    "BackupError",
    "backend_of",
    "list_backups",
    "newest_backup",
    "postgres_target",
    "redact",
    "rotate",
    "run_in_thread",
    "sqlite_path",
    "take_backup",
    "tool",
    "verify",
]

Backend = Literal["sqlite", "postgresql"]
T = TypeVar("T")

FORMAT = "labgate-backup/1"
SUFFIX: dict[Backend, str] = {"sqlite": ".sqlite", "postgresql": ".pgdump"}
_STAMP = "%Y%m%dT%H%M%SZ"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PGDUMP_MAGIC = b"PGDMP"


class BackupError(Exception):
    """A backup could not be taken, or a file is not a backup this labgate can restore."""


@dataclass(frozen=True, slots=True)
class Backup:
    """A backup on disk (or a file offered for restoring) and what is known of it."""

    path: Path
    backend: Backend
    created_at: datetime
    revision: str | None
    tables: dict[str, int]
    sha256: str
    size: int
    manifest: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return self.path.with_suffix(".json")


class Abort:
    """Stops a backup in progress from another thread (the daemon stopping)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.requested = False

    def on_abort(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if not self.requested:
                self._hooks.append(hook)
                return
        hook()

    def abort(self) -> None:
        with self._lock:
            self.requested = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            with contextlib.suppress(Exception):
                hook()

    def check(self) -> None:
        if self.requested:
            raise BackupError("stopped before it was complete")


async def run_in_thread(work: Callable[[], T], abort: Abort) -> T:
    """Run `work` on a daemon thread of its own: unlike `asyncio.to_thread`, a long backup
    never delays the daemon's exit (a cancelled one is abandoned, and leaves no backup)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=target, name="labgate-backup", daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        abort.abort()
        raise


# --- where things are ---------------------------------------------------------------------


def backend_of(url: str) -> Backend:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///` URL (relative to the working directory, as the daemon
    opens it)."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url}: not a database file")
    return Path(database)


def postgres_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for the command-line tools, and the environment carrying the password
    (never on a command line, where `ps` would show it)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    uri = parsed.set(drivername="postgresql", password=None)
    return uri.render_as_string(hide_password=False), env


def tool(name: str, pg_bin: str = "") -> str:
    """The path of a PostgreSQL client program: in `pg_bin` when given, else the newest
    Debian/Ubuntu server's folder (what scripts/postgres.sh starts), else PATH."""
    if pg_bin:
        candidate = Path(pg_bin) / name
        if not os.access(candidate, os.X_OK):
            raise BackupError(f"{candidate}: no such program (backup.pg_bin)")
        return str(candidate)

    def major(folder: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(folder).parent.name))

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client programs")
    return found


def redact(value: Any) -> Any:
    """`value` (a configuration dump) with passwords in URLs masked."""
    if isinstance(value, str):
        return re.sub(r"(://[^/:@\s]+:)[^@/\s]+@", r"\1***@", value)
    if isinstance(value, Mapping):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _labgate_version() -> str:
    try:
        return version("labgate")
    except PackageNotFoundError:
        return "0+unknown"


def _safe_name(gateway: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", gateway) or "labgate"


def _pattern(gateway: str, backend: Backend | None = None) -> re.Pattern[str]:
    suffixes = [SUFFIX[backend]] if backend else list(SUFFIX.values())
    alternatives = "|".join(re.escape(s) for s in suffixes)
    return re.compile(
        rf"^labgate-{re.escape(_safe_name(gateway))}-(\d{{8}}T\d{{6}}Z)(?:-\d+)?({alternatives})$"
    )


def list_backups(directory: Path, gateway: str) -> list[Path]:
    """This gateway's complete backups in `directory` (those with a manifest), oldest first."""
    if not directory.is_dir():
        return []
    pattern = _pattern(gateway)
    found = [
        path
        for path in directory.iterdir()
        if pattern.match(path.name) and path.with_suffix(".json").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def newest_backup(directory: Path, gateway: str) -> Backup | None:
    """The newest complete backup of this gateway, read from its manifest (no checksum)."""
    for path in reversed(list_backups(directory, gateway)):
        with contextlib.suppress(BackupError):
            return _from_manifest(path)
    return None


def rotate(directory: Path, gateway: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups of this gateway; returns what was deleted.
    Temporary files of backups that never completed go too, once a day old."""
    backups = list_backups(directory, gateway)
    removed: list[Path] = []
    for path in backups[: max(0, len(backups) - keep)]:
        for victim in (path.with_suffix(".json"), path):  # manifest first: never half a backup
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
        removed.append(path)
    prefix = f"labgate-{_safe_name(gateway)}-"
    for partial in directory.glob(f".{prefix}*.partial"):
        with contextlib.suppress(OSError):
            if time.time() - partial.stat().st_mtime > 86_400:
                partial.unlink()
    return removed


# --- taking a backup ------------------------------------------------------------------------


def take_backup(
    url: str,
    directory: Path,
    *,
    gateway: str,
    trigger: str,
    configuration: Mapping[str, Any] | None = None,
    keep: int | None = None,
    pg_bin: str = "",
    label: str = "",
    abort: Abort | None = None,
    now: datetime | None = None,
) -> Backup:
    """Back the store at `url` up into `directory` and rotate (when `keep` is given).
    `trigger` (daily, command, pre-restore) and `configuration` (the settings in force,
    passwords masked) go into the manifest; `label` is added to the name (pre-restore)."""
    abort = abort or Abort()
    backend = backend_of(url)
    directory = directory.absolute()
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {directory}: {exc.strerror}") from None
    stem = f"labgate-{_safe_name(gateway)}-{created.strftime(_STAMP)}"
    final = directory / f"{stem}{'-' + label if label else ''}{SUFFIX[backend]}"
    counter = 1
    while final.exists() or final.with_suffix(".json").exists():
        counter += 1
        final = directory / f"{stem}-{counter}{'-' + label if label else ''}{SUFFIX[backend]}"
    partial = directory / f".{final.name}.{os.getpid()}.partial"
    try:
        if backend == "sqlite":
            revision, tables = _copy_sqlite(sqlite_path(url), partial, abort)
        else:
            revision, tables = _dump_postgres(url, partial, pg_bin, abort)
        _fsync(partial)
        abort.check()
        digest, size = _digest(partial)
        partial.rename(final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    manifest = {
        "format": FORMAT,
        "file": final.name,
        "created_at": created.isoformat(),
        "gateway": gateway,
        "labgate_version": _labgate_version(),
        "backend": backend,
        "source": redact(url),
        "revision": revision,
        "tables": tables,
        "sha256": digest,
        "size": size,
        "trigger": trigger,
        "configuration": redact(dict(configuration)) if configuration is not None else None,
    }
    manifest_path = final.with_suffix(".json")
    written = manifest_path.with_name(f".{manifest_path.name}.partial")
    written.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    _fsync(written)
    written.rename(manifest_path)
    _fsync_directory(directory)
    if keep is not None:
        rotate(directory, gateway, keep)
    return Backup(final, backend, created, revision, tables, digest, size, manifest)


def _copy_sqlite(source: Path, target: Path, abort: Abort) -> tuple[str | None, dict[str, int]]:
    if not source.is_file():
        raise BackupError(f"no SQLite store at {source}")
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(target)
            try:
                # One step: a consistent snapshot under one read transaction. Stepping page by
                # page would restart at every commit the daemon makes meanwhile.
                src.backup(dst)
                abort.check()
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                (verdict,) = dst.execute("PRAGMA integrity_check").fetchone()
                if verdict != "ok":
                    raise BackupError(f"the copy fails SQLite's integrity check: {verdict}")
                return _sqlite_contents(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from None


def _sqlite_contents(db: sqlite3.Connection) -> tuple[str | None, dict[str, int]]:
    names = [
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    tables = {
        name: int(db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]) for name in names
    }
    revision = None
    if "alembic_version" in tables:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return revision, tables


def _postgres_contents(connection: Connection) -> tuple[str | None, dict[str, int]]:
    names = sorted(inspect(connection).get_table_names())
    tables = {
        name: int(connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one())
        for name in names
    }
    revision = None
    if "alembic_version" in tables:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return revision, tables


def _dump_postgres(
    url: str, target: Path, pg_bin: str, abort: Abort
) -> tuple[str | None, dict[str, int]]:
    pg_dump = tool("pg_dump", pg_bin)
    uri, env = postgres_target(url)
    engine = create_engine(url, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as connection:
            # pg_dump reads under this transaction's snapshot, so the row counts taken here
            # describe exactly what it dumps, whatever the daemon commits meanwhile.
            connection.execute(text("SET TRANSACTION READ ONLY"))
            snapshot = connection.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            revision, tables = _postgres_contents(connection)
            run(
                [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--file={target}",
                    f"--dbname={uri}",
                ],
                env,
                abort,
            )
            connection.rollback()
    except BackupError:
        raise
    except Exception as exc:  # SQLAlchemy/psycopg: the server refused or is down
        raise BackupError(f"PostgreSQL backup failed: {exc}") from None
    finally:
        engine.dispose()
    return revision, tables


def run(command: list[str], env: Mapping[str, str], abort: Abort) -> str:
    """Run a PostgreSQL tool; its standard output, or a BackupError with what it said."""
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
        )
    except OSError as exc:
        raise BackupError(f"cannot run {command[0]}: {exc.strerror}") from None
    abort.on_abort(process.terminate)
    out, err = process.communicate()
    abort.check()
    if process.returncode != 0:
        said = err.decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise BackupError(f"{Path(command[0]).name} failed: {said}")
    return out.decode(errors="replace")


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync(path: Path) -> None:
    with path.open("rb+") as data:
        os.fsync(data.fileno())


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- checking a file before restoring it --------------------------------------------------


def _from_manifest(path: Path) -> Backup:
    manifest_path = path.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
        return Backup(
            path,
            manifest["backend"],
            datetime.fromisoformat(manifest["created_at"]),
            manifest.get("revision"),
            {str(k): int(v) for k, v in manifest.get("tables", {}).items()},
            manifest["sha256"],
            int(manifest["size"]),
            manifest,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{manifest_path}: not a readable backup manifest ({exc})") from None


def verify(path: Path, pg_bin: str = "") -> Backup:
    """Check that `path` is a whole backup this labgate can restore: its checksum against its
    manifest (when the manifest is beside it), the file itself (SQLite's integrity check, or
    pg_restore reading the archive's table of contents), and a schema revision this labgate
    knows. Returns what it holds; raises BackupError saying what is wrong."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    with path.open("rb") as data:
        head = data.read(len(_SQLITE_MAGIC))
    backend: Backend
    if head.startswith(_SQLITE_MAGIC):
        backend = "sqlite"
    elif head.startswith(_PGDUMP_MAGIC):
        backend = "postgresql"
    else:
        raise BackupError(f"{path}: neither a SQLite database nor a pg_dump archive")
    manifest: dict[str, Any] = {}
    digest, size = _digest(path)
    if path.with_suffix(".json").is_file():
        described = _from_manifest(path)
        if described.sha256 != digest or described.size != size:
            raise BackupError(
                f"{path}: its SHA-256 or size differs from its manifest's: the file was "
                "altered or truncated after the backup"
            )
        manifest = described.manifest
    if backend == "sqlite":
        revision, tables = _check_sqlite(path)
    else:
        revision = _check_pgdump(path, pg_bin)
        tables = {str(k): int(v) for k, v in manifest.get("tables", {}).items()}
    known = _known_revisions()
    if revision is None:
        raise BackupError(f"{path}: holds no labgate schema (no Alembic revision)")
    if revision not in known:
        raise BackupError(
            f"{path}: schema revision {revision!r} is unknown to this labgate (a newer one "
            "wrote it): restore it with that version"
        )
    created = (
        datetime.fromisoformat(manifest["created_at"])
        if "created_at" in manifest
        else datetime.fromtimestamp(path.stat().st_mtime, UTC)
    )
    return Backup(path, backend, created, revision, tables, digest, size, manifest)


def _check_sqlite(path: Path) -> tuple[str | None, dict[str, int]]:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
            if verdict != "ok":
                raise BackupError(f"{path}: fails SQLite's integrity check: {verdict}")
            return _sqlite_contents(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: unreadable SQLite database: {exc}") from None


def _check_pgdump(path: Path, pg_bin: str) -> str | None:
    pg_restore = tool("pg_restore", pg_bin)
    run([pg_restore, "--list", str(path)], os.environ, Abort())
    # The revision, read from the archive's own data for the alembic_version table.
    data = run(
        [pg_restore, "--data-only", "--table=alembic_version", "--file=-", str(path)],
        os.environ,
        Abort(),
    )
    lines = data.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("COPY ") and "alembic_version" in line and index + 1 < len(lines):
            value = lines[index + 1].strip()
            return None if value == "\\." else value
    return None


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    return {revision.revision for revision in script.walk_revisions()}
