"""`labgate` commands for running a gateway (issue 10):

    labgate backup [--config F] [--to DIR] [--keep N] [--author NAME]
    labgate restore FILE --author NAME [--reason TEXT] [--config F]
    labgate export results|trace|audit --since ISO --until ISO [--format csv|jsonl]
                   [--output F] [--raw] [--author NAME] [--config F]
    labgate doctor [--config F] [--json]

Backups, restores and exports are recorded in the audit table (GBUI I-3, I-4, IX) and logged as
one JSON line on standard error; their results are printed on standard output (an export with
no --output is the data itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from middleware.cli_support import DEFAULT_CONFIG, required_text
from middleware.config import ConfigError, Settings, load_settings

__all__ = ["add_commands"]


def _logger() -> Any:
    """Log lines of these commands: JSON on standard error (standard output may carry data),
    without touching the process's structlog configuration."""
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    ).bind(logger="labgate.ops")


def _settings(path: str) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"labgate: configuration refused ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date or time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _audit(url: str, actor: str, action: str, subject: str, detail: dict[str, Any]) -> bool:
    from middleware.ops import audit
    from middleware.ops.backup import backend_of, sqlite_path

    if backend_of(url) == "sqlite" and not sqlite_path(url).is_file():
        return False  # no store to record into (connecting would create an empty one)
    engine = create_engine(url)
    try:
        audit.record(engine, actor, action, subject, detail)
    except SQLAlchemyError as exc:
        print(f"labgate: could not record it in the audit trail: {exc}", file=sys.stderr)
        return False
    finally:
        engine.dispose()
    return True


# --- backup ----------------------------------------------------------------------------------


def _backup(args: argparse.Namespace) -> int:
    from middleware.ops.backup import BackupError, take_backup
    from middleware.ops.daily import describe

    settings = _settings(args.config)
    if settings is None:
        return 2
    configured = settings.backup
    if args.to is None and configured is None:
        print(
            "labgate: where to? give --to DIR, or a `backup:` section in the configuration",
            file=sys.stderr,
        )
        return 2
    directory = Path(args.to) if args.to else Path(configured.directory)  # type: ignore[union-attr]
    keep = args.keep
    if keep is None and configured is not None and args.to is None:
        keep = configured.keep  # rotation applies to the configured folder; --to keeps all
    url = settings.store.url
    log = _logger()
    started = time.monotonic()
    try:
        backup = take_backup(
            url,
            directory,
            gateway=settings.gateway,
            trigger="command",
            configuration=settings.model_dump(mode="json"),
            keep=keep,
            pg_bin=configured.pg_bin if configured else "",
        )
    except (BackupError, OSError) as exc:
        log.error("backup_failed", trigger="command", directory=str(directory), error=str(exc))
        _audit(
            url,
            args.author,
            "store_backup_failed",
            str(directory),
            {"trigger": "command", "error": str(exc)},
        )
        print(f"labgate: backup failed: {exc}", file=sys.stderr)
        return 1
    log.info(
        "backup_done",
        trigger="command",
        file=str(backup.path),
        size=backup.size,
        revision=backup.revision,
        seconds=round(time.monotonic() - started, 3),
    )
    _audit(url, args.author, "store_backup", backup.path.name, describe(backup, "command"))
    rows = sum(backup.tables.values())
    print(f"{backup.path}  ({backup.size} bytes, {rows} row(s), schema {backup.revision})")
    print(f"sha256 {backup.sha256}")
    return 0


# --- restore ---------------------------------------------------------------------------------


def _restore(args: argparse.Namespace) -> int:
    from middleware.ops.restore import RestoreRefused, restore

    settings = _settings(args.config)
    if settings is None:
        return 2
    log = _logger()
    try:
        restored = restore(settings, Path(args.file), author=args.author, reason=args.reason)
    except RestoreRefused as exc:
        log.error("restore_refused", file=args.file, error=str(exc))
        print(f"labgate: restore refused: {exc}", file=sys.stderr)
        return 1
    backup = restored.backup
    log.info(
        "store_restored",
        file=str(backup.path),
        author=args.author,
        backup_created_at=backup.created_at.isoformat(),
        revision=restored.revision,
        safety_copy=str(restored.safety_copy) if restored.safety_copy else None,
        messages_not_in_backup=len(restored.missing_messages),
    )
    print(
        f"restored {backup.path} (taken {backup.created_at:%Y-%m-%d %H:%M:%S} UTC, schema "
        f"{backup.revision}, now {restored.revision})"
    )
    if restored.safety_copy is not None:
        print(f"the store as it was before: {restored.safety_copy}")
    missing = restored.missing_messages
    if missing:
        print(
            f"{len(missing)} message(s) received after the backup are not in the restored store "
            "(GBUI I-4: they must be recorded again; they are in the copy above):"
        )
        for message_id in missing[:20]:
            print(f"  {message_id}")
        if len(missing) > 20:
            print(f"  ... and {len(missing) - 20} more (all listed in `labgate audit`)")
    return 0


