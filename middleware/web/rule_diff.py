"""Pure helpers of the console's rule-set editor: what is wrong with an edited text (line and
field, from the same loader as `labgate rules check`), what its embedded cases obtain, and which
past decisions it would change against the active version.

No I/O here: the editor (`middleware.web.rule_editor`) reads the store and the history and
calls these in a worker thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from middleware.config.loader import ConfigError, ConfigProblem, validate_yaml
from middleware.store.governance import RuleSetVersion, text_digest
from middleware.validation.cases import CaseOutcome
from middleware.validation.replay import replay
from middleware.validation.ruleset import RuleSet

__all__ = [
    "DecisionDiff",
    "case_rows",
    "diff_decisions",
    "parse_ruleset",
    "problem_rows",
    "reused_version",
]

#: What the daemon decides on a patient result when no rule set is active
#: (`middleware.pipeline.decide_without_rules`).
_WITHOUT_RULES = {"decision": "held", "reasons": ["no_rule"]}

_LinePath = tuple[str | int, ...]


def parse_ruleset(
    text: str, source: str
) -> tuple[RuleSet | None, list[ConfigProblem], dict[_LinePath, int]]:
    """The rule set in `text`, or every problem found with its line and field (the loader of
    `labgate rules check`), and the line of every key, for problems found later."""
    try:
        ruleset, lines = validate_yaml(text, source, RuleSet)
    except ConfigError as exc:
        return None, list(exc.problems), {}
    return ruleset, [], lines


def reused_version(
    ruleset: RuleSet,
    text: str,
    versions: Iterable[RuleSetVersion],
    lines: Mapping[_LinePath, int],
    source: str,
) -> ConfigProblem | None:
    """A stored version with the same name and version but another text: the edit must get a
    version of its own. The daemon reloads its rule set when the active name or version
    changes (`LiveValidation`), and a decision records only "name version", so two texts under
    one label would make a change invisible to both."""
    digest = text_digest(text)
    for stored in versions:
        if (stored.name, stored.version) == (ruleset.name, ruleset.version):
            if stored.sha256 != digest:
                return ConfigProblem(
                    source,
                    lines.get(("version",)),
                    "version",
                    f"{ruleset.name} {ruleset.version} is already stored (version "
                    f"#{stored.version_id}) with another text: give the edit a new version",
                )
    return None


def problem_rows(problems: Sequence[ConfigProblem], text: str) -> list[dict[str, Any]]:
    """Problems for the page and the API, each with the text of its line (shown under it)."""
    source_lines = text.splitlines()
    rows = []
    for problem in problems:
        excerpt = ""
        if problem.line is not None and 0 < problem.line <= len(source_lines):
            excerpt = source_lines[problem.line - 1]
        rows.append(
            {
                "line": problem.line,
                "field": problem.field,
                "message": problem.message,
                "excerpt": excerpt,
            }
        )
    return rows


def case_rows(outcomes: Sequence[CaseOutcome]) -> list[dict[str, Any]]:
    """Each embedded case's expected and obtained decision and reasons (GBUI XI-2)."""
    return [
        {
            "name": o.name,
            "passed": o.passed,
            "expected": {"decision": o.expected[0], "reasons": list(o.expected[1])},
            "obtained": {"decision": o.obtained[0], "reasons": list(o.obtained[1])},
        }
        for o in outcomes
    ]


@dataclass
class DecisionDiff:
    """How the edited rule set would have decided past results, against the active one.

    `changed_per_test` counts results whose decision or reasons differ (as
    `middleware.validation.replay.compare` does); `transitions` counts them by
    "before → after" decision ("held → autovalidated" is the figure a biologist reads first);
    `rows` keeps the first `max_rows` changed results, oldest first.
    """

    results: int = 0
    changed_per_test: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(self.changed_per_test.values())

    def summary(self, against: str) -> dict[str, Any]:
        """What the change record keeps: the keys of `activation.replay_summary`, plus the
        transitions."""
        return {
            "results": self.results,
            "changed": self.changed,
            "changed_per_test": dict(sorted(self.changed_per_test.items())),
            "transitions": dict(sorted(self.transitions.items())),
            "against": against,
        }


def diff_decisions(
    active: RuleSet | None,
    edited: RuleSet,
    events: Sequence[dict[str, Any]],
    max_rows: int = 200,
) -> DecisionDiff:
    """Replay patient-result `events` (time order) under both rule sets and keep what differs.
    Without an active rule set every result was held with `no_rule`, as the daemon does.

    No QC plan: the QC gate's reasons do not depend on the rule set, so they would change
    nothing here, and without one the replay gives exactly one line per result."""
    results = [e for e in events if e.get("kind") == "result"]
    after = replay(edited, results)
    before: Iterable[dict[str, Any]] = (
        replay(active, results) if active is not None else (_WITHOUT_RULES for _ in results)
    )
    diff = DecisionDiff()
    for event, old, new in zip(results, before, after, strict=True):
        diff.results += 1
        if (old["decision"], old["reasons"]) == (new["decision"], new["reasons"]):
            continue
        test = str(event.get("test"))
        diff.changed_per_test[test] += 1
        diff.transitions[f"{old['decision']} → {new['decision']}"] += 1
        if len(diff.rows) < max_rows:
            diff.rows.append(
                {
                    "id": event.get("id"),
                    "at": event.get("at"),
                    "specimen": event.get("specimen"),
                    "instrument": event.get("instrument"),
                    "test": test,
                    "value": event.get("value"),
                    "unit": event.get("unit"),
                    "before": {"decision": old["decision"], "reasons": list(old["reasons"])},
                    "after": {"decision": new["decision"], "reasons": list(new["reasons"])},
                }
            )
    return diff
