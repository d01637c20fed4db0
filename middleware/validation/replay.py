"""Replay: what a rule set (and a QC plan) would have decided on past results, read-only.

Input: events in time order, from JSON lines (`read_events`) or from the store
(`middleware.store.history`). Two kinds:

- `{"kind": "result", "id", "patient", "specimen", "test", "value", "unit", "flags", "at",
  "instrument", "origin", "indices"}`: a patient result. Optional: `numeric` and `comparator`
  (the driver's parse of `value`, as the store keeps it; without them `value` is parsed here),
  `normalized_flags`. A time without an offset is taken as UTC.
- `{"kind": "qc", "instrument", "test", "level", "lot", "value", "at"}` (optional `run_id`,
  `reagent_lot`): a control result. A patient result may name its `reagent_lot` too.

Output: one `{"id", "decision", "reasons"}` per result, in input order. The patient's previous
result for a test feeds the delta check: the latest from another specimen (a rerun on the same
specimen is not history), none without a patient id, as the store looks it up for the daemon.
The results already seen for the same specimen feed the biologists' consistency rules. A value
that is not a finite number ("NaN", "Infinity") is `non_numeric`.

**QC.** With a QC plan, each control is judged by the Westgard rules (`QcMonitor`, the same
object the daemon uses) and each result gets the QC gate's reasons (`qc_failed`, `qc_overdue`,
`qc_new_lot`) for its instrument, test and reagent lot at its time, first among its reasons as
the live pipeline puts them; each patient result then counts against the plan's `results`. A
result is decided at its own time, with the controls seen so far. When a later control rejects
its run, the daemon holds again the results of that instrument and test measured since
the last accepted run and up to the rejection; the replay does the same and says so with one
more line per result it holds again, after the control's place in the input:
`{"id", "decision": "held", "reasons": [..., "qc_failed"], "reheld_by_qc": true}` (reasons as
decided, `qc_failed` appended, as the daemon's store records it). A result already held for
`qc_failed` is not repeated. Without a plan, control lines are only counted.

**Equivalence with the daemon.** The decisions are the live `Pipeline`'s
(`tests/middleware/validation/test_replay_equivalence.py` checks it on random results). They
are computed here by a leaner path (per-test checks compiled once, no `Result` objects, rule
contexts built only for tests with rules), so a million results replay in seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from middleware.validation import delta as delta_check
from middleware.validation.expressions import RuleEvaluationError
from middleware.validation.qc_gate import QC_FAILED
from middleware.validation.qc_monitor import QcMonitor
from middleware.validation.qc_plan import QcPlan
from middleware.validation.ruleset import Interval, RuleSet, TestRules
from middleware.validation.stages import decide
from middleware.validation.westgard import QcPoint

__all__ = ["Comparison", "ReplayError", "ReplayStats", "compare", "read_events", "replay"]

# Specimens whose results are kept for consistency rules. A specimen's results arrive close
# together in time, so only the most recent ones are kept (memory stays flat on long replays).
_RECENT_SPECIMENS = 10_000

_CENSORED_FLAGS = frozenset({"<", ">"})


class ReplayError(ValueError):
    """An input line that is not a valid event; says which line and why."""


@dataclass
class ReplayStats:
    """What a replay went through (filled in as the events are read)."""

    results: int = 0
    autovalidated: int = 0
    held: int = 0
    qc_points: int = 0  # control lines read
    qc_evaluated: int = 0  # judged by the Westgard rules (with a QC plan)
    qc_runs_rejected: int = 0
    reheld_by_qc: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def read_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events from JSON lines (blank lines skipped); ReplayError names the bad line."""
    loads = json.loads
    for number, line in enumerate(lines, 1):
        try:
            event = loads(line)
        except json.JSONDecodeError as exc:
            if not line.strip():
                continue
            raise ReplayError(f"line {number}: not JSON: {exc.msg}") from None
        if not isinstance(event, dict) or event.get("kind") not in ("result", "qc"):
            raise ReplayError(f"line {number}: expected an object with kind result or qc")
        event["_line"] = number
        yield event