# --- export ----------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from middleware.ops.backup import backend_of, sqlite_path
    from middleware.ops.export import export

    settings = _settings(args.config)
    if settings is None:
        return 2
    if args.until <= args.since:
        print("labgate: --until must come after --since", file=sys.stderr)
        return 2
    url = settings.store.url
    if backend_of(url) == "sqlite" and not sqlite_path(url).is_file():
        print(f"labgate: no store at {sqlite_path(url)}", file=sys.stderr)
        return 1
    engine = create_engine(url)
    try:
        with ExitStack() as stack:
            out: TextIO = (
                stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
                if args.output
                else sys.stdout
            )
            count = export(engine, args.what, args.since, args.until, out, args.format, args.raw)
    except OSError as exc:
        print(f"labgate: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"labgate: the store cannot be read: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    detail = {
        "since": args.since.isoformat(),
        "until": args.until.isoformat(),
        "rows": count,
        "format": args.format,
        "output": str(Path(args.output).resolve()) if args.output else "standard output",
        "raw": args.raw,
    }
    _logger().info("data_exported", what=args.what, **detail)
    _audit(url, args.author, "data_exported", args.what, detail)
    print(f"{count} {args.what} row(s) exported", file=sys.stderr)
    return 0


# --- doctor ----------------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    from middleware.ops.doctor import diagnose

    findings = diagnose(args.config, timeout=args.timeout)
    failed = sum(f.status == "fail" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], ensure_ascii=False, indent=2))
    else:
        marks = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
        for finding in findings:
            print(f"{marks[finding.status]:<5} {finding.check:<14} {finding.text}")
        verdict = "all good" if not failed else f"{failed} problem(s)"
        print(f"\n{verdict}, {warned} warning(s)")
    return 1 if failed else 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the `labgate` parser."""
    from middleware.ops.audit import operator

    backup = commands.add_parser("backup", help="back the store up now (audited)")
    backup.add_argument("--config", default=DEFAULT_CONFIG)
    backup.add_argument("--to", metavar="DIR", help="folder (default: the configured one)")
    backup.add_argument("--keep", type=int, metavar="N", help="keep only the newest N there")
    backup.add_argument("--author", type=required_text, default=operator())
    backup.set_defaults(handler=_backup)

    restore = commands.add_parser(
        "restore", help="replace the store with a backup (the daemon must be stopped)"
    )
    restore.add_argument("file", help="a backup file (.sqlite or .pgdump)")
    restore.add_argument("--config", default=DEFAULT_CONFIG)
    restore.add_argument("--author", required=True, type=required_text, help="who restores")
    restore.add_argument("--reason", default="", help="why (kept in the audit trail)")
    restore.set_defaults(handler=_restore)

    export = commands.add_parser(
        "export", help="results, trace or audit of a period, for an inspection (audited)"
    )
    export.add_argument("what", choices=("results", "trace", "audit"))
    export.add_argument("--since", type=_moment, required=True, metavar="ISO")
    export.add_argument("--until", type=_moment, required=True, metavar="ISO")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--output", metavar="FILE", help="default: standard output")
    export.add_argument("--raw", action="store_true", help="trace: the bytes both ways too")
    export.add_argument("--config", default=DEFAULT_CONFIG)
    export.add_argument("--author", type=required_text, default=operator())
    export.set_defaults(handler=_export)

    doctor = commands.add_parser("doctor", help="check this gateway: config, ports, store...")
    doctor.add_argument("--config", default=DEFAULT_CONFIG)
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--timeout", type=float, default=3.0, help="per network check (s)")
    doctor.set_defaults(handler=_doctor)
