"""Analyser profiles: what differs between ASTM analyser families, written as data.

A profile is a YAML file (``drivers/profiles/<name>.yaml``, or a lab's own file) validated by
the pydantic models below. It says where each piece of information sits in the E1394 records
of that family, how its flags, statuses and units read in the lab's vocabulary, which
specimens are quality control, how its test codes translate to the LIS's (GBUI XIV
"tables de transcodage"), and how to write orders back to it. What YAML cannot express is a
small named hook (`drivers.hooks`).

Places in a record are written ``<record>-<field>[.<component>]`` with the standard's numbering
(field 1 is the record type, as in `astm.Record.field`): ``O-3`` is the first component of O-3,
``O-4.3`` its third component, ``O-3.*`` the first non-empty component of any repeat. Values
are read with their space padding trimmed.

A profile may start from another one with ``extends: <name or path>``: mappings are merged key
by key, anything else is replaced. A bad file is refused with a `ProfileError` that names the
file, the line when it can be found, and the field.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.hooks import HOOKS
from protocols import astm
from protocols.errors import LocalProtocolError

__all__ = [
    "NORMALISED_FLAGS",
    "CodeRule",
    "FieldRef",
    "Profile",
    "ProfileError",
    "load_profile_file",
    "profile_from_mapping",
]

#: The flag vocabulary shared by the pipeline, the UI and the LIS (models.Result).
NORMALISED_FLAGS = ("L", "H", "LL", "HH", "<", ">", "N", "A")
NormalisedFlag = Literal["L", "H", "LL", "HH", "<", ">", "N", "A"]

_REF = re.compile(r"([A-Z])-([1-9][0-9]{0,2})(?:\.([1-9][0-9]{0,2}|\*))?")


class ProfileError(ValueError):
    """A profile file that cannot be used; the text names the file, line and field."""


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A place in a record: ``O-3`` (component 1), ``O-4.3``, ``O-3.*`` (first non-empty)."""

    record: str
    field: int
    component: int | None  # None: the first non-empty component of any repeat

    def read(self, record: astm.Record | None) -> str:
        """The trimmed text at this place of `record` ("" if absent or no record)."""
        if record is None:
            return ""
        if self.component is not None:
            return record.component(self.field, self.component).strip()
        for repeat in record.repeats(self.field):
            for component in repeat:
                if component.strip():
                    return component.strip()
        return ""

    def __str__(self) -> str:
        component = "" if self.component == 1 else f".{self.component or '*'}"
        return f"{self.record}-{self.field}{component}"


def _parse_ref(value: object) -> object:
    if isinstance(value, FieldRef) or not isinstance(value, str):
        return value
    match = _REF.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not a record place: write <record>-<field>[.<component>|.*], "
            "for example O-3, O-4.3 or O-3.*"
        )
    record, field, component = match.groups()
    return FieldRef(record, int(field), None if component == "*" else int(component or 1))


Ref = Annotated[FieldRef, BeforeValidator(_parse_ref)]


@dataclass(frozen=True, slots=True)
class CodeRule:
    """Where to look for a test code in a universal test ID: component `start` exactly, or
    (`onwards`) the first non-empty component from `start` on; start 0 = any component."""

    start: int
    onwards: bool


def _parse_code_rule(value: object) -> object:
    if isinstance(value, CodeRule):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 99:
        return CodeRule(value, False)
    if isinstance(value, str):
        text = value.strip()
        if text == "*":
            return CodeRule(0, True)
        if text.endswith("+") and text[:-1].isdigit() and 1 <= int(text[:-1]) <= 99:
            return CodeRule(int(text[:-1]), True)
        if text.isdigit() and 1 <= int(text) <= 99:
            return CodeRule(int(text), False)
    raise ValueError(
        f"{value!r} is not a component rule: write N (component N), 'N+' (first non-empty "
        "from component N on) or '*' (any component)"
    )


