"""Read-only views shared by the JSON API and the console pages: plain dicts from the store and
the gateway's live health."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from middleware.gateway import Gateway

__all__ = ["audit_csv", "dashboard", "validation", "visible_bytes"]


async def dashboard(gateway: Gateway) -> dict[str, Any]:
    """Every connection with its health, the LIS backlog, open alarms, blocked devices and the
    length of the review queue."""
    store = gateway.store
    state = await store.read(store.governance_state)
    outbox = await store.read(store.outbox_states)
    alarms = await store.read(store.alarms, True, 50)
    held = await store.read(store.count_held)
    connections = []
    for health in gateway.health.connections.values():
        row = health.as_dict()
        row["blocked"] = health.name in state.blocked_devices
        connections.append(row)
    backlog: dict[str, dict[str, int]] = {}
    for (lis, outbox_state), count in sorted(outbox.items()):
        backlog.setdefault(lis, {})[outbox_state] = count
    return {
        "status": gateway.state,
        "gateway": gateway.settings.gateway,
        "version": gateway.version,
        "started_at": gateway.started_at.isoformat(),
        "connections": connections,
        "backlog": backlog,
        "alarms": alarms,
        "blocked_devices": sorted(state.blocked_devices),
        "autovalidation": state.autovalidation,
        "disabled_biologists": sorted(state.disabled_biologists),
        "held": held,
    }


async def validation(gateway: Gateway) -> dict[str, Any]:
    """What decides right now: the active rule-set version, the switches, the blocked devices,
    the QC plan in force, and the latest change records (GBUI XI-2)."""
    store = gateway.store
    state = await store.read(store.governance_state)
    records = await store.read(store.change_records, 10)
    active = state.active
    qc = gateway.validation.qc
    return {
        "ruleset": None
        if active is None
        else {
            "version_id": active.version_id,
            "name": active.name,
            "version": active.version,
            "biologist": active.biologist,
            "activated_by": active.created_by,
            "sha256": active.sha256,
        },
        "autovalidation": state.autovalidation,
        "disabled_biologists": sorted(state.disabled_biologists),
        "blocked_devices": sorted(state.blocked_devices),
        "qc_gate": qc is not None,
        "change_records": records,
    }


def audit_csv(rows: list[dict[str, Any]]) -> str:
    """The audit rows as CSV (detail as JSON in the last column)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "at", "actor", "action", "subject", "detail"])
    for row in rows:
        writer.writerow(
            [
                row["id"],
                row["at"],
                row["actor"],
                row["action"],
                row["subject"],
                json.dumps(row["detail"], ensure_ascii=False, sort_keys=True),
            ]
        )
    return out.getvalue()


_NAMES = {
    0x02: "STX",
    0x03: "ETX",
    0x04: "EOT",
    0x05: "ENQ",
    0x06: "ACK",
    0x0A: "LF",
    0x0B: "VT",
    0x0D: "CR",
    0x15: "NAK",
    0x17: "ETB",
    0x1C: "FS",
}


def visible_bytes(text: str | None) -> list[tuple[str, bool]]:
    """Bytes (as latin-1 text) split into (text, is_control) pieces, each control character
    named (`<STX>`, `<CR>`...) so it can be shown; a line break follows each CR."""
    pieces: list[tuple[str, bool]] = []
    if not text:
        return pieces
    plain: list[str] = []
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            if plain:
                pieces.append(("".join(plain), False))
                plain = []
            name = _NAMES.get(code, f"x{code:02X}")
            pieces.append((f"<{name}>", True))
            if code == 0x0D:
                pieces.append(("\n", False))
        else:
            plain.append(char)
    if plain:
        pieces.append(("".join(plain), False))
    return pieces
