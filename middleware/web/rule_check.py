"""Checking an edited rule set for the console's editor: its problems with line and field
(the loader of `labgate rules check`), its embedded cases, and, over a bounded window of the
stored history read on a read-only connection (as `labgate replay --from-store` reads it), the
decisions it would change against the active version.

`check_rules` is synchronous and CPU-bound (a replay takes about a second per 20 000 results on
one core): the editor runs it in a worker thread, never on the event loop that serves the
analysers, nor on the store's writer thread that commits their messages.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from middleware.config.loader import ConfigError
from middleware.store.governance import RuleSetVersion
from middleware.store.history import HistoryError, open_read_only, read_history
from middleware.validation.cases import run_cases
from middleware.validation.replay import ReplayError
from middleware.validation.ruleset import RuleSet, load_ruleset_text
from middleware.web.rule_diff import (
    case_rows,
    diff_decisions,
    parse_ruleset,
    problem_rows,
    reused_version,
)

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_LIMIT",
    "MAX_DAYS",
    "MAX_LIMIT",
    "SOURCE",
    "HistorySample",
    "ReplayWindow",
    "RuleCheck",
    "bounded_int",
    "check_rules",
    "read_recent_results",
]

#: The replay window the form offers, and its bounds.
DEFAULT_DAYS = 7
MAX_DAYS = 90
DEFAULT_LIMIT = 20_000
MAX_LIMIT = 100_000
#: Changed results listed one by one (all are counted).
MAX_ROWS = 200
#: The `source` of versions activated here (the CLI records the file's path).
SOURCE = "console"


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    """Which stored results a check replays: the last `days`, at most the latest `limit`."""

    days: int = DEFAULT_DAYS
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_form(cls, days: str | None, limit: str | None) -> ReplayWindow:
        """The window typed in the form, kept within bounds (the defaults if not a number)."""
        return cls(
            bounded_int(days, DEFAULT_DAYS, 1, MAX_DAYS),
            bounded_int(limit, DEFAULT_LIMIT, 1, MAX_LIMIT),
        )


def bounded_int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        value = int((text or "").strip())
    except ValueError:
        return default
    return min(max(value, low), high)


@dataclass
class HistorySample:
    """The recent patient results a check replays, oldest first."""

    events: list[dict[str, Any]]
    since: datetime
    truncated: bool  # the window held more results than `limit`: the oldest were left out


def read_recent_results(url: str, window: ReplayWindow, moment: datetime) -> HistorySample:
    """The latest `window.limit` patient results measured in the last `window.days`, read on
    a read-only connection (HistoryError if the store cannot be read that way)."""
    since = moment - timedelta(days=window.days)
    engine = open_read_only(url)
    try:
        # The history comes oldest first; a bounded deque keeps the newest `limit` results
        # without holding the whole window in memory.
        kept: deque[dict[str, Any]] = deque(maxlen=window.limit)
        seen = 0
        for event in read_history(engine, since):
            if event["kind"] == "result":
                kept.append(event)
                seen += 1
    finally:
        engine.dispose()
    return HistorySample(list(kept), since, seen > len(kept))


@dataclass
class RuleCheck:
    """What the editor found about a text: the page and the API show it, activation acts on
    it."""

    text: str
    ruleset: RuleSet | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    # The active version the replay compared against (its id: activation checks it is
    # still the active one), and what the replay found (None: not replayed, see `note`).
    against: RuleSetVersion | None = None
    replay: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None  # what the change record keeps
    note: str = ""

    @property
    def cases_passed(self) -> int:
        return sum(1 for case in self.cases if case["passed"])

    @property
    def cases_failed(self) -> int:
        return len(self.cases) - self.cases_passed

    @property
    def activatable(self) -> bool:
        """What activation will accept: a rule set with cases that all pass."""
        return (
            self.ruleset is not None
            and not self.problems
            and bool(self.cases)
            and not self.cases_failed
        )

    def as_json(self) -> dict[str, Any]:
        ruleset = self.ruleset
        return {
            "valid": ruleset is not None and not self.problems,
            "ruleset": None
            if ruleset is None
            else {
                "name": ruleset.name,
                "version": ruleset.version,
                "biologist": ruleset.responsible_biologist,
                "tests": len(ruleset.tests),
                "cases": len(ruleset.cases),
            },
            "problems": self.problems,
            "cases": self.cases,
            "cases_passed": self.cases_passed,
            "cases_failed": self.cases_failed,
            "activatable": self.activatable,
            "replay": self.replay,
            "replay_note": self.note,
        }


def _against(active: RuleSetVersion | None) -> str:
    if active is None:
        return "no active rule set (every result held: no_rule)"
    return f"{active.name} {active.version}"


def check_rules(
    text: str,
    active: RuleSetVersion | None,
    versions: list[RuleSetVersion],
    history_url: str | None,
    window: ReplayWindow,
    moment: datetime,
) -> RuleCheck:
    """Validate `text`, run its cases and, with `history_url`, replay the recent history under
    it and under the active version. Synchronous and CPU-bound: run it in a worker thread."""
    check = RuleCheck(text=text, against=active)
    ruleset, problems, lines = parse_ruleset(text, SOURCE)
    if ruleset is None:
        check.problems = problem_rows(problems, text)
        return check
    check.ruleset = ruleset
    reused = reused_version(ruleset, text, versions, lines, SOURCE)
    if reused is not None:
        check.problems = problem_rows([reused], text)
    check.cases = case_rows(run_cases(ruleset))
    if history_url is None:
        return check
    before: RuleSet | None = None
    if active is not None:
        try:
            before = load_ruleset_text(
                active.text, f"{active.source} (version {active.version_id})"
            )
        except ConfigError as exc:
            check.note = f"the active version no longer loads, nothing to compare with: {exc}"
            return check
    try:
        sample = read_recent_results(history_url, window, moment)
    except HistoryError as exc:
        check.note = f"no stored history to replay: {exc}"
        return check
    try:
        diff = diff_decisions(before, ruleset, sample.events, MAX_ROWS)
    except ReplayError as exc:  # a stored row the replay cannot read
        check.note = f"the stored history could not be replayed: {exc}"
        return check
    check.comparison = diff.summary(_against(active))
    check.comparison["window"] = {
        "days": window.days,
        "limit": window.limit,
        "since": sample.since.isoformat(),
        "first": sample.events[0]["at"] if sample.events else None,
        "last": sample.events[-1]["at"] if sample.events else None,
        "truncated": sample.truncated,
    }
    check.replay = {**check.comparison, "rows": diff.rows, "shown": len(diff.rows)}
    return check