def _time(text: object) -> datetime:
    at = datetime.fromisoformat(str(text))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _number(value: object) -> tuple[Decimal | None, str | None]:
    """The analyser's text as (number, comparator): "<0.1" -> (0.1, "<"); not a finite number
    (text, "NaN", "Infinity") -> (None, None)."""
    text = (value if isinstance(value, str) else str(value)).strip()
    first = text[:1]
    try:
        number = Decimal(text.lstrip("<> ") if first in "<>" else text)
    except InvalidOperation:
        return None, None
    if not number.is_finite():
        return None, None
    return number, (first if first and first in "<>" else None)


def _stored_number(event: Mapping[str, Any]) -> tuple[Decimal | None, str | None]:
    """The driver's parse, when the event carries it (events read from the store)."""
    numeric = event["numeric"]
    comparator = event.get("comparator") or None
    if numeric is None:
        return None, comparator
    try:
        number = Decimal(str(numeric))
    except InvalidOperation:
        raise ReplayError(f"line {event.get('_line')}: numeric {numeric!r}") from None
    return (number if number.is_finite() else None), comparator


def _bounds(interval: Interval | None) -> tuple[Decimal | None, Decimal | None] | None:
    return None if interval is None else (interval.low, interval.high)


class _Checks:
    """One test's rules, compiled once: what `stages.evaluate` and the pipeline's delta stage
    read from `TestRules`, as plain attributes."""

    __slots__ = ("autoverify", "critical", "delta", "indices", "reportable", "rules", "unit")

    def __init__(self, test: TestRules) -> None:
        self.unit = test.unit
        limits = test.specimen_indices
        self.indices: tuple[tuple[str, Decimal], ...] = ()
        if limits is not None:
            pairs = (("h", limits.h), ("i", limits.i), ("l", limits.l))
            self.indices = tuple((name, limit) for name, limit in pairs if limit is not None)
        self.reportable = _bounds(test.reportable_range)
        self.critical = _bounds(test.critical)
        self.autoverify = _bounds(test.autoverify_range)
        self.rules = tuple((rule.reason, rule.compiled) for rule in test.rules)
        self.delta: delta_check.DeltaRule | None = None
        if test.delta is not None:
            settings = test.delta
            # Built exactly as Pipeline._delta builds it for every result.
            self.delta = delta_check.DeltaRule(
                method=settings.method,
                window=timedelta(hours=float(settings.window_hours)),
                limit=settings.limit,
                z=settings.z,
                cva=settings.cva,
                cvi=settings.cvi,
            )


_Pieces = tuple[str, str, Decimal | None, str | None, str, tuple[str, ...], tuple[str, ...]]


def _view(
    code: str,
    value: str,
    numeric: Decimal | None,
    comparator: str | None,
    unit: str,
    flags: tuple[str, ...],
    normalized: tuple[str, ...],
) -> dict[str, object]:
    """A result as a rule sees it (`stages._result_view`)."""
    return {
        "test_code": code,
        "value": value,
        "numeric": numeric,
        "comparator": comparator or "",
        "unit": unit,
        "flags": tuple(dict.fromkeys((*flags, *normalized))),
    }


_Seen = tuple[str, Decimal, str, datetime, Decimal | None, str | None, datetime | None]


class _PatientHistory:
    """Per patient and test: the latest numeric result and the latest from another specimen
    than that one. The previous result of the delta check is the latest from *another* specimen
    (a rerun on the same specimen is no history), as the store's look-up gives it.

    Garbage collection shaped this (with objects in the entries and the whole history kept,
    it took half the time of a 1M-result replay): entries are flat tuples of strings, Decimals
    and datetimes, which the collector stops tracking at once, and results older than every
    delta window are swept away now and then (events come in time order, so none will reach
    them), so the dict stays the size of one window.
    """

    def __init__(self, longest_window: timedelta) -> None:
        self.window = longest_window
        # specimen, value, unit, time; then value, unit, time from another specimen, or Nones
        self.seen: dict[str, _Seen] = {}
        self.sweep_above = 1 << 16

    def previous(
        self, key: str, specimen: str, value: Decimal, unit: str, at: datetime
    ) -> delta_check.Previous | None:
        """The previous result for a new one (None: no history), which is then remembered."""
        seen = self.seen.get(key)
        if seen is None:
            self.seen[key] = (specimen, value, unit, at, None, None, None)
            if len(self.seen) > self.sweep_above:
                self._sweep(at - self.window)
            return None
        if seen[0] == specimen:  # a rerun: the previous result stays the other specimen's
            self.seen[key] = (specimen, value, unit, at, seen[4], seen[5], seen[6])
            earlier_value, earlier_unit, earlier_at = seen[4], seen[5], seen[6]
            if earlier_value is None or earlier_unit is None or earlier_at is None:
                return None
            return delta_check.Previous(earlier_value, earlier_unit, earlier_at)
        self.seen[key] = (specimen, value, unit, at, seen[1], seen[2], seen[3])
        return delta_check.Previous(seen[1], seen[2], seen[3])

    def _sweep(self, horizon: datetime) -> None:
        self.seen = {key: entry for key, entry in self.seen.items() if entry[3] >= horizon}
        self.sweep_above = max(1 << 16, 2 * len(self.seen))


