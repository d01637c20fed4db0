"""What the decode tools share: their command line parsed, the encoding checked, the file read,
with the same messages and exit status 2 for a usage or input problem."""

from __future__ import annotations

import argparse
import codecs
import sys

__all__ = ["parse_and_read"]


def parse_and_read(
    parser: argparse.ArgumentParser, argv: list[str], tool: str
) -> tuple[argparse.Namespace, bytes] | int:
    """(arguments, the file's bytes), or the exit status when there is nothing to decode:
    --help (0), a usage error, an unknown `--encoding`, an unreadable file (2)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    encoding = getattr(args, "encoding", None)
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            print(f"labgate {tool}: unknown encoding {encoding!r}", file=sys.stderr)
            return 2
    try:
        with open(args.file, "rb") as file:
            return args, file.read()
    except OSError as exc:
        print(f"labgate {tool}: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
