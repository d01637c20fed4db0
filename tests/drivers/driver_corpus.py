"""The corpus (tests/data/corpus, see INDEX.md there) as E1394 messages for the driver tests,
and reports as JSON for the golden files in tests/data/drivers/golden/.

Each capture kind needs its own way back to E1394 text:

- framed captures (real bytes) go through the host link core, as the daemon receives them;
- record dumps drop their comment (``#``) and script (``@``) lines; the DxH scenario holds
  several messages, split at its ``@send`` / ``@receive`` directives;
- the Access 2 and Mindray logs write control characters as text (``[STX]``) and lost bytes:
  only messages whose frames are all there, in order, with checksums that verify, are kept.
  (Access 2 reads were logged partly out of order and a checksum is a sum, so a shuffled frame
  can still verify: records must also start with their type and a field delimiter.)
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from drivers import registry
from drivers.models import Query, SpecimenReport
from protocols import astm
from protocols.errors import RemoteProtocolError

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "corpus"
GOLDEN = ROOT / "tests" / "data" / "drivers" / "golden"

#: Corpus file -> the driver (profile) of its analyser family.
FAMILIES = {
    "astm-access2-1.txt": "access2",
    "astm-afinion2-1.astm": "afinion2",
    "astm-beckman-dxh-1.txt": "beckman-dxh",
    "astm-cobas-c311-1.astm": "cobas-c311",
    "astm-lis2a2-spec-example-1.txt": "generic-astm",
    "astm-mindray-bs240-1.txt": "mindray-bs240",
    "astm-ortho-vision-1.txt": "ortho-vision",
    "astm-ortho-vision-escapes-1.txt": "ortho-vision",
    "astm-pentra-xlr-1.astm": "pentra-xlr",
    "astm-phadia-prime-1.txt": "phadia-prime",
    "astm-sysmex-xn550-1.astm": "sysmex-xn",
}

#: How many Mindray messages of each kind (H-12) the golden file keeps, first ones that verify.
MINDRAY_KEEP = {"PR": 4, "QR": 3}

_ESCAPES = {
    "[STX]": "\x02",
    "[ETX]": "\x03",
    "[ETB]": "\x17",
    "[CR]": "\r",
    "[LF]": "\n",
    "[ENQ]": "\x05",
    "[EOT]": "\x04",
    "[ACK]": "\x06",
    "[NAK]": "\x15",
}
_FRAME = re.compile(r"\x02([0-7])([^\x02\x03\x17]*)([\x03\x17])([0-9A-Fa-f]{2})\r\n")
_RECORD_START = re.compile(r"[A-Za-z]\|")


def framed_text(name: str) -> bytes:
    """A framed capture (real bytes) through the host link core."""
    link = astm.Link(astm.Role.HOST)
    link.receive_data(b"\x05" + (CORPUS / name).read_bytes() + b"\x04", 0.0)
    text = b""
    while (event := link.next_event()) is not None:
        if isinstance(event, astm.MessageReceived):
            text += event.text
            link.acknowledge(0.0)
    return text


def record_dump(name: str) -> list[tuple[str, bytes]]:
    """(label, text) per message of a record dump; LF line ends become CR."""
    messages: list[tuple[str, bytes]] = []
    label, lines = "", []
    for number, line in enumerate((CORPUS / name).read_bytes().splitlines(), start=1):
        if line.startswith(b"@"):
            if lines:
                messages.append((label, b"\r".join(lines) + b"\r"))
            label, lines = f"line {number}: {line.decode().split()[0]}", []
        elif line.strip() and not line.startswith(b"#"):
            lines.append(line)
    if lines:
        messages.append((label or "whole file", b"\r".join(lines) + b"\r"))
    return messages


def _frames(name: str) -> list[tuple[int, str, bool]]:
    """(frame number, text, checksum verifies) of each whole frame in a text-escaped log."""
    lines = (CORPUS / name).read_bytes().decode("latin-1").split("\r\n")
    joined = "".join(line for line in lines if line.strip() not in ("- [ACK]", "[ACK]"))
    for escape, char in _ESCAPES.items():
        joined = joined.replace(escape, char)
    frames = []
    for fn, body, end, check in _FRAME.findall(joined):
        expected = astm.checksum((fn + body + end).encode("latin-1"))
        frames.append((int(fn), body, expected.decode().upper() == check.upper()))
    return frames


def _checked(frames: list[tuple[int, str, bool]]) -> list[bytes]:
    """Messages rebuilt from frames: H (FN 1) to L, consecutive frame numbers, every checksum
    verified, every record starting with its type and the field delimiter, delimiters declared
    by the H record."""
    messages: list[bytes] = []
    current: list[str] | None = None
    expected_fn = 1
    for fn, body, ok in frames:
        if fn == 1 and body.startswith("H|"):
            current, expected_fn = [], 1
        if current is None:
            continue
        if fn != expected_fn or not ok:
            current = None
            continue
        current.append(body)
        expected_fn = (expected_fn + 1) % 8
        text = "".join(current)
        records = [r for r in text.split("\r") if r]
        if records and records[-1].startswith("L|"):
            if all(_RECORD_START.match(r) for r in records) and _declares_delimiters(records[0]):
                messages.append(text.encode("latin-1"))
            current = None
    return messages


def _declares_delimiters(header: str) -> bool:
    try:
        astm.Delimiters.from_header(header)
    except RemoteProtocolError:
        return False
    return True


def access2_messages() -> list[tuple[str, bytes]]:
    """The Access 2 messages the log lets us rebuild whole."""
    return [(f"message {n}", text) for n, text in enumerate(_checked(_frames(CORPUS_ACCESS2)))]


def mindray_messages() -> list[tuple[str, bytes]]:
    """The first verifying Mindray messages of each kind (MINDRAY_KEEP)."""
    kept: list[tuple[str, bytes]] = []
    counts = dict.fromkeys(MINDRAY_KEEP, 0)
    for n, text in enumerate(_checked(_frames(CORPUS_MINDRAY))):
        kind = astm.decode_message(text).records[0].field(12)
        if kind in counts and counts[kind] < MINDRAY_KEEP[kind]:
            counts[kind] += 1
            kept.append((f"verified message {n} ({kind})", text))
    return kept


CORPUS_ACCESS2 = "astm-access2-1.txt"
CORPUS_MINDRAY = "astm-mindray-bs240-1.txt"


def corpus_messages(name: str) -> list[tuple[str, bytes]]:
    """(label, E1394 text) of every message the driver tests take from corpus file `name`."""
    if name.endswith(".astm"):
        return [("framed capture", framed_text(name))]
    if name == CORPUS_ACCESS2:
        return access2_messages()
    if name == CORPUS_MINDRAY:
        return mindray_messages()
    if name == "astm-ortho-vision-escapes-1.txt":
        # O records only: wrapped in a minimal H ... L to be a message.
        [(_, text)] = record_dump(name)
        return [("O records wrapped in H/L", b"H|\\^&\r" + text + b"L|1|N\r")]
    return record_dump(name)


# --- JSON ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        # The analyser's wall-clock time, whatever the zone the tests run in.
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            # Set by the decision pipeline, never by a driver: not part of what drivers make.
            if not (f.name == "previous" and getattr(value, f.name) is None)
        }
    return value


def report_json(report: SpecimenReport) -> dict[str, Any]:
    """A report with every field (extras included), in JSON types."""
    data: dict[str, Any] = _plain(report)
    return data


def golden_of(name: str) -> dict[str, Any]:
    """What the family's driver makes of each message of corpus file `name`."""
    driver = registry.get(FAMILIES[name])
    messages = []
    for label, text in corpus_messages(name):
        message = astm.decode_message(text, driver.encoding)
        reports = driver.to_reports(message, "analyser-1")
        queries: list[Query] = driver.parse_queries(message)
        messages.append(
            {
                "source": label,
                "reports": [report_json(r) for r in reports],
                "queries": [_plain(q) for q in queries],
            }
        )
    return {"file": name, "driver": driver.name, "messages": messages}


def dump_golden(data: Any, indent: str = "") -> str:
    """JSON laid out for review: one line per result, patient, query and short list."""
    inner = indent + "  "
    if isinstance(data, dict) and data:
        items = []
        for key, value in data.items():
            if key in ("results", "reports", "messages") and isinstance(value, list) and value:
                lines = [inner + "  " + _dump_item(key, v, inner + "  ") for v in value]
                items.append(f"{inner}{json.dumps(key)}: [\n" + ",\n".join(lines) + f"\n{inner}]")
            else:
                items.append(f"{inner}{json.dumps(key)}: {_compact(value)}")
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return _compact(data)


def _dump_item(key: str, value: Any, indent: str) -> str:
    if key == "results":
        return _compact(value)
    return dump_golden(value, indent)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
