"""Which alarm conditions hold right now, from a snapshot of the daemon's state (pure: no clock,
no I/O; the snapshot carries the time).

Kinds and when they hold (thresholds from the `alarms` settings):

- `link_lost` — a link labgate keeps open itself (the LIS while something is owed to it, a TCP
  client or serial analyser) has been down longer than `link_lost_after_seconds`. Analysers
  that connect to labgate come and go as they please; for them, configure `silence_minutes`.
- `silence` — no message from an instrument for longer than its `silence_minutes`.
- `error_rate` — at least `error_rate` errors (refused frames or messages, failed sendings) on
  one connection within `error_window_minutes`.
- `backlog` — messages owed to a LIS are at least `backlog_messages`, or the oldest has waited
  longer than `backlog_age_minutes`.
- `lis_rejected` — the LIS refused messages (AE/AR) that wait for a person.
- `quarantined` — results of a blocked device wait for a person to release them.
- `lis_unconsumed` — an HPRIM LIS has not taken a file from the spool within the link's
  `unconsumed_alarm_minutes` (the sender lists such files).
- `device_blocked` — a device is blocked.
- `qc_failed` — the newest QC run of an instrument and test is rejected.
- `qc_overdue` — QC of an instrument and test is due: its last accepted run is older than its
  interval, or the plan's `results` patient results were already stored since it (the next one
  would be held).
- `qc_new_lot` — patient results were measured on a reagent lot that no accepted QC run of that
  instrument and test covers yet; the subject is `instrument:test:lot`.

The subject of an alarm about a device starts with the device's name and a colon (or is just
the name): `auto_block` reads the device from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["AlarmThresholds", "LinkView", "Snapshot", "conditions"]

AlarmKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class AlarmThresholds:
    link_lost_after: timedelta = timedelta(seconds=60)
    silence: Mapping[str, timedelta] = field(default_factory=dict)
    error_rate: int = 10
    error_window: timedelta = timedelta(minutes=10)
    backlog_messages: int = 1000
    backlog_age: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class LinkView:
    """One connection as the monitor sees it."""

    name: str
    state: str  # connected / listening / disconnected
    outgoing: bool  # labgate opens and keeps this link itself
    down_since: datetime | None  # when it last stopped being connected (None: connected)
    last_message_at: datetime | None
    started_at: datetime  # when labgate started watching it
    errors_in_window: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: datetime
    links: Sequence[LinkView] = ()
    outbox: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (lis, state) -> count
    oldest_pending: Mapping[str, datetime | None] = field(default_factory=dict)  # per LIS
    blocked_devices: frozenset[str] = frozenset()
    qc_rejected: frozenset[tuple[str, str]] = frozenset()  # (instrument, test)
    qc_overdue: frozenset[tuple[str, str]] = frozenset()
    qc_new_lot: frozenset[tuple[str, str, str]] = frozenset()  # (instrument, test, reagent lot)
    unconsumed: Mapping[str, datetime] = field(default_factory=dict)  # per LIS: oldest file


def conditions(snapshot: Snapshot, limits: AlarmThresholds) -> dict[AlarmKey, str]:
    """Every alarm condition that holds, keyed by (kind, subject), with a detail for people."""
    now = snapshot.now
    found: dict[AlarmKey, str] = {}
    for link in snapshot.links:
        if link.outgoing and link.state != "connected":
            since = link.down_since or link.started_at
            if now - since > limits.link_lost_after:
                found[("link_lost", link.name)] = f"down since {since.isoformat()}"
        quiet = limits.silence.get(link.name)
        if quiet is not None:
            last = link.last_message_at or link.started_at
            if now - last > quiet:
                found[("silence", link.name)] = f"no message since {last.isoformat()}"
        if limits.error_rate > 0 and link.errors_in_window >= limits.error_rate:
            found[("error_rate", link.name)] = (
                f"{link.errors_in_window} errors in {limits.error_window}"
            )
    lis_names = {lis for lis, _ in snapshot.outbox} | set(snapshot.oldest_pending)
    for lis in sorted(lis_names):
        depth = snapshot.outbox.get((lis, "pending"), 0)
        oldest = snapshot.oldest_pending.get(lis)
        if depth >= limits.backlog_messages or (
            oldest is not None and now - oldest > limits.backlog_age
        ):
            age = f", oldest since {oldest.isoformat()}" if oldest is not None else ""
            found[("backlog", lis)] = f"{depth} message(s) waiting{age}"
        rejected = snapshot.outbox.get((lis, "rejected"), 0)
        if rejected:
            found[("lis_rejected", lis)] = f"{rejected} message(s) refused by the LIS"
        quarantined = snapshot.outbox.get((lis, "quarantined"), 0)
        if quarantined:
            found[("quarantined", lis)] = f"{quarantined} message(s) of blocked devices"
    for lis, written in sorted(snapshot.unconsumed.items()):
        found[("lis_unconsumed", lis)] = f"a file waits in the spool since {written.isoformat()}"
    for device in sorted(snapshot.blocked_devices):
        found[("device_blocked", device)] = "blocked by the lab"
    for instrument, test in sorted(snapshot.qc_rejected):
        found[("qc_failed", f"{instrument}:{test}")] = "newest QC run rejected"
    for instrument, test in sorted(snapshot.qc_overdue):
        found[("qc_overdue", f"{instrument}:{test}")] = "QC overdue"
    for instrument, test, lot in sorted(snapshot.qc_new_lot):
        found[("qc_new_lot", f"{instrument}:{test}:{lot}")] = (
            f"reagent lot {lot} in use without an accepted QC run"
        )
    return found
