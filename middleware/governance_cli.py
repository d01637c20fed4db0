"""`labgate` commands by which people change how results are decided, each one recorded with
its author, time and reason:

    labgate rules activate FILE --author NAME --change TEXT [--probation-days N] [--replay EVENTS]
    labgate rules versions | history          the stored versions / the change records
    labgate rules rollback VERSION_ID --author NAME --reason TEXT
    labgate autovalidation on|off [--biologist NAME] --author NAME --reason TEXT
    labgate device block|unblock NAME --author NAME --reason TEXT
    labgate audit [--limit N]                 who changed what, newest first
    labgate alarms list [--open] | ack ALARM_ID --author NAME --comment TEXT

They write to the store named by the configuration (`--config`); a running daemon picks the
change up within `validation.reload_seconds` (GBUI V-3: switching off is immediate).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from middleware.cli_support import DEFAULT_CONFIG, list_rows, open_store, required_text
from middleware.config import ConfigError

__all__ = ["add_commands"]


def _activate(args: argparse.Namespace) -> int:
    from middleware.activation import activate_text
    from middleware.config.loader import read_text_file
    from middleware.validation.replay import ReplayError, read_events

    try:
        text = read_text_file(args.file)
    except ConfigError as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return 2
    events = None
    if args.replay:
        try:
            with open(args.replay, encoding="utf-8") as lines:
                events = list(read_events(lines))
        except (OSError, ReplayError) as exc:
            print(f"labgate: {args.replay}: {exc}", file=sys.stderr)
            return 2
    store = open_store(args)
    if store is None:
        return 2
    try:
        outcome = activate_text(
            store,
            text,
            args.file,
            args.author,
            args.change,
            probation_days=args.probation_days,
            events=events,
        )
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    finally:
        store.close()
    cases = f"{outcome.cases_passed} case(s) passed, {outcome.cases_failed} failed"
    if outcome.replay:
        cases += (
            f"; replay: {outcome.replay['changed']} of {outcome.replay['results']} decisions "
            f"change against {outcome.replay['against']}"
        )
    if not outcome.accepted:
        print(f"refused: {outcome.ruleset} ({cases}): {outcome.anomaly}", file=sys.stderr)
        print(f"change record {outcome.change_id} kept", file=sys.stderr)
        return 1
    print(
        f"activated: {outcome.ruleset} as version {outcome.version_id} ({cases}); "
        f"change record {outcome.change_id}"
    )
    return 0


def _versions(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    try:
        versions = store.ruleset_versions()
    finally:
        store.close()
    for v in versions:
        mark = "*" if v.active else " "
        print(
            f"{mark} {v.version_id:>4}  {v.name} {v.version}  biologist {v.biologist}  "
            f"{v.created_at:%Y-%m-%d %H:%M} by {v.created_by}  {v.sha256[:12]}  {v.source}"
        )
    if not versions:
        print("no rule set was ever activated: every result is held (no_rule)")
    return 0


def _history(args: argparse.Namespace) -> int:
    def line(r: dict[str, Any]) -> str:
        verdict = "accepted" if r["accepted"] else "REFUSED"
        head = f"{r['id']:>4}  {r['at']}  {r['action']:<9} {verdict:<8} by {r['author']}: "
        return head + r["change"] + (f"  [{r['anomaly']}]" if r["anomaly"] else "")

    return list_rows(args, lambda store: store.change_records(args.limit), line)


def _rollback(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    try:
        change_id = store.rollback(args.version_id, args.author, args.reason, datetime.now(UTC))
        version = store.ruleset_version(args.version_id)
    except KeyError:
        print(f"labgate: no rule-set version {args.version_id}", file=sys.stderr)
        return 2
    finally:
        store.close()
    assert version is not None
    print(f"active again: {version.name} {version.version}; change record {change_id}")
    return 0


def _switch(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    scope, name = ("biologist", args.biologist) if args.biologist else ("global", "")
    try:
        known = {v.biologist for v in store.ruleset_versions()}
        if name and name not in known:
            # A misspelt name would switch off no one while the author believes it done.
            listed = ", ".join(sorted(known)) or "none yet"
            print(
                f"labgate: no rule set names {name!r} as its responsible biologist "
                f"(known: {listed})",
                file=sys.stderr,
            )
            return 2
        store.set_switch(
            scope, name, args.state == "on", args.author, args.reason, datetime.now(UTC)
        )
    finally:
        store.close()
    who = f"for biologist {name}" if name else "globally"
    print(f"auto-validation switched {args.state} {who}")
    return 0


def _device(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    blocked = args.action == "block"
    try:
        store.set_device_blocked(args.name, blocked, args.author, args.reason, datetime.now(UTC))
    finally:
        store.close()
    effect = "its results are quarantined" if blocked else "its results flow again"
    print(f"device {args.name} {'blocked' if blocked else 'unblocked'}: {effect}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    def line(row: dict[str, Any]) -> str:
        detail = json.dumps(row["detail"], ensure_ascii=False, default=str)
        return (f"{row['id']:>5}  {row['at']}  {row['actor']:<20} {row['action']:<20} "
                f"{row['subject']}  {detail}")  # fmt: skip

    return list_rows(args, lambda store: store.audit_trail(args.limit), line)


def _alarms_list(args: argparse.Namespace) -> int:
    def line(row: dict[str, Any]) -> str:
        state = "open" if row["cleared_at"] is None else f"cleared {row['cleared_at']}"
        seen = f"seen by {row['acknowledged_by']}" if row["acknowledged_by"] else "NOT SEEN"
        return (
            f"{row['id']:>5}  {row['kind']:<15} {row['subject']:<24} {row['raised_at']}  "
            f"x{row['occurrences']}  {state}  {seen}  {row['detail']}"
        )

    return list_rows(args, lambda store: store.alarms(open_only=args.open, limit=args.limit), line)


def _alarms_ack(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    try:
        store.acknowledge_alarm(args.alarm_id, args.author, args.comment, datetime.now(UTC))
    except KeyError:
        print(f"labgate: no alarm {args.alarm_id}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"alarm {args.alarm_id} acknowledged by {args.author}")
    return 0


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the daemon's configuration")
    return parser


def _with_author(parser: argparse.ArgumentParser, reason: str = "--reason") -> None:
    parser.add_argument("--author", required=True, type=required_text, help="who decides")
    parser.add_argument(reason, required=True, type=required_text, help="why (recorded)")


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    rules_commands: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """Add the commands of this module to the `labgate` parser."""
    activate = _with_config(
        rules_commands.add_parser("activate", help="activate a rule set (cases must pass)")
    )
    activate.add_argument("file")
    _with_author(activate, "--change")
    activate.add_argument(
        "--probation-days",
        type=int,
        default=0,
        help="days after which the change counts as definitively validated (GBUI XI-2)",
    )
    activate.add_argument("--replay", metavar="EVENTS", help="past events to compare on")
    activate.set_defaults(handler=_activate)

    versions = _with_config(rules_commands.add_parser("versions", help="stored versions"))
    versions.set_defaults(handler=_versions)

    history = _with_config(rules_commands.add_parser("history", help="change records"))
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=_history)

    rollback = _with_config(
        rules_commands.add_parser("rollback", help="activate an earlier version again")
    )
    rollback.add_argument("version_id", type=int)
    _with_author(rollback)
    rollback.set_defaults(handler=_rollback)

    switch = _with_config(
        commands.add_parser("autovalidation", help="switch auto-validation on or off")
    )
    switch.add_argument("state", choices=("on", "off"))
    switch.add_argument("--biologist", help="only for this responsible biologist")
    _with_author(switch)
    switch.set_defaults(handler=_switch)

    device = _with_config(commands.add_parser("device", help="block or unblock a device"))
    device.add_argument("action", choices=("block", "unblock"))
    device.add_argument("name")
    _with_author(device)
    device.set_defaults(handler=_device)

    alarms = commands.add_parser("alarms", help="alarm episodes")
    alarm_commands = alarms.add_subparsers(dest="alarms_command", required=True)
    listing = _with_config(alarm_commands.add_parser("list", help="newest first"))
    listing.add_argument("--open", action="store_true", help="only those not yet cleared")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_alarms_list)
    ack = _with_config(alarm_commands.add_parser("ack", help="say a person has seen it"))
    ack.add_argument("alarm_id", type=int)
    _with_author(ack, "--comment")
    ack.set_defaults(handler=_alarms_ack)

    audit = _with_config(commands.add_parser("audit", help="the audit trail, newest first"))
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=_audit)