CodeRuleField = Annotated[CodeRule, BeforeValidator(_parse_code_rule)]
Component = Annotated[int, Field(ge=1, le=99)]
FieldNumber = Annotated[int, Field(ge=2, le=99)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _only_records(refs: tuple[FieldRef, ...], allowed: str, what: str) -> None:
    for ref in refs:
        if ref.record not in allowed:
            raise ValueError(f"{what} must be read from {'/'.join(allowed)} records, not {ref}")


class SpecimenRules(_Model):
    """Where the specimen is identified on the O record."""

    #: Places tried in turn; the first non-empty one is the specimen id.
    id: tuple[Ref, ...] = (FieldRef("O", 3, None), FieldRef("O", 4, None))
    collected_at: Ref = FieldRef("O", 8, 1)

    @model_validator(mode="after")
    def _on_order(self) -> SpecimenRules:
        if not self.id:
            raise ValueError("id needs at least one place")
        _only_records((*self.id, self.collected_at), "O", "the specimen")
        return self


class PatientRules(_Model):
    """Where the patient is on the P record."""

    #: Places tried in turn for the patient id; orders are written to the first one.
    id: tuple[Ref, ...] = (FieldRef("P", 3, 1), FieldRef("P", 4, 1))
    family_name: Ref = FieldRef("P", 6, 1)
    given_name: Ref = FieldRef("P", 6, 2)
    birth_date: Ref = FieldRef("P", 8, 1)
    sex: Ref = FieldRef("P", 9, 1)

    @model_validator(mode="after")
    def _on_patient(self) -> PatientRules:
        if not self.id:
            raise ValueError("id needs at least one place")
        refs = (*self.id, self.family_name, self.given_name, self.birth_date, self.sex)
        _only_records(refs, "P", "the patient")
        return self


class TestIdRules(_Model):
    """How to read a universal test ID (R-3 and each repeat of O-5), and write one (O-5)."""

    #: Rules tried in turn for the analyser's test code (first non-empty wins).
    code: tuple[CodeRuleField, ...] = (CodeRule(4, True), CodeRule(0, True))
    #: Text after this separator in the code is a dilution (Roche ``685/`` -> 685, "").
    code_separator: str | None = Field(default=None, min_length=1, max_length=1)
    name_component: Component | None = None
    dilution_component: Component | None = None
    #: Components written for one test when sending orders; ``{code}`` is the analyser code.
    order_template: tuple[str, ...] = ("", "", "", "{code}")

    @field_validator("code")
    @classmethod
    def _some_rule(cls, value: tuple[CodeRule, ...]) -> tuple[CodeRule, ...]:
        if not value:
            raise ValueError("code needs at least one rule")
        return value

    @field_validator("order_template")
    @classmethod
    def _has_code(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if sum(part.count("{code}") for part in value) != 1:
            raise ValueError("order_template must contain {code} exactly once")
        return value


class ResultRules(_Model):
    """Places of the R record the other sections do not cover."""

    reference_range: Ref = FieldRef("R", 6, 1)
    #: Tried in turn: R-13 completed, then R-12 started (the LIS2-A2 example gives only that);
    #: O places read the specimen's O record (O-23, results reported, for analysers that date
    #: only the order).
    measured_at: tuple[Ref, ...] = (FieldRef("R", 13, 1), FieldRef("R", 12, 1))
    #: Where the analyser names the reagent lot a result was measured with (E1394 has no field
    #: for it: vendors put it in a component of R-3 or R-4, or on the order), when it does; a
    #: hook may find it elsewhere (Ortho VISION: the card lot in its M records).
    reagent_lot: Ref | None = None

    @model_validator(mode="after")
    def _on_result(self) -> ResultRules:
        _only_records((self.reference_range,), "R", "the reference range")
        _only_records(self.measured_at, "RO", "the measurement time")
        if self.reagent_lot is not None:
            _only_records((self.reagent_lot,), "RO", "the reagent lot")
        return self


class ValueRules(_Model):
    """Where the value is in R-4 (first non-empty component by default)."""

    component: Component | Literal["first"] = "first"
    #: Component of R-4 that carries a flag (Beckman DxH ``146!  H ``).
    flag_component: Component | None = None
    #: Values meaning "not computed": the result gets status X whatever R-9 says.
    not_computed: tuple[str, ...] = ()


class UnitRules(_Model):
    """R-5 as sent, or translated: per test first, then for every test."""

    field: FieldNumber = 5
    map: dict[str, str] = {}
    per_test: dict[str, dict[str, str]] = {}


class FlagRules(_Model):
    """R-7 abnormal flags (one per repeat) to the normalised vocabulary."""

    field: FieldNumber = 7
    #: The vocabulary's own letters (L H LL HH < > N A) map to themselves.
    standard: bool = True
    #: Vendor flag -> normalised flag; null keeps the flag raw only.
    map: dict[str, NormalisedFlag | None] = {}


class StatusRules(_Model):
    """R-9 result status to the status the lab stores (E1394 letters)."""

    field: FieldNumber = 9
    default: str = Field(default="F", min_length=1)
    map: dict[str, str] = {}
    #: Raw statuses that mean the result is a rerun of the same test on the same specimen.
    rerun: tuple[str, ...] = ()


class QcRule(_Model):
    """One way to tell a QC specimen: a place (or the specimen/patient id) and one test."""

    where: Ref | Literal["specimen_id", "patient_id"]
    equals: tuple[str, ...] = ()
    contains: tuple[str, ...] = ()  # case-insensitive
    prefix: tuple[str, ...] = ()
    regex: str | None = None

    @field_validator("where")
    @classmethod
    def _context(cls, value: FieldRef | str) -> FieldRef | str:
        if isinstance(value, FieldRef):
            _only_records((value,), "HPO", "a QC rule")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_test(self) -> QcRule:
        tests = [bool(self.equals), bool(self.contains), bool(self.prefix), self.regex is not None]
        if sum(tests) != 1:
            raise ValueError("give exactly one of equals, contains, prefix, regex")
        return self


class QcRules(_Model):
    """A specimen is QC when any rule matches; level and lot are read when known."""

    rules: tuple[QcRule, ...] = (
        QcRule(where=FieldRef("H", 12, 1), equals=("Q",)),
        QcRule(where=FieldRef("O", 12, 1), equals=("Q",)),
    )
    level: Ref | None = None
    lot: Ref | None = None

    @model_validator(mode="after")
    def _context(self) -> QcRules:
        _only_records(tuple(r for r in (self.level, self.lot) if r), "HPO", "QC level and lot")
        return self


class CommentRules(_Model):
    """Where a C record's text (C-4) goes, by the record it follows: the result's comments,
    the report's extras ("comments", "patient_comments"), or nowhere."""

    after_result: Literal["result", "report", "ignore"] = "result"
    after_order: Literal["report", "ignore"] = "report"
    after_patient: Literal["report", "ignore"] = "report"


class Transcoding(_Model):
    """Test codes analyser <-> LIS (GBUI XIV). Codes not listed pass through unchanged and are
    reported (`SpecimenReport.extras["untranscoded_tests"]`, `ProfileDriver.untranscoded`)."""

    #: analyser code -> LIS code
    tests: dict[str, str] = {}
    #: LIS code -> analyser code, where the reverse of `tests` is ambiguous or must differ
    to_analyser: dict[str, str] = {}

    @model_validator(mode="after")
    def _reversible(self) -> Transcoding:
        by_lis: dict[str, list[str]] = {}
        for analyser, lis in self.tests.items():
            by_lis.setdefault(lis, []).append(analyser)
        ambiguous = {
            lis: codes
            for lis, codes in by_lis.items()
            if len(codes) > 1 and lis not in self.to_analyser
        }
        if ambiguous:
            detail = "; ".join(f"{lis} <- {', '.join(codes)}" for lis, codes in ambiguous.items())
            raise ValueError(
                f"several analyser codes share a LIS code ({detail}): say in to_analyser "
                "which one orders use"
            )
        return self


class OrderRules(_Model):
    """How labgate writes to the analyser: order downloads and query answers."""

    #: Field, repeat, component and escape delimiters of the messages labgate sends.
    delimiters: str = "|\\^&"
    version: str = "LIS2-A2"  # H-13
    processing_id: str = "P"  # H-12
    #: O-3 components; ``{specimen}`` is the specimen id.
    specimen_template: tuple[str, ...] = ("{specimen}",)
    specimen_descriptor: str = ""  # O-16, when the analyser needs one
    report_type_order: str = "O"  # O-26 of a download
    report_type_query: str = "Q"  # O-26 of a query answer
    #: Q-3 component that holds the specimen id (any non-empty component otherwise).
    query_specimen_component: Component = 2
    #: L-3 of the answer to a query about specimens labgate has no order for. LIS2-A2 "I":
    #: no information available from the last query (letter unverified, PROTOCOLS.md §2.2).
    no_order_termination_code: str = Field(default="I", min_length=1, max_length=1)

    @field_validator("delimiters")
    @classmethod
    def _four(cls, value: str) -> str:
        if len(value) != 4:
            raise ValueError("give the four delimiters: field, repeat, component, escape")
        try:
            astm.Delimiters(*value)
        except LocalProtocolError as exc:  # the codec's own rule: four distinct, no CR/LF
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("specimen_template")
    @classmethod
    def _has_specimen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if sum(part.count("{specimen}") for part in value) != 1:
            raise ValueError("specimen_template must contain {specimen} exactly once")
        return value


class Profile(_Model):
    """One analyser family (or one lab's variant of it)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    extends: str | None = None
    #: Text encoding of the analyser's messages (what the daemon decodes with by default).
    encoding: str = "latin-1"
    #: Placeholder dates some analysers send for "unknown" (Phadia's 18991230): read as none.
    dummy_dates: tuple[str, ...] = ()
    specimen: SpecimenRules = SpecimenRules()
    patient: PatientRules = PatientRules()
    test_id: TestIdRules = TestIdRules()
    result: ResultRules = ResultRules()
    value: ValueRules = ValueRules()
    units: UnitRules = UnitRules()
    flags: FlagRules = FlagRules()
    status: StatusRules = StatusRules()
    qc: QcRules = QcRules()
    comments: CommentRules = CommentRules()
    transcoding: Transcoding = Transcoding()
    orders: OrderRules = OrderRules()
    #: A family hook from `drivers.hooks` for what YAML cannot say, and its options.
    hook: str | None = None
    hook_options: dict[str, Any] = {}

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
        return value


# --- loading ------------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc` (as deep as it can be followed)."""
    line = None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the profile: {exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of settings, not {type(data).__name__}")
    return data, node


def _resolve_extends(name: str, path: Path, search: Path) -> Path:
    if name.endswith((".yaml", ".yml")) or "/" in name:
        candidate = Path(name)
        return candidate if candidate.is_absolute() else path.parent / candidate
    return search / f"{name}.yaml"


def _load_data(path: Path, search: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ProfileError(f"{path}: extends itself ({chain})")
    data, node = _read_yaml(path)
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        line = _line_of(node, ("extends",))
        raise ProfileError(f"{path}{f':{line}' if line else ''}: extends: give a profile name")
    parent_path = _resolve_extends(parent.strip(), path, search)
    if not parent_path.is_file():
        raise ProfileError(f"{path}: extends: no profile {parent!r} ({parent_path})")
    base = _load_data(parent_path, search, (*seen, resolved))
    base.pop("name", None)
    return _merge(base, data)


def _describe(exc: ValidationError, path: Path, node: yaml.Node | None) -> str:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(str(part) for part in loc) or "(top level)"
        line = _line_of(node, loc)
        problems.append(f"{path}{f':{line}' if line else ''}: {where}: {error['msg']}")
    return "\n".join(problems)


def load_profile_file(path: Path, search: Path | None = None) -> Profile:
    """Read and validate the profile at `path`; `extends` names are looked up in `search`
    (default: the file's own folder). Raises `ProfileError`."""
    path = Path(path)
    search = search or path.parent
    data = _load_data(path, search, ())
    _, node = _read_yaml(path)
    return profile_from_mapping(data, source=path, node=node)


def profile_from_mapping(
    data: Mapping[str, Any], *, source: Path | str = "<profile>", node: yaml.Node | None = None
) -> Profile:
    """Validate an already-loaded profile mapping (its hook options too). Raises
    `ProfileError` naming `source` and the field."""
    path = Path(source)
    try:
        profile = Profile.model_validate(dict(data))
    except ValidationError as exc:
        raise ProfileError(_describe(exc, path, node)) from exc
    if profile.hook is not None:
        hook = HOOKS.get(profile.hook)
        if hook is None:
            line = _line_of(node, ("hook",))
            raise ProfileError(
                f"{path}{f':{line}' if line else ''}: hook: unknown hook {profile.hook!r}; "
                f"known: {', '.join(sorted(HOOKS))}"
            )
        try:
            hook.options_model.model_validate(profile.hook_options)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                loc = ("hook_options", *error["loc"])
                line = _line_of(node, loc)
                where = ".".join(str(part) for part in loc)
                problems.append(f"{path}{f':{line}' if line else ''}: {where}: {error['msg']}")
            raise ProfileError("\n".join(problems)) from exc
    elif profile.hook_options:
        raise ProfileError(f"{path}: hook_options: given without a hook")
    return profile
