"""Deciding a message's results as the daemon runs: the pure pipeline, fed with what only the
daemon knows — the patient's history from the store, the rule-set version people activated,
their switches and blocked devices, and the QC state of each instrument and test.

`LiveValidation` is shared by every analyser session. People change the rule set, the switches
or the blocked devices from the command line or the API; each change writes an audit row, and
`watch()` rebuilds the pipeline when the newest audit row changes (GBUI V-3: switching
auto-validation off is immediate — within `poll` seconds, without a restart).

The QC monitor learns of each committed message (`qc_stored`): its controls (Westgard), and its
patient results, counted against the plan's `results` limit and checked for a reagent lot no
accepted QC run covers (`qc_new_lot`). `start()` rebuilds all of it from the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog

from drivers.models import PreviousResult, Result, SpecimenReport
from middleware.pipeline import Decision, Pipeline, Switches
from middleware.store import IncomingMessage, Store, StoreUnavailable
from middleware.store.governance import GovernanceState
from middleware.store.qc import LotSeen
from middleware.validation.delta import Previous
from middleware.validation.qc_monitor import QcMonitor
from middleware.validation.qc_plan import QcPlan
from middleware.validation.ruleset import load_ruleset_text
from middleware.validation.westgard import QcPoint

__all__ = ["Decided", "LiveValidation", "decide_reports"]

log = structlog.get_logger("labgate.validation")

#: How far back the QC monitor's state is read at start-up.
_QC_HISTORY = timedelta(days=7)
_QC_PRUNE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Decided:
    """A message's reports (each result carrying the previous value its delta check used) and
    one (decision, reasons) per result, with the rule set and biologist that decided."""

    reports: tuple[SpecimenReport, ...]
    decisions: tuple[Decision, ...]
    ruleset: str
    biologist: str


async def decide_reports(
    store: Store,
    pipeline: Pipeline,
    reports: Sequence[SpecimenReport],
    received_at: datetime | None = None,
) -> Decided:
    """Decide every result of `reports` with `pipeline`, looking up the patient's previous
    results in the store for the tests that have a delta check."""
    windows = pipeline.delta_windows()
    decisions: list[Decision] = []
    decided: list[SpecimenReport] = []
    for report in reports:
        previous: dict[str, Previous] = {}
        codes = sorted(
            {
                code
                for result in report.results
                if (code := result.lis_code or result.test_code) in windows and not result.is_qc
            }
        )
        found: dict[str, tuple[str, str, datetime, str]] = {}
        if codes and report.patient.patient_id:
            times = [r.measured_at for r in report.results if r.measured_at is not None]
            before = min(times) if times else (received_at or datetime.now(UTC))
            found = await store.read(
                store.previous_results, report.patient.patient_id, codes, before, report.specimen_id
            )
            previous = {
                code: Previous(Decimal(value), unit, at)
                for code, (value, unit, at, _) in found.items()
            }
        decisions += pipeline.decide_report(report, previous, received_at)
        decided.append(_with_previous(report, found, windows))
    return Decided(tuple(decided), tuple(decisions), pipeline.version, pipeline.biologist)


def _with_previous(
    report: SpecimenReport,
    found: dict[str, tuple[str, str, datetime, str]],
    windows: dict[str, timedelta],
) -> SpecimenReport:
    """The report whose results carry the previous value the delta check looked at (only when
    it lies within the test's window: what the biologist is shown is what was compared)."""
    if not found:
        return report

    def attach(result: Result) -> Result:
        code = result.lis_code or result.test_code
        if code not in found or result.measured_at is None:
            return result
        value, unit, at, _ = found[code]
        if result.measured_at - at > windows[code]:
            return result
        return dataclasses.replace(result, previous=PreviousResult(value, unit, at))

    return dataclasses.replace(report, results=tuple(attach(r) for r in report.results))


class LiveValidation:
    """The daemon's pipeline and everything around it that changes while it runs."""

    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        qc_plan: QcPlan | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.qc = QcMonitor(qc_plan) if qc_plan is not None else None
        self.pipeline = dataclasses.replace(pipeline, qc=self.qc)
        self._on_change = on_change
        self._stamp = -1
        self._ruleset_version_id: int | None = None  # the stored version deciding now
        self._lock = asyncio.Lock()

    async def start(self, fallback_rules: tuple[str, str] | None = None) -> None:
        """Load the QC history and the people's decisions from the store. `fallback_rules`
        (source, YAML text) seeds an empty store with the configured rule set: the first
        activation is recorded like any other (GBUI XI-2)."""
        if fallback_rules is not None:
            await self._seed(*fallback_rules)
        if self.qc is not None:
            await self._load_qc(datetime.now(UTC) - _QC_HISTORY)
        await self.reload()

    async def _load_qc(self, since: datetime) -> None:
        """The QC monitor as it stood: controls (with the reagent lot each was measured on),
        then the patient results counted since each newest accepted run, then the patient
        results measured on a reagent lot without QC. A reagent lot whose accepted runs are all
        older than `since` needs one again (fail closed)."""
        assert self.qc is not None
        store = self.store
        history = await store.read(store.qc_history, since)
        self.qc.load(
            QcPoint(p.instrument, p.test, p.level, p.lot, p.value, p.at, reagent_lot=p.reagent_lot)
            for p in history
        )
        counted = 0
        for instrument, test, after, limit in self.qc.counts_since():
            times = await store.read(store.patient_times, instrument, test, after, limit)
            for at in times:
                self.qc.count_patient(instrument, test, at)
            counted += len(times)
        new_lots = await store.read(store.new_lot_results, since)
        for seen in new_lots:
            self.qc.note_lot(seen.instrument, seen.test, seen.reagent_lot, seen.at)
        log.info(
            "qc_history_loaded",
            points=len(history),
            patient_results_counted=counted,
            new_lot_results=len(new_lots),
        )

    async def _seed(self, source: str, text: str) -> None:
        from middleware.activation import activate_text

        state = await self.store.read(self.store.governance_state)
        if state.active is not None:
            if state.active.text != text:
                log.warning(
                    "ruleset_config_differs_from_active",
                    configured=source,
                    active=f"{state.active.name} {state.active.version}",
                    hint="the store's active version is used; activate the file with "
                    "`labgate rules activate` to change it",
                )
            return
        outcome = await self.store.run(
            activate_text, self.store, text, source, "labgate (configuration)",
            "first activation, from the configuration file",
        )  # fmt: skip
        if not outcome.accepted:
            raise ValueError(f"{source}: rule set not activated: {outcome.anomaly}")

    async def reload(self) -> bool:
        """Rebuild the pipeline if people changed anything since the last look."""
        async with self._lock:
            stamp = await self.store.read(self.store.governance_stamp)
            if stamp == self._stamp:
                return False
            state = await self.store.read(self.store.governance_state)
            self.pipeline = self._pipeline_for(state)
            first = self._stamp < 0
            self._stamp = state.stamp
            if not first and self._on_change is not None:
                # A person released or resent a message, or the store changed under us:
                # let the sender look at its queue now rather than at its next timer.
                self._on_change()
            log.info(
                "validation_reloaded",
                rule_set=self.pipeline.version or None,
                autovalidation=state.autovalidation,
                disabled_biologists=sorted(state.disabled_biologists),
                blocked_devices=sorted(state.blocked_devices),
            )
            return True

    def _pipeline_for(self, state: GovernanceState) -> Pipeline:
        ruleset = self.pipeline.ruleset
        active = state.active
        if active is None:
            ruleset = None
        elif ruleset is None or active.version_id != self._ruleset_version_id:
            # By the stored version, not by name and version: a text activated again under
            # the same label is another rule set all the same.
            ruleset = load_ruleset_text(
                active.text, f"{active.source} (version {active.version_id})"
            )
        self._ruleset_version_id = active.version_id if active is not None else None
        return Pipeline(
            ruleset,
            switches=Switches(state.autovalidation, state.disabled_biologists),
            blocked_devices=state.blocked_devices,
            qc=self.qc,
        )

    async def watch(self, poll: float = 1.0) -> None:
        """Reload whenever people change something; runs until cancelled. Once an hour the QC
        monitor forgets runs older than what it loads at start: kept forever, a year of
        controls would sit in memory for results that never come that late."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + _QC_PRUNE_SECONDS
        while True:
            await asyncio.sleep(poll)
            try:
                await self.reload()
            except StoreUnavailable as exc:
                log.error("store_unavailable", error=str(exc))
            if self.qc is not None and loop.time() >= next_prune:
                next_prune = loop.time() + _QC_PRUNE_SECONDS
                self.qc.prune(datetime.now(UTC) - _QC_HISTORY)

    async def decide(self, reports: Sequence[SpecimenReport], received_at: datetime) -> Decided:
        pipeline = self.pipeline
        if self.qc is not None:
            # The results of this message count for one another before any is stored.
            pipeline = dataclasses.replace(pipeline, qc=self.qc.batch())
        return await decide_reports(self.store, pipeline, reports, received_at)

    async def message(
        self,
        *,
        message_id: str,
        connection: str,
        protocol: str,
        received_at: datetime,
        raw: bytes,
        reports: Sequence[SpecimenReport],
        lis: str,
        content_hash: str | None,
        origin: str = "lab",
        location: str = "",
    ) -> IncomingMessage:
        """A decoded message from an analyser, decided, ready for `Store.save_message`."""
        if origin == "poc":
            # The rules may test `origin == "poc"` (the validation issue, step 6).
            reports = [
                dataclasses.replace(r, extras={**r.extras, "origin": "poc"}) for r in reports
            ]
        decided = await self.decide(reports, received_at)
        return IncomingMessage(
            message_id=message_id,
            connection=connection,
            protocol=protocol,
            received_at=received_at,
            raw=raw,
            reports=decided.reports,
            decisions=decided.decisions,
            ruleset=decided.ruleset,
            biologist=decided.biologist,
            lis=lis,
            forward=any(not report.is_qc and report.results for report in reports),
            content_hash=content_hash,
            origin=origin,
            location=location,
        )

    async def qc_stored(
        self,
        reports: Sequence[SpecimenReport],
        received_at: datetime,
        lis: str,
        message_id: str = "",
    ) -> None:
        """Feed a committed message's results to the QC monitor: QC results to the Westgard
        rules (a rejection holds again the patient results since the last accepted run,
        AUTOVERIFICATION.md §3), patient results to its count and reagent-lot check."""
        if self.qc is None:
            return
        try:
            await self._evaluate_qc(reports, received_at, lis, message_id)
        except Exception:
            # The message is committed and will be acknowledged whatever happens here; a QC
            # evaluation that failed is loud, and the QC history reloads at the next start.
            log.exception("qc_evaluation_failed")

    async def _evaluate_qc(
        self, reports: Sequence[SpecimenReport], received_at: datetime, lis: str, message_id: str
    ) -> None:
        assert self.qc is not None
        lots: list[LotSeen] = []
        try:
            for report in reports:
                for result in report.results:
                    await self._feed(result, received_at, lis, message_id, lots)
        finally:
            # What a restart needs to know the lots again, even if a re-hold failed.
            if lots:
                await self.store.run(self.store.record_reagent_lots, lots)

    async def _feed(
        self, result: Result, received_at: datetime, lis: str, message_id: str, lots: list[LotSeen]
    ) -> None:
        assert self.qc is not None
        test = result.lis_code or result.test_code
        at = result.measured_at or received_at
        if not result.is_qc:
            if self.qc.add_patient(result.instrument, test, at, result.reagent_lot):
                log.warning(
                    "qc_new_reagent_lot",
                    instrument=result.instrument,
                    test=test,
                    reagent_lot=result.reagent_lot,
                )
                lots.append(LotSeen(message_id, result.instrument, test, result.reagent_lot, at,
                                    is_qc=False))  # fmt: skip
            return
        if result.numeric is None:
            return
        point = QcPoint(
            instrument=result.instrument,
            test=test,
            level=result.qc_level,
            lot=result.qc_lot,
            value=result.numeric,
            at=at,
            reagent_lot=result.reagent_lot,
        )
        if result.reagent_lot:
            lots.append(LotSeen(message_id, result.instrument, test, result.reagent_lot, at,
                                is_qc=True, level=result.qc_level))  # fmt: skip
        outcome = self.qc.add_qc(point)
        evaluation = outcome.evaluation
        log.info(
            "qc_evaluated",
            instrument=point.instrument,
            test=point.test,
            level=point.level,
            lot=point.lot,
            reagent_lot=point.reagent_lot or None,
            z=str(evaluation.z) if evaluation.z is not None else None,
            violations=list(evaluation.violations),
            rejected=evaluation.rejected,
        )
        if not outcome.rehold:
            return
        rehold = await self.store.run(
            self.store.rehold_for_qc,
            point.instrument,
            point.test,
            outcome.rehold_since,
            # Up to the next accepted run, or, none yet, to everything stored so far
            # (later results are held when they are decided).
            outcome.rehold_until or max(point.at, received_at),
            lis,
            ",".join(evaluation.violations),
        )
        log.warning(
            "qc_rejected_results_held",
            instrument=point.instrument,
            test=point.test,
            results=rehold.results,
            corrections=rehold.corrections,
        )
        if rehold.corrections and self._on_change is not None:
            self._on_change()