class _Replayer:
    """The state of one replay: rule set compiled per test, patients' previous results, recent
    specimens, QC monitor and the results a QC rejection may still hold again."""

    def __init__(self, ruleset: RuleSet, qc_plan: QcPlan | None, stats: ReplayStats) -> None:
        self.ruleset = ruleset
        self.switch: tuple[str, ...] = () if ruleset.enabled else ("autovalidation_disabled",)
        self.allowed = frozenset(ruleset.allowed_flags)
        self.checks = {code: _Checks(test) for code, test in ruleset.tests.items()}
        self.with_rules = any(c.rules for c in self.checks.values())
        self.stats = stats
        self.monitor = QcMonitor(qc_plan) if qc_plan is not None else None
        self.run_window = qc_plan.westgard_config().run_window if qc_plan else timedelta(0)
        windows = [c.delta.window for c in self.checks.values() if c.delta is not None]
        self.history = _PatientHistory(max(windows, default=timedelta(0)))
        # specimen -> {test code: that result's `_view` arguments}, for rule sets with rules
        # (views are built only when a rule reads them).
        self.specimens: dict[str, dict[str, _Pieces]] = {}
        # (instrument, test) -> decided results a later QC rejection may hold again:
        # [measured at, ordinal, id, decision reasons].
        self.decided: dict[tuple[str, str], list[tuple[datetime, int, object, tuple[str, ...]]]]
        self.decided = {}

    def run(self, events: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(result ordinal, output line) for every result and every re-hold."""
        ordinal = 0
        for event in events:
            if event["kind"] == "result":
                yield ordinal, self._result(event, ordinal)
                ordinal += 1
            else:
                self.stats.qc_points += 1
                if self.monitor is not None:
                    yield from self._qc(event)

    # --- patient results ------------------------------------------------------------------

    def _result(self, event: dict[str, Any], ordinal: int) -> dict[str, Any]:
        try:
            patient = str(event["patient"])
            specimen = str(event["specimen"])
            code = str(event["test"])
            at = _time(event["at"])
            raw = event["value"]
        except (KeyError, ValueError) as exc:
            raise ReplayError(f"line {event.get('_line')}: {exc!s}") from None
        if "numeric" in event:
            numeric, comparator = _stored_number(event)
        else:
            numeric, comparator = _number(raw)
        unit = str(event.get("unit", ""))
        flags = tuple(event.get("flags") or ())
        normalized = tuple(event.get("normalized_flags") or ())
        checks = self.checks.get(code)

        reasons = self._stage_reasons(event, checks, code, raw, numeric, comparator, unit, flags,
                                      normalized, specimen)  # fmt: skip
        delta: tuple[str, ...] = ()
        if checks is not None and checks.delta is not None:
            delta = self._delta(checks.delta, patient, specimen, code, numeric, unit, at)
        monitor = self.monitor
        instrument = ""
        if monitor is not None:
            instrument = str(event.get("instrument", ""))
            lot = str(event.get("reagent_lot") or "")
            qc = monitor.reasons_for(instrument, code, at, lot)
            if qc:
                reasons = [*qc, *reasons]
            # Counted once decided, as the daemon counts what it stored (QcPlan `results`).
            monitor.add_patient(instrument, code, at, lot)
        decision, found = decide(reasons, delta)

        stats = self.stats
        stats.results += 1
        if found:
            stats.held += 1
        else:
            stats.autovalidated += 1
        if self.with_rules:
            self._remember_in_specimen(specimen, code, raw, numeric, comparator, unit, flags,
                                       normalized)  # fmt: skip
        if monitor is not None and QC_FAILED not in found:
            self.decided.setdefault((instrument, code), []).append(
                (at, ordinal, event.get("id"), found)
            )
        return {"id": event.get("id"), "decision": decision, "reasons": list(found)}

    def _stage_reasons(
        self,
        event: Mapping[str, Any],
        checks: _Checks | None,
        code: str,
        raw: object,
        numeric: Decimal | None,
        comparator: str | None,
        unit: str,
        flags: tuple[str, ...],
        normalized: tuple[str, ...],
        specimen: str,
    ) -> list[str]:
        """`stages.evaluate`, on the compiled checks (same reasons, same order)."""
        reasons = list(self.switch)
        if checks is None:
            reasons.append("no_rule")
        allowed = self.allowed
        for flag in flags:
            if flag not in allowed:
                reasons.append("instrument_flag")
                break
        if checks is None:
            return reasons
        if checks.indices:
            indices = event.get("indices")
            if indices:
                for name, limit in checks.indices:
                    index = indices.get(name)
                    if index is not None and _index(index, event) > limit:
                        reasons.append("specimen_index")
                        break
        if numeric is None:
            reasons.append("non_numeric")
        if unit != checks.unit:
            reasons.append("unit_mismatch")
        elif numeric is not None:
            if comparator or (normalized and not _CENSORED_FLAGS.isdisjoint(normalized)):
                reasons.append("outside_reportable_range")
            elif checks.reportable is not None:
                low, high = checks.reportable
                if (low is not None and numeric < low) or (high is not None and numeric > high):
                    reasons.append("outside_reportable_range")
            if checks.critical is not None:
                low, high = checks.critical
                if (low is not None and numeric <= low) or (high is not None and numeric >= high):
                    reasons.append("critical_value")
            if checks.autoverify is not None:
                low, high = checks.autoverify
                if (low is not None and numeric < low) or (high is not None and numeric > high):
                    reasons.append("outside_autoverify_range")
        if checks.rules:
            context = self._rule_context(event, code, raw, numeric, comparator, unit, flags,
                                         normalized, specimen)  # fmt: skip
            for reason, rule in checks.rules:
                try:
                    holds = rule.holds(context)
                except RuleEvaluationError:
                    holds = True  # fail closed, as stages does
                if holds:
                    reasons.append(reason)
        return reasons

    def _rule_context(
        self,
        event: Mapping[str, Any],
        code: str,
        raw: object,
        numeric: Decimal | None,
        comparator: str | None,
        unit: str,
        flags: tuple[str, ...],
        normalized: tuple[str, ...],
        specimen: str,
    ) -> dict[str, object]:
        """`stages.rule_context` for this result and the specimen's results seen before it."""
        context = _view(code, str(raw), numeric, comparator, unit, flags, normalized)
        earlier = self.specimens.get(specimen, {})
        context["results"] = {other: _view(*pieces) for other, pieces in earlier.items()}
        context.update(
            age=None,
            sex="",
            origin="poc" if event.get("origin") == "poc" else "lab",
            ward="",
            prescriber="",
            diagnoses=(),
        )
        return context

    def _remember_in_specimen(
        self,
        specimen: str,
        code: str,
        raw: object,
        numeric: Decimal | None,
        comparator: str | None,
        unit: str,
        flags: tuple[str, ...],
        normalized: tuple[str, ...],
    ) -> None:
        results = self.specimens.get(specimen)
        if results is None:
            results = self.specimens[specimen] = {}
            if len(self.specimens) > _RECENT_SPECIMENS:
                del self.specimens[next(iter(self.specimens))]
        results[code] = (code, str(raw), numeric, comparator, unit, flags, normalized)

    def _delta(
        self,
        rule: delta_check.DeltaRule,
        patient: str,
        specimen: str,
        code: str,
        numeric: Decimal | None,
        unit: str,
        at: datetime,
    ) -> tuple[str, ...]:
        if numeric is None or not patient:
            return ()  # the store looks up no history without a patient id
        previous = self.history.previous(f"{patient}\x00{code}", specimen, numeric, unit, at)
        if previous is None:
            return ()
        return delta_check.check(numeric, unit, at, previous, rule).reasons

    # --- controls ---------------------------------------------------------------------------

    def _qc(self, event: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
        assert self.monitor is not None
        point = _qc_point(event)
        outcome = self.monitor.add_qc(point)
        stats = self.stats
        stats.qc_evaluated += 1
        decided = self.decided.get((point.instrument, point.test))
        if not outcome.rehold:
            if decided:
                # Events come in time order, so a later rejection reaches back at most to the
                # last accepted run that no later control can share a run with: forget the
                # results measured up to it.
                settled = self.monitor.last_accepted_before(
                    point.instrument, point.test, point.at - self.run_window
                )
                if settled is not None:
                    keep = next((i for i, d in enumerate(decided) if d[0] > settled), len(decided))
                    del decided[:keep]
            return
        stats.qc_runs_rejected += 1
        if not decided:
            return
        since, until = outcome.rehold_since, point.at
        kept = []
        for entry in decided:
            at, ordinal, id_, found = entry
            if (since is None or at > since) and at <= until:
                stats.reheld_by_qc += 1
                if found:
                    stats.held -= 1
                else:
                    stats.autovalidated -= 1
                stats.held += 1
                yield (
                    ordinal,
                    {
                        "id": id_,
                        "decision": "held",
                        "reasons": [*found, QC_FAILED],
                        "reheld_by_qc": True,
                    },
                )
            else:
                kept.append(entry)
        decided[:] = kept


def _index(value: object, event: Mapping[str, Any]) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ReplayError(f"line {event.get('_line')}: index {value!r} is not a number") from None


def _qc_point(event: Mapping[str, Any]) -> QcPoint:
    line = event.get("_line")
    try:
        raw = event["value"]
        try:
            value = Decimal(str(raw))
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite():
            raise ReplayError(f"line {line}: QC value {raw!r} is not a number")
        return QcPoint(
            instrument=str(event["instrument"]),
            test=str(event["test"]),
            level=str(event["level"]),
            lot=str(event["lot"]),
            value=value,
            at=_time(event["at"]),
            run_id=str(event.get("run_id") or ""),
            reagent_lot=str(event.get("reagent_lot") or ""),
        )
    except KeyError as exc:
        raise ReplayError(f"line {line}: QC line without {exc!s}") from None
    except ValueError as exc:
        if isinstance(exc, ReplayError):
            raise
        raise ReplayError(f"line {line}: {exc!s}") from None


def replay(
    ruleset: RuleSet,
    events: Iterable[dict[str, Any]],
    qc_plan: QcPlan | None = None,
    stats: ReplayStats | None = None,
) -> Iterator[dict[str, Any]]:
    """One decision per result event, in input order, plus a `reheld_by_qc` line for each
    result a later QC rejection holds again (with `qc_plan`). `stats`, if given, is filled in."""
    replayer = _Replayer(ruleset, qc_plan, stats if stats is not None else ReplayStats())
    for _ordinal, line in replayer.run(events):
        yield line


@dataclass
class Comparison:
    """How two rule sets' decisions differ on the same events, per test code (a result held
    again by QC counts with its final decision)."""

    results: int = 0
    changed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _final(
    ruleset: RuleSet, events: list[dict[str, Any]], qc_plan: QcPlan | None
) -> list[dict[str, Any]]:
    final: list[dict[str, Any]] = []
    for ordinal, line in _Replayer(ruleset, qc_plan, ReplayStats()).run(events):
        if ordinal == len(final):
            final.append(line)
        else:
            final[ordinal] = {k: v for k, v in line.items() if k != "reheld_by_qc"}
    return final


def compare(
    first: RuleSet,
    second: RuleSet,
    events: list[dict[str, Any]],
    examples: int = 3,
    qc_plan: QcPlan | None = None,
) -> Comparison:
    """Replay the same events under both rule sets and count the decisions that change."""
    tests = [str(e.get("test")) for e in events if e["kind"] == "result"]
    comparison = Comparison()
    pairs = zip(_final(first, events, qc_plan), _final(second, events, qc_plan), tests, strict=True)
    for a, b, test in pairs:
        comparison.results += 1
        if (a["decision"], a["reasons"]) != (b["decision"], b["reasons"]):
            comparison.changed[test] += 1
            kept = comparison.examples.setdefault(test, [])
            if len(kept) < examples:
                kept.append({"id": a["id"], "before": a, "after": b})
    return comparison
