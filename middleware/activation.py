"""Activating a biologist's rule set, and going back to an earlier one (GBUI XI-2).

Every activation attempt leaves a change record ("fiche de contrôle initial"): date and time,
author, the change as the author describes it, the expected and obtained results of every
embedded test case (and, when past data was given, how many decisions the new version changes
against the active one), the verdict, and the probation delay after which the change counts as
definitively validated. A rule set is activated only if it has embedded cases and they all
pass; otherwise the attempt is recorded as refused and nothing changes. Any stored version can
be activated again (`rollback`), which is recorded the same way.

Plain synchronous functions over the store: the CLI calls them directly, the daemon on the
store's writer thread. The daemon notices the change through the audit trail (see
`middleware.sessions.deciding.LiveValidation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from middleware.store import Store
from middleware.store.governance import ActivationRecord
from middleware.validation.cases import run_cases
from middleware.validation.ruleset import RuleSet, load_ruleset_text

__all__ = ["ActivationOutcome", "activate_text", "replay_summary"]


@dataclass(frozen=True, slots=True)
class ActivationOutcome:
    """What became of an activation attempt."""

    accepted: bool
    ruleset: str
    version_id: int | None
    change_id: int
    cases_passed: int
    cases_failed: int
    anomaly: str | None = None
    replay: dict[str, Any] = field(default_factory=dict)


def replay_summary(
    new: RuleSet, active: RuleSet, events: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """How many decisions `new` changes against `active` on past events, per test."""
    from middleware.validation.replay import compare

    comparison = compare(active, new, list(events))
    return {
        "results": comparison.results,
        "changed": sum(comparison.changed.values()),
        "changed_per_test": dict(sorted(comparison.changed.items())),
        "against": f"{active.name} {active.version}",
    }


def activate_text(
    store: Store,
    text: str,
    source: str,
    author: str,
    change: str,
    *,
    probation_days: int = 0,
    events: Iterable[dict[str, Any]] | None = None,
    comparison: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> ActivationOutcome:
    """Validate `text` (ConfigError with file, line and field if it is not a rule set), run its
    embedded cases, optionally compare its decisions with the active version's on `events`,
    and record the attempt; activate it if every case passed.

    `comparison` is a replay comparison the caller already made against the active version
    (the web console replays off the store's writer thread, which a long replay would hold
    up); it is recorded as given when no `events` are."""
    if not author.strip():
        raise ValueError("an activation needs its author (GBUI XI-2)")
    ruleset = load_ruleset_text(text, source)
    outcomes = run_cases(ruleset)
    failed = [o for o in outcomes if not o.passed]
    expected = {
        o.name: {"decision": o.expected[0], "reasons": list(o.expected[1])} for o in outcomes
    }
    obtained: dict[str, Any] = {
        o.name: {"decision": o.obtained[0], "reasons": list(o.obtained[1])} for o in outcomes
    }
    anomaly = None
    if not outcomes:
        anomaly = "the rule set has no embedded test cases: nothing shows it decides as intended"
    elif failed:
        anomaly = f"{len(failed)} case(s) failed: " + ", ".join(o.name for o in failed)
    replay: dict[str, Any] = {}
    if events is not None:
        state = store.governance_state()
        if state.active is not None:
            active = load_ruleset_text(state.active.text, state.active.source)
            replay = replay_summary(ruleset, active, events)
            obtained["replay"] = replay
    elif comparison is not None:
        replay = dict(comparison)
        obtained["replay"] = replay
    record = ActivationRecord(
        author=author,
        change=change,
        expected=expected,
        obtained=obtained,
        accepted=anomaly is None,
        anomaly=anomaly,
        probation_days=probation_days,
    )
    version_id, change_id = store.record_activation(
        name=ruleset.name,
        version=ruleset.version,
        biologist=ruleset.responsible_biologist,
        source=source,
        text=text,
        record=record,
        at=at or datetime.now(UTC),
    )
    return ActivationOutcome(
        accepted=record.accepted,
        ruleset=f"{ruleset.name} {ruleset.version}",
        version_id=version_id,
        change_id=change_id,
        cases_passed=len(outcomes) - len(failed),
        cases_failed=len(failed),
        anomaly=anomaly,
        replay=replay,
    )
