"""Turn stored specimen reports into the HPRIM Santé results message a LIS reads (`lis.kind:
hprim`): the same content as the HL7 ORU of `middleware.lis.oru`, written by
`protocols.hprim.build_results`.

Per result: value, units, reference range, flags (HPRIM's OBX-9 list; a flag outside it goes
into a comment rather than refusing the message), status, the analyser (OBX-16), and C records
under the OBX for what the LIS must know: "validé électroniquement" with the responsible
biologist and the rule set (and OBX-17) for an auto-validated result, the decision and its
reasons for a held one, the previous value the delta check used, the point-of-care origin,
and "annule et remplace" for a correction (OBX-12 and OBR-26 ``C``). The builder's own
texts are used for the marks: they avoid the em dash, which ISO-8859-1 cannot encode.

Text from analysers is made safe for the file: CR and LF become spaces, and characters the
configured encoding lacks become ``?`` rather than refusing the whole message.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from drivers.models import Result, SpecimenReport
from middleware.config.settings import HprimLinkSettings, LisSettings
from middleware.lis.transcoding import lis_test_code
from protocols import hprim

__all__ = ["build_hprim_message", "hprim_file_name"]

# ASTM R-9 result status -> OBX-12, as oru.py maps it for HL7: W ("to be verified") must not
# reach the LIS as final; unknown codes are final, the decision note says held anyway.
_STATUS = {"F": "F", "P": "P", "C": "C", "X": "X", "W": "P", "I": "I", "R": "F", "V": "F"}
_H3_MAX = 12  # H-3 file name, at most 12 characters [lib]


def hprim_file_name(control_id: str) -> str:
    """H-3: the message's name. The outbox control id (20 characters for labgate's own) is too
    long for H-3's 12, so its last 12 characters, which are random hex, stand for it."""
    return control_id[-_H3_MAX:]


def build_hprim_message(
    lis: LisSettings,
    control_id: str,
    reports: tuple[SpecimenReport, ...],
    decisions: tuple[tuple[str, tuple[str, ...]], ...],
    created_at: datetime | None = None,
) -> bytes:
    """One HPRIM Santé message for the patient reports of one analyser message (QC reports
    stay home). Deterministic for the same arguments, so a rebuild after a crash gives the
    same bytes. Raises `LocalProtocolError` for what HPRIM cannot carry (a specimen id over
    23 characters, say): the sender then rejects the message for a person to see."""
    link = lis.hprim or HprimLinkSettings(transport="spool", directory=".")
    clean = _Cleaner(link.encoding)
    header = hprim.Header(
        sender_id=clean(lis.sending_application),
        sender_name=clean(lis.sending_facility),
        receiver_id=clean(lis.receiving_application),
        receiver_name=clean(lis.receiving_facility),
        created_at=created_at or datetime.now(UTC),
        file_name=hprim_file_name(control_id),
        version=link.version,
        timezone=datetime.now().astimezone().tzinfo,  # local time, as HPRIM has no zone
    )
    orders: dict[str, list[hprim.Order]] = {}
    first_report: dict[str, SpecimenReport] = {}
    decision_iter = iter(decisions)
    for report in reports:
        report_decisions = [next(decision_iter) for _ in report.results]
        if report.is_qc or not report.results:
            continue
        observations = tuple(
            _observation(result, decision, reasons, report.extras, lis.transcoding, clean)
            for result, (decision, reasons) in zip(report.results, report_decisions, strict=True)
        )
        key = report.patient.patient_id
        first_report.setdefault(key, report)
        orders.setdefault(key, []).append(
            hprim.Order(
                specimen_id=clean(report.specimen_id),
                collected_at=report.collected_at,
                observations=observations,
            )
        )
    patients = [
        hprim.Patient(
            patient_id=clean(report.patient.patient_id),
            family_name=clean(report.patient.family_name),
            given_name=clean(report.patient.given_name),
            birth_date=report.patient.birth_date,
            sex=report.patient.sex if report.patient.sex in ("M", "F", "U") else "",
            orders=tuple(orders[key]),
        )
        # A specimen without a patient id first, as oru.py orders them.
        for key, report in sorted(first_report.items(), key=lambda entry: entry[0] != "")
    ]
    message = hprim.build_results(header, patients)
    return hprim.encode_message(message, link.encoding)


class _Cleaner:
    """Text as the file can carry it: no CR/LF, only characters of the encoding."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def __call__(self, text: str) -> str:
        flat = text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
        return flat.encode(self.encoding, errors="replace").decode(self.encoding)


def _observation(
    result: Result,
    decision: str,
    reasons: tuple[str, ...],
    decided_by: Mapping[str, str],
    transcoding: Mapping[str, str],
    clean: _Cleaner,
) -> hprim.Observation:
    notes = [clean(comment) for comment in result.comments]
    flags = result.normalized_flags or result.flags
    known = tuple(flag for flag in flags if flag in hprim.ABNORMAL_FLAGS)
    others = [flag for flag in flags if flag not in hprim.ABNORMAL_FLAGS]
    if others:
        notes.append(clean(f"indicateurs de l'analyseur: {' '.join(others)}"))
    validation = None
    if decision == "autovalidated":
        validation = hprim.ElectronicValidation(
            biologist=clean(decided_by.get("biologist") or "?"),
            ruleset=clean(decided_by.get("ruleset") or "?"),
        )
    else:
        # A held result must never look validated to the LIS: say what was decided and why.
        notes.append(
            clean(f"labgate: {decision}" + (f" ({', '.join(reasons)})" if reasons else ""))
        )
    if result.previous is not None:
        previous = result.previous
        notes.append(
            clean(
                f"valeur antérieure: {previous.value} {previous.unit}".rstrip()
                + f" ({previous.at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"
            )
        )
    point_of_care = None
    if decided_by.get("origin") == "poc":
        point_of_care = hprim.PointOfCare(
            device=clean(result.instrument), location=clean(decided_by.get("location") or "?")
        )
    numeric = result.numeric is not None and result.comparator is None
    value = clean(result.value)
    return hprim.Observation(
        code=clean(lis_test_code(result, transcoding)),
        label=clean(result.test_name or result.test_code),
        value=value,
        # NM only for a plain decimal the builder would also call a number ("1e3" goes as ST).
        value_type="" if numeric else "ST",
        units=clean(result.units),
        reference_range=clean(result.reference_range),
        abnormal_flags=known,
        status=_STATUS.get(result.status, "F"),
        observed_at=result.measured_at,
        producer=clean(result.instrument),
        validation=validation,
        point_of_care=point_of_care,
        correction=bool(decided_by.get("correction")),
        notes=tuple(notes),
    )
