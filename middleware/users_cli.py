"""`labgate user` commands: the console's accounts, from the gateway's shell.

    labgate user add NAME --role technician|biologist|admin [--author NAME] [--password-stdin]
    labgate user unlock NAME --author NAME
    labgate user disable NAME --author NAME --reason TEXT
    labgate user list

The first admin is created here (there is no default account nor default password); the
password is asked twice on a terminal, or read from the first line of standard input with
`--password-stdin`. Accounts are never deleted: `disable` keeps the name the audit trail cites.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

from middleware.cli_support import DEFAULT_CONFIG, open_store, required_text
from middleware.store.accounts import ROLES, AccountError

__all__ = ["add_commands"]


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        print("labgate: the two passwords differ", file=sys.stderr)
        return None
    return first


def _add(args: argparse.Namespace) -> int:
    password = _password(args)
    if password is None:
        return 2
    store = open_store(args)
    if store is None:
        return 2
    try:
        store.create_user(args.name, args.role, password, args.author, datetime.now(UTC))
    except AccountError as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"user {args.name} ({args.role}) created")
    return 0


def _change(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    try:
        if args.action == "unlock":
            store.unlock_user(args.name, args.author, datetime.now(UTC))
        else:
            store.disable_user(args.name, args.author, args.reason, datetime.now(UTC))
    except AccountError as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"user {args.name}: {'active again' if args.action == 'unlock' else 'disabled'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = open_store(args)
    if store is None:
        return 2
    try:
        users = store.users()
    finally:
        store.close()
    for user in users:
        print(
            f"{user['name']:<24} {user['role']:<10} {user['status']:<8} "
            f"last login {user['last_login_at'] or 'never'}"
        )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `labgate user ...` to the `labgate` parser."""
    user = commands.add_parser("user", help="console accounts (add, unlock, disable, list)")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="create an account (password asked)")
    add.add_argument("--config", default=DEFAULT_CONFIG)
    add.add_argument("name", type=required_text)
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--author", default="labgate-cli", type=required_text)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.set_defaults(handler=_add)
    unlock = user_commands.add_parser("unlock", help="reactivate a locked account (audited)")
    unlock.add_argument("--config", default=DEFAULT_CONFIG)
    unlock.add_argument("name", type=required_text)
    unlock.add_argument("--author", required=True, type=required_text)
    unlock.set_defaults(handler=_change, action="unlock")
    disable = user_commands.add_parser("disable", help="end an account's access (kept)")
    disable.add_argument("--config", default=DEFAULT_CONFIG)
    disable.add_argument("name", type=required_text)
    disable.add_argument("--author", required=True, type=required_text)
    disable.add_argument("--reason", required=True, type=required_text)
    disable.set_defaults(handler=_change, action="disable")
    listing = user_commands.add_parser("list", help="every account and its status")
    listing.add_argument("--config", default=DEFAULT_CONFIG)
    listing.set_defaults(handler=_list)
