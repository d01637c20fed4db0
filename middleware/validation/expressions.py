"""The biologists' own rules: a small, safe expression language (no Python `eval`).

Rules are written in the `rule-engine` grammar (its own parser; no attribute access to Python
objects, only typed values). A rule *holds* when its expression is true; a rule that holds
gives the reason `rule:<name>` and the result is held for review.

Names a rule can use (the context built by `stages.rule_context`):

- `test_code` (string), `value` (the analyser's text), `numeric` (number or null),
  `comparator` (string: "<", ">" or ""), `unit` (string), `flags` (array of strings, raw and
  normalised flags together)
- `results` — the other results of the same specimen by test code, each a mapping with the keys
  above: `results["K"]["numeric"] > 6.0`; `"K" in results` tests presence
- `age` (years, number or null), `sex` (string), `origin` ("lab" or "poc"), `ward`,
  `prescriber` (strings), `diagnoses` (array of strings)

Examples: `numeric != null and numeric > 6.0 and origin == "poc"`,
`"K" in results and results["K"]["numeric"] > 5.5 and "E11" in diagnoses`.

Built-ins that depend on the clock or chance (`$now`, `$today`, `$random`) and date parsing are
removed: a rule gives the same answer for the same input, which replay and tests depend on.
Unknown names and obvious type errors are refused when the rule is compiled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rule_engine  # type: ignore[import-untyped]
from rule_engine import DataType
from rule_engine.builtins import Builtins  # type: ignore[import-untyped]

__all__ = [
    "CONTEXT_NAMES",
    "CompiledRule",
    "RuleEvaluationError",
    "RuleSyntaxError",
    "compile_rule",
]

_STRINGS = DataType.ARRAY(DataType.STRING)

#: The names a rule may use, with their types (checked when a rule is compiled).
CONTEXT_NAMES: Mapping[str, Any] = {
    "test_code": DataType.STRING,
    "value": DataType.STRING,
    "numeric": DataType.FLOAT,
    "comparator": DataType.STRING,
    "unit": DataType.STRING,
    "flags": _STRINGS,
    "results": DataType.MAPPING(DataType.STRING, DataType.MAPPING(DataType.STRING)),
    "age": DataType.FLOAT,
    "sex": DataType.STRING,
    "origin": DataType.STRING,
    "ward": DataType.STRING,
    "prescriber": DataType.STRING,
    "diagnoses": _STRINGS,
}

# Pure built-ins only: no clock, no randomness, no date parsing (it reads the local timezone).
_SAFE_BUILTINS = (
    "e", "pi", "abs", "all", "any", "sum", "map", "max", "min", "filter", "range", "split",
    "parse_float",
)  # fmt: skip


class RuleSyntaxError(ValueError):
    """A rule's text was refused; `line` and `column` (1-based) point at the problem when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class RuleEvaluationError(Exception):
    """A rule could not be evaluated on a context (a missing result, null compared with a number).

    The stage that runs rules treats this as the rule holding (fail closed)."""


class _PureBuiltins(Builtins):  # type: ignore[misc]
    """Built-ins that refuse unknown names when the rule is compiled, not when it runs."""

    def resolve_type(self, name: str) -> Any:
        if name not in _SAFE_BUILTINS:
            raise rule_engine.errors.SymbolResolutionError(name, symbol_scope="built-in")
        return super().resolve_type(name)


def _context() -> Any:
    context = rule_engine.Context(
        type_resolver=rule_engine.type_resolver_from_dict(dict(CONTEXT_NAMES)),
        mapping_attribute_lookup=False,
        default_timezone="utc",
    )
    defaults = context.builtins
    context.builtins = _PureBuiltins(
        {name: defaults[name] for name in _SAFE_BUILTINS},
        timezone=defaults.timezone,
        value_types={name: defaults.resolve_type(name) for name in _SAFE_BUILTINS},
    )
    return context


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


class CompiledRule:
    """A rule parsed and type-checked once, evaluated many times."""

    __slots__ = ("_rule", "text")

    def __init__(self, text: str, rule: Any) -> None:
        self.text = text
        self._rule = rule

    def holds(self, context: Mapping[str, object]) -> bool:
        """True when the expression is true on `context`; RuleEvaluationError if it cannot say."""
        try:
            return bool(self._rule.matches(context))
        except rule_engine.errors.EngineError as exc:
            raise RuleEvaluationError(f"{self.text!r}: {_describe(exc)}") from None
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise RuleEvaluationError(f"{self.text!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"CompiledRule({self.text!r})"


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    suggestion = getattr(exc, "suggestion", None)
    if suggestion:
        message += f" (did you mean {suggestion!r}?)"
    return str(message)


def compile_rule(text: str) -> CompiledRule:
    """Parse and type-check a rule; RuleSyntaxError (with line and column when known) if bad."""
    if not text.strip():
        raise RuleSyntaxError("the rule is empty")
    try:
        rule = rule_engine.Rule(text, context=_context())
    except rule_engine.errors.RuleSyntaxError as exc:
        token = exc.token
        if token is None:
            line, column = _position(text, len(text.rstrip()))
            raise RuleSyntaxError("the rule ends too early", line, column) from None
        line, column = _position(text, token.lexpos)
        raise RuleSyntaxError(f"unexpected {token.value!r}", line, column) from None
    except rule_engine.errors.SymbolResolutionError as exc:
        raise RuleSyntaxError(
            f"unknown name {('$' if exc.symbol_scope else '') + exc.symbol_name!r}"
            + (f" (did you mean {exc.suggestion!r}?)" if exc.suggestion else "")
        ) from None
    except rule_engine.errors.EngineError as exc:
        raise RuleSyntaxError(_describe(exc)) from None
    return CompiledRule(text, rule)
