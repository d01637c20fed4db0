"""The driver engine: one `ProfileDriver` applies any analyser profile to E1394 messages.

Reading a message (`to_reports`), record by record:

- P starts a patient; its fields are read where `profile.patient` says.
- O starts a specimen (a `SpecimenDraft`); the previous one is closed into a `SpecimenReport`.
- R becomes a `Result`: test code from the universal test ID (`profile.test_id`), value, units,
  range, raw and normalised flags, status, times; the family hook may change or drop it.
- C goes to the result, the specimen or the patient before it (`profile.comments`).
- M, S and vendor records go to the hook; H, Q and L carry nothing to map.

When a specimen closes, the hook has its say, then the specimen id is read (a `DriverError`
when there is none: the message is kept as refused), QC rules are applied, and test codes are
transcoded to the LIS's. Writing to the analyser (orders, query answers) is in `outbound.py`.

`to_reports` is pure and raises only `DriverError`: a bug in a profile or hook becomes a
refused message (kept with its raw bytes, replayable once fixed), never a dead session.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime

from drivers import outbound
from drivers.base import DriverError
from drivers.hooks import HOOKS, Hook, SpecimenDraft, TestCode
from drivers.models import Order, Patient, Query, Result, SpecimenReport
from drivers.profile import NORMALISED_FLAGS, FieldRef, Profile, QcRule
from drivers.timestamps import parse_astm_date, parse_astm_datetime
from protocols import astm

__all__ = ["INTERNAL_ERROR", "ProfileDriver"]

#: Start of the text of a `DriverError` that wraps a bug (never the analyser's fault).
INTERNAL_ERROR = "internal driver error"


def _sequence(record: astm.Record) -> int:
    text = record.field(2).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return 0
    return int(text)


def _comment_text(record: astm.Record) -> str:
    return " ".join(part.strip() for rep in record.repeats(4) for part in rep if part.strip())


class ProfileDriver:
    """An ASTM analyser family described by a `Profile` (and its hook, if any)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.name = profile.name
        #: The text encoding the analyser uses (the daemon's default for this driver).
        self.encoding = profile.encoding
        hook_class = HOOKS[profile.hook] if profile.hook else Hook
        self.hook = hook_class(profile.hook_options)
        self._to_lis = dict(profile.transcoding.tests)
        self._to_analyser = {lis: code for code, lis in self._to_lis.items()}
        self._to_analyser.update(profile.transcoding.to_analyser)
        self._test_codes: dict[tuple[str, ...], TestCode] = {}
        self._qc_regex = {
            id(rule): re.compile(rule.regex) for rule in profile.qc.rules if rule.regex is not None
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # --- transcoding (GBUI XIV) ---------------------------------------------------------

    def transcode(self, code: str) -> str:
        """The LIS code of an analyser test code; unknown codes pass through unchanged."""
        return self._to_lis.get(code, code)

    def to_analyser_code(self, lis_code: str) -> str:
        """The analyser code of a LIS test code; unknown codes pass through unchanged."""
        return self._to_analyser.get(lis_code, lis_code)

    def untranscoded(self, orders: Sequence[Order]) -> list[str]:
        """The LIS codes of `orders` that the table does not know (sent unchanged), so the
        caller can report them; always empty for a profile without a table."""
        if not self._to_analyser:
            return []
        unknown = (code for order in orders for code in order.tests)
        return sorted({code for code in unknown if code not in self._to_analyser})

    # --- universal test IDs -------------------------------------------------------------

    def test_code(self, repeat: tuple[str, ...]) -> TestCode:
        """Analyser code, name and dilution in one repeat of R-3 or O-5."""
        # An analyser names the same few tests all day: each repeat is read once (bounded).
        known = self._test_codes.get(repeat)
        if known is None:
            if len(self._test_codes) >= 4096:
                self._test_codes.clear()
            known = self._test_codes[repeat] = self._read_test_code(repeat)
        return known

    def _read_test_code(self, repeat: tuple[str, ...]) -> TestCode:
        rules = self.profile.test_id
        components = [c.strip() for c in repeat]
        code = ""
        for rule in rules.code:
            first = max(rule.start, 1) - 1
            candidates = components[first:] if rule.onwards else components[first : first + 1]
            code = next((c for c in candidates if c), "")
            if code:
                break

        def component(n: int | None) -> str:
            return components[n - 1] if n is not None and n <= len(components) else ""

        dilution = component(rules.dilution_component)
        if rules.code_separator is not None and rules.code_separator in code:
            code, _, rest = code.partition(rules.code_separator)
            code, dilution = code.strip(), dilution or rest.strip()
        return TestCode(code, component(rules.name_component), dilution)

    # --- results from the analyser ------------------------------------------------------

    def to_reports(self, message: astm.Message, instrument: str) -> list[SpecimenReport]:
        """One report per specimen (O record) of `message`. Raises only `DriverError`."""
        try:
            return self._reports(message, instrument)
        except DriverError:
            raise
        except Exception as exc:
            raise DriverError(
                f"{INTERNAL_ERROR} in {self.name!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def _reports(self, message: astm.Message, instrument: str) -> list[SpecimenReport]:
        records = message.records
        header = records[0] if records and records[0].type.strip().upper() == "H" else None
        reports: list[SpecimenReport] = []
        patient_record: astm.Record | None = None
        patient = Patient()
        patient_comments: list[str] = []
        draft: SpecimenDraft | None = None
        specimen_id = ""
        last = ""  # the record a C record would attach to: patient, order, result, dropped

        for record in records:
            kind = record.type.strip().upper()
            if kind == "P":
                if draft is not None:
                    reports.append(self._close(draft, patient_comments))
                    draft = None
                patient_record, patient, patient_comments = record, self._patient(record), []
                last = "patient"
            elif kind == "O":
                if draft is not None:
                    reports.append(self._close(draft, patient_comments))
                draft = SpecimenDraft(header, patient_record, patient, record, self, instrument)
                # Results are made with the specimen id the order gives now, so that closing
                # the report need not make each of them again (a hook may still change it).
                specimen_id = self._specimen_id(record)
                last = "order"
            elif kind == "R":
                if draft is None:
                    raise DriverError(f"R record {record.field(2)!r} comes before any O record")
                mapped = self._result(record, draft.order, instrument, specimen_id)
                result = self.hook.on_result(draft, record, mapped)
                if result is None:
                    last = "dropped"
                else:
                    draft.results.append(result)
                    last = "result"
            elif kind == "C":
                self._comment(record, last, draft, patient_comments)
            elif kind not in ("H", "L", "Q"):
                self.hook.on_record(draft, record)
        if draft is not None:
            reports.append(self._close(draft, patient_comments))
        return reports

    def _comment(
        self,
        record: astm.Record,
        last: str,
        draft: SpecimenDraft | None,
        patient_comments: list[str],
    ) -> None:
        text = _comment_text(record)
        rules = self.profile.comments
        if not text:
            return
        if last == "patient" and rules.after_patient == "report":
            patient_comments.append(text)
        elif draft is None:
            return
        elif last == "order" and rules.after_order == "report":
            draft.add_extra("comments", text)
        elif last == "result" and rules.after_result == "result":
            draft.results[-1] = replace(
                draft.results[-1], comments=(*draft.results[-1].comments, text)
            )
        elif last == "result" and rules.after_result == "report":
            draft.add_extra("comments", text)

    def _date(self, text: str) -> date | None:
        if self._dummy(text):
            return None
        return parse_astm_date(text)

    def _datetime(self, text: str) -> datetime | None:
        if self._dummy(text):
            return None
        return parse_astm_datetime(text)

    def _dummy(self, text: str) -> bool:
        return any(text.strip().startswith(d) for d in self.profile.dummy_dates if d)

    def _patient(self, record: astm.Record) -> Patient:
        rules = self.profile.patient
        return Patient(
            patient_id=next((v for ref in rules.id if (v := ref.read(record))), ""),
            family_name=rules.family_name.read(record),
            given_name=rules.given_name.read(record),
            birth_date=self._date(rules.birth_date.read(record)),
            sex=rules.sex.read(record),
        )

    def _result(
        self, record: astm.Record, order: astm.Record, instrument: str, specimen_id: str = ""
    ) -> Result:
        profile = self.profile
        repeats = record.repeats(3)
        test = self.test_code(repeats[0]) if repeats else TestCode("", "", "")
        if not test.code:
            raise DriverError(f"R record {record.field(2)!r} has no test code in R-3")

        values = record.repeats(4)
        components = [c.strip() for c in values[0]] if values else []
        rule = profile.value.component
        if rule == "first":
            # Values sometimes sit in a later component (`^24.7`) or pad trailing ones
            # (`2.837141^^^^`): the first non-empty component.
            value = next((c for c in components if c), "")
        else:
            value = components[rule - 1] if rule <= len(components) else ""
        flag_at = profile.value.flag_component
        value_flag = components[flag_at - 1] if flag_at and flag_at <= len(components) else ""
        parsed = astm.parse_value(value)

        raw_units = record.field(profile.units.field).strip()
        per_test = profile.units.per_test.get(test.code, {})
        units = per_test.get(raw_units) or profile.units.map.get(raw_units) or raw_units

        flags = [rep[0].strip() for rep in record.repeats(profile.flags.field) if rep[0].strip()]
        if value_flag and value_flag not in flags:
            flags.append(value_flag)

        raw_status = record.field(profile.status.field).strip()
        status = profile.status.map.get(raw_status, raw_status) or profile.status.default
        if value and value in profile.value.not_computed:
            status = "X"

        return Result(
            specimen_id=specimen_id,
            test_code=test.code,
            value=value,
            test_name=test.name,
            numeric=parsed.number,
            comparator=parsed.comparator,
            units=units,
            reference_range=profile.result.reference_range.read(record),
            flags=tuple(flags),
            status=status,
            measured_at=next(
                (
                    moment
                    for ref in profile.result.measured_at
                    if (moment := self._datetime(ref.read(record if ref.record == "R" else order)))
                ),
                None,
            ),
            instrument=instrument,
            sequence=_sequence(record),
            lis_code=self.transcode(test.code),
            normalized_flags=self.normalise_flags(flags),
            dilution=test.dilution,
            rerun=bool(raw_status) and raw_status in profile.status.rerun,
            reagent_lot=self._reagent_lot(record, order),
        )

    def _reagent_lot(self, record: astm.Record, order: astm.Record) -> str:
        ref = self.profile.result.reagent_lot
        if ref is None:
            return ""
        return ref.read(record if ref.record == "R" else order)

    def normalise_flags(self, flags: Sequence[str]) -> tuple[str, ...]:
        """The vocabulary's flags for raw analyser flags (unknown ones have none)."""
        rules = self.profile.flags
        out: list[str] = []
        for flag in flags:
            mapped: str | None
            if flag in rules.map:
                mapped = rules.map[flag]
            else:
                mapped = flag if rules.standard and flag in NORMALISED_FLAGS else None
            if mapped is not None and mapped not in out:
                out.append(mapped)
        return tuple(out)

    def _close(self, draft: SpecimenDraft, patient_comments: list[str]) -> SpecimenReport:
        self.hook.on_order_end(draft)
        profile = self.profile
        order = draft.order
        specimen_id = self._specimen_id(order)
        if not specimen_id:
            places = ", ".join(str(ref) for ref in profile.specimen.id)
            raise DriverError(f"O record {order.field(2)!r} carries no specimen id in {places}")
        is_qc = any(self._qc_rule_matches(rule, draft, specimen_id) for rule in profile.qc.rules)
        level = lot = ""
        if is_qc:
            level = self._read_context(profile.qc.level, draft)
            lot = self._read_context(profile.qc.lot, draft)
        results = tuple(self._settle(r, specimen_id, is_qc, level, lot) for r in draft.results)
        extras = dict(draft.extras)
        if patient_comments:
            extras["patient_comments"] = " | ".join(patient_comments)
        if self._to_lis:
            unknown = sorted({r.test_code for r in results if r.test_code not in self._to_lis})
            if unknown:
                extras["untranscoded_tests"] = ",".join(unknown)
        ordered = (self.test_code(rep).code for rep in order.repeats(5))
        return SpecimenReport(
            specimen_id=specimen_id,
            patient=draft.patient,
            results=results,
            ordered_tests=tuple(code for code in ordered if code),
            collected_at=self._datetime(profile.specimen.collected_at.read(order)),
            is_qc=is_qc,
            extras=extras,
        )

    def _specimen_id(self, order: astm.Record) -> str:
        return next((v for ref in self.profile.specimen.id if (v := ref.read(order))), "")

    @staticmethod
    def _settle(result: Result, specimen_id: str, is_qc: bool, level: str, lot: str) -> Result:
        """`result` with its specimen's id and QC identity; itself when it has them already
        (most do: making a Result again costs more than mapping its record)."""
        qc_level = (result.qc_level or level) if is_qc else ""
        qc_lot = (result.qc_lot or lot) if is_qc else ""
        if (
            result.specimen_id == specimen_id
            and result.is_qc == is_qc
            and result.qc_level == qc_level
            and result.qc_lot == qc_lot
        ):
            return result
        return replace(
            result, specimen_id=specimen_id, is_qc=is_qc, qc_level=qc_level, qc_lot=qc_lot
        )

    @staticmethod
    def _context(ref: FieldRef, draft: SpecimenDraft) -> astm.Record | None:
        return {"H": draft.header, "P": draft.patient_record, "O": draft.order}.get(ref.record)

    def _read_context(self, ref: FieldRef | None, draft: SpecimenDraft) -> str:
        return ref.read(self._context(ref, draft)) if ref is not None else ""

    def _qc_rule_matches(self, rule: QcRule, draft: SpecimenDraft, specimen_id: str) -> bool:
        where = rule.where
        if where == "specimen_id":
            values = [specimen_id]
        elif where == "patient_id":
            values = [draft.patient.patient_id]
        else:
            assert isinstance(where, FieldRef)
            record = self._context(where, draft)
            if record is None:
                return False
            if where.component is None:
                values = [c.strip() for rep in record.repeats(where.field) for c in rep]
            else:
                values = [where.read(record)]
        pattern = self._qc_regex.get(id(rule))
        for value in values:
            if not value:
                continue
            if (
                value in rule.equals
                or any(c.lower() in value.lower() for c in rule.contains)
                or any(value.startswith(p) for p in rule.prefix)
                or (pattern is not None and pattern.search(value) is not None)
            ):
                return True
        return False

    # --- to the analyser (outbound.py) --------------------------------------------------

    def build_order_message(
        self,
        orders: Sequence[Order],
        *,
        sender: str,
        receiver: str,
        now: datetime,
        query_answer: bool = False,
    ) -> bytes:
        """E1394 text (H, then P and O per order, L) downloading `orders` to the analyser;
        LIS test codes are transcoded to analyser codes. Raises `DriverError` for an order
        that cannot be written (a specimen id or test code the encoding cannot carry)."""
        return outbound.order_message(
            self, orders, sender=sender, receiver=receiver, now=now, query_answer=query_answer
        )

    def parse_queries(self, message: astm.Message) -> list[Query]:
        """The analyser's host queries (Q records) in `message`. Raises only `DriverError`."""
        try:
            return outbound.queries(self, message)
        except DriverError:
            raise
        except Exception as exc:
            raise DriverError(
                f"{INTERNAL_ERROR} in {self.name!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def build_no_order_message(
        self, query: Query, *, sender: str, receiver: str, now: datetime
    ) -> bytes:
        """The answer to `query` when labgate has no order for its specimens: H and an L
        record whose termination code says "no information" (profile `orders`)."""
        return outbound.no_order_message(self, query, sender=sender, receiver=receiver, now=now)
