"""`labgate` commands over the transmission archive and the outbox:

    labgate trace [--patient P] [--specimen S] [--message M] [--control-id C]
                  [--since ISO] [--until ISO] [--raw] [--json]
    labgate outbox list [--state STATE]
    labgate outbox resend|release OUTBOX_ID --author NAME --reason TEXT
    labgate archive purge-bytes --older-than-days N --author NAME   (audited)

`trace` answers "was this result sent, when, and what did the LIS say?" (GBUI VII-2-3): every
message matching the criteria with its decisions, each sending and the LIS's acknowledgement.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from middleware.cli_support import DEFAULT_CONFIG, list_rows, open_store, required_text
from middleware.store.archive import TraceQuery
from middleware.store.outbox_admin import OutboxActionRefused

__all__ = ["add_commands"]


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _print_story(story: dict[str, Any]) -> None:
    print(
        f"message {story['message_id']}  from {story['connection']} ({story['protocol']})  "
        f"received {story['received_at']}  {story['status']}"
        + (f": {story['error']}" if story["error"] else "")
    )
    for specimen in story["specimens"]:
        where = f"  {specimen['origin']} {specimen['location']}".rstrip()
        print(f"  specimen {specimen['specimen_id']}  patient {specimen['patient_id']}{where}")
        for r in specimen["results"]:
            reasons = f" ({', '.join(r['reasons'])})" if r["reasons"] else ""
            delivered = f"  delivered {r['delivered_at']}" if r["delivered_at"] else ""
            print(
                f"    {r['test']:<8} {r['value']} {r['unit']}  {r['decision'] or 'qc'}"
                f"{reasons}{delivered}"
            )
    for sending in story["to_lis"]:
        print(
            f"  to {sending['lis']}: {sending['kind']} {sending['control_id']}  "
            f"{sending['state']}"
            + (f"  ({sending['last_error']})" if sending["last_error"] else "")
        )
        for a in sending["attempts"]:
            answer = (
                f"{a['ack_code']} for {a['ack_control_id']} at {a['acked_at']}"
                if a["ack_code"]
                else f"no answer: {a['error']}"
            )
            print(f"    attempt {a['attempt']}  sent {a['sent_at']}  {answer}")
    for entry in story["trace"]:
        print(f"  trace {entry['at']} {entry['direction']} {entry['kind']}: {entry['detail']}")


def _trace(args: argparse.Namespace) -> int:
    query = TraceQuery(
        patient_id=args.patient,
        specimen_id=args.specimen,
        message_id=args.message,
        control_id=args.control_id,
        since=args.since,
        until=args.until,
        limit=args.limit,
        raw=args.raw,
    )
    store = open_store(args)
    if store is None:
        return 2
    try:
        stories = store.trace(query)
    finally:
        store.close()
    if args.json:
        print(json.dumps(stories, ensure_ascii=False, indent=2))
    else:
        for story in stories:
            _print_story(story)
        if not stories:
            print("nothing matches", file=sys.stderr)
    return 0 if stories else 1


def _outbox_list(args: argparse.Namespace) -> int:
    def line(row: dict[str, Any]) -> str:
        return (
            f"{row['outbox_id']:>6}  {row['state']:<11} {row['kind']:<10} {row['control_id']}  "
            f"{row['instrument']} -> {row['lis']}  attempts {row['attempts']}"
            + (f"  {row['last_error']}" if row["last_error"] else "")
        )

    return list_rows(args, lambda store: store.outbox_list(args.state, args.limit), line)


def _outbox_action(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    now = datetime.now(UTC)
    try:
        if args.action == "resend":
            going = store.resend(args.outbox_id, args.author, args.reason, now)
            print(f"outbox message {going} will be sent")
        else:
            store.release(args.outbox_id, args.author, args.reason, now)
            print(f"outbox message {args.outbox_id} released: its results go to the LIS held")
    except OutboxActionRefused as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def _purge(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    before = datetime.now(UTC) - timedelta(days=args.older_than_days)
    try:
        count = store.purge_raw_bytes(before, args.author)
    finally:
        store.close()
    print(f"bytes of {count} settled message(s) received before {before:%Y-%m-%d} dropped")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's commands to the `labgate` parser."""
    trace = commands.add_parser("trace", help="what was received, decided and sent to the LIS")
    trace.add_argument("--config", default=DEFAULT_CONFIG)
    trace.add_argument("--patient")
    trace.add_argument("--specimen")
    trace.add_argument("--message", help="labgate's message id")
    trace.add_argument("--control-id", help="MSH-10 of a message sent to the LIS")
    trace.add_argument("--since", type=_moment)
    trace.add_argument("--until", type=_moment)
    trace.add_argument("--limit", type=int, default=50)
    trace.add_argument("--raw", action="store_true", help="include the bytes both ways")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(handler=_trace)

    outbox = commands.add_parser("outbox", help="messages owed to the LIS")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    listing = outbox_commands.add_parser("list", help="newest first")
    listing.add_argument("--config", default=DEFAULT_CONFIG)
    listing.add_argument("--state", choices=("pending", "delivered", "rejected", "quarantined"))
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=_outbox_list)
    for action, text in (
        ("resend", "send a rejected or delivered message again"),
        ("release", "let a quarantined message go to the LIS (held)"),
    ):
        command = outbox_commands.add_parser(action, help=text)
        command.add_argument("--config", default=DEFAULT_CONFIG)
        command.add_argument("outbox_id", type=int)
        command.add_argument("--author", required=True, type=required_text)
        command.add_argument("--reason", required=True, type=required_text)
        command.set_defaults(handler=_outbox_action, action=action)

    archive = commands.add_parser("archive", help="the transmission archive")
    archive_commands = archive.add_subparsers(dest="archive_command", required=True)
    purge = archive_commands.add_parser(
        "purge-bytes", help="drop old settled messages' bytes, keep who got what and when"
    )
    purge.add_argument("--config", default=DEFAULT_CONFIG)
    purge.add_argument("--older-than-days", type=int, required=True)
    purge.add_argument("--author", required=True, type=required_text)
    purge.set_defaults(handler=_purge)
