"""Replay: what a rule set would have decided on past results, without touching the live store.

Input: JSON lines in time order, results and QC runs (the format is in the validation issue and
the README). Each result line yields `{"id", "decision", "reasons"}`. The patient's previous
result for a test (another specimen) feeds the delta check, and the other results already seen
for the same specimen feed the biologists' consistency rules, as in the live pipeline.
QC lines are read and counted; the Westgard gate joins the replay when QC targets per lot get a
home in the configuration.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from drivers.models import Result
from middleware.pipeline import Pipeline
from middleware.validation.delta import Previous
from middleware.validation.ruleset import RuleSet
from middleware.validation.stages import SpecimenContext

__all__ = ["Comparison", "ReplayError", "compare", "read_events", "replay"]

_RECENT_SPECIMENS = 10_000


class ReplayError(ValueError):
    """An input line that is not a valid event; says which line and why."""


def read_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events from JSON lines (blank lines skipped); ReplayError names the bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"line {number}: not JSON: {exc.msg}") from None
        if not isinstance(event, dict) or event.get("kind") not in {"result", "qc"}:
            raise ReplayError(f"line {number}: expected an object with kind result or qc")
        event["_line"] = number
        yield event


def _number(value: object) -> tuple[Decimal | None, str | None]:
    text = str(value).strip()
    comparator = text[0] if text[:1] in ("<", ">") else None
    try:
        return Decimal(text.lstrip("<> ")), comparator
    except InvalidOperation:
        return None, None


def replay(ruleset: RuleSet, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One decision per result event, in input order."""
    pipeline = Pipeline(ruleset)
    previous: dict[tuple[str, str], tuple[str, Previous]] = {}
    # Results of recent specimens, for consistency rules. A specimen's results arrive close
    # together in time, so only the most recent ones are kept (memory stays flat on long replays).
    specimens: OrderedDict[str, list[Result]] = OrderedDict()
    for event in events:
        if event["kind"] != "result":
            continue
        try:
            patient, specimen, test = (
                str(event["patient"]),
                str(event["specimen"]),
                str(event["test"]),
            )
            at = datetime.fromisoformat(str(event["at"]))
            raw_value = event["value"]
        except (KeyError, ValueError) as exc:
            raise ReplayError(f"line {event.get('_line')}: {exc}") from None
        numeric, comparator = _number(raw_value)
        result = Result(
            specimen_id=specimen,
            test_code=test,
            value=str(raw_value),
            numeric=numeric,
            comparator=comparator,
            units=str(event.get("unit", "")),
            flags=tuple(event.get("flags") or ()),
            measured_at=at,
            instrument=str(event.get("instrument", "")),
        )
        indices = event.get("indices") or {}
        same_specimen = specimens.get(specimen)
        if same_specimen is None:
            same_specimen = specimens[specimen] = []
            if len(specimens) > _RECENT_SPECIMENS:
                specimens.popitem(last=False)
        context = SpecimenContext(
            others=tuple(same_specimen),
            indices={k: Decimal(str(v)) for k, v in indices.items() if v is not None},
            origin="poc" if event.get("origin") == "poc" else "lab",
        )
        earlier = previous.get((patient, test))
        before = earlier[1] if earlier is not None and earlier[0] != specimen else None
        decision, reasons = pipeline.decide_result(result, context, before)
        yield {"id": event.get("id"), "decision": decision, "reasons": list(reasons)}
        same_specimen.append(result)
        if numeric is not None:
            previous[(patient, test)] = (specimen, Previous(numeric, result.units, at))


@dataclass
class Comparison:
    """How two rule sets' decisions differ on the same events, per test code."""

    results: int = 0
    changed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def compare(
    first: RuleSet, second: RuleSet, events: list[dict[str, Any]], examples: int = 3
) -> Comparison:
    """Replay the same events under both rule sets and count the decisions that change."""
    tests = {id(e): str(e.get("test")) for e in events}
    result_events = [e for e in events if e["kind"] == "result"]
    comparison = Comparison()
    pairs = zip(replay(first, events), replay(second, events), result_events, strict=True)
    for a, b, event in pairs:
        comparison.results += 1
        if (a["decision"], a["reasons"]) != (b["decision"], b["reasons"]):
            test = tests[id(event)]
            comparison.changed[test] += 1
            kept = comparison.examples.setdefault(test, [])
            if len(kept) < examples:
                kept.append({"id": a["id"], "before": a, "after": b})
    return comparison
