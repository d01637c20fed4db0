"""The live daemon under the lab's control (real daemon, real sockets, real SQLite file):

- the QC gate: a Westgard rejection holds the patient results since the last accepted run —
  one already at the LIS is sent again as a correction (OBX-11 C) — and the results after it;
- switches thrown from the command line while the daemon runs take effect at once
  (`autovalidation_disabled`, `biologist_disabled`), a blocked device's results are quarantined
  and never reach the LIS;
- the previous value the delta check used, and a POC device's origin, reach the LIS.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from e2e.test_astm_transports import daemon
from web.console_support import signed_in

from middleware.cli import main as labgate
from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules" / "example.yaml"
BIOLOGIST = "Dr A. Martin"  # the example rule set's responsible biologist


def qc_message(value: str, when: datetime, level: str = "1", lot: str = "L1") -> bytes:
    """A QC message whose O record names the control's level and lot in O-16 (see profile)."""
    text = build_result_message(
        "QC-GLU", "", [SimulatedResult("GLU", value, "mmol/L", "")], when=when, qc=True
    ).decode("latin-1")
    records = [
        record + f"||||^{level}^{lot}" if record.startswith("O|") else record
        for record in text.split("\r")
    ]
    return "\r".join(records).encode("latin-1")


def glucose_message(specimen: str, patient: str, value: str, when: datetime) -> bytes:
    return build_result_message(
        specimen, patient, [SimulatedResult("GLU", value, "mmol/L", "3.9 to 5.8", "N")], when=when
    )


def chem_instrument(tmp_path: Path, extra: str = "", validation: str = "") -> str:
    profile = tmp_path / "lab-chem.yaml"
    profile.write_text(
        "name: lab-chem\nextends: generic-astm\nqc:\n  level: O-16.2\n  lot: O-16.3\n",
        encoding="utf-8",
    )
    return (
        f"  - name: chem-1\n    protocol: astm\n    driver: {profile}\n{extra}"
        "    transport: {type: tcp-server, port: 0}\n"
        f"validation:\n  rules: {RULES}\n  reload_seconds: 0.1\n{validation}"
    )


async def send_messages(port: int, *messages: bytes) -> None:
    analyser = AnalyserSimulator("127.0.0.1", port)
    await analyser.connect()
    try:
        for message in messages:
            assert await analyser.send(message) is True
    finally:
        await analyser.close()


async def test_a_qc_rejection_holds_results_since_the_last_accepted_run(tmp_path: Path) -> None:
    plan = tmp_path / "qc.yaml"
    plan.write_text(
        "westgard: {rules: [1-2s, 1-3s, 2-2s, R-4s, 4-1s, 10x]}\n"
        "overdue_hours: 24\n"
        "targets:\n"
        "  - {instrument: chem-1, test: GLU, lot: L1, level: '1', mean: 5.5, sd: 0.2}\n",
        encoding="utf-8",
    )
    t0 = datetime.now().replace(microsecond=0) - timedelta(hours=1)
    instrument = chem_instrument(tmp_path, validation=f"  qc: {plan}\n")
    async with daemon(tmp_path, instrument) as running:
        port = running.gateway.addresses["chem-1"][1]
        await send_messages(
            port,
            qc_message("5.5", t0),  # accepted
            glucose_message("S-1", "PAT-1", "5.2", t0 + timedelta(minutes=10)),
        )
        first = await running.lis.wait_for(1)
        (before,) = first[0].parsed.observations  # type: ignore[union-attr]
        assert before.status == "F" and any("validé électroniquement" in n for n in before.notes)
        await send_messages(
            port,
            qc_message("6.3", t0 + timedelta(minutes=20)),  # 4 SD: 1-3s rejects the run
            glucose_message("S-2", "PAT-2", "5.2", t0 + timedelta(minutes=30)),
        )
        received = await running.lis.wait_for(3)
    decided = {
        row.specimen_id: (row.decision, row.reasons)
        for row in running.rows("select specimen_id, decision, reasons from results")
    }
    assert decided["S-1"] == ("held", '["qc_failed"]')  # held again after the fact
    assert decided["S-2"] == ("held", '["qc_failed"]')  # decided while QC is rejected
    by_specimen = {
        (o.specimen_id, o.status): o
        for m in received[1:]
        for o in m.parsed.observations  # type: ignore[union-attr]
    }
    correction = by_specimen[("S-1", "C")]  # "annule et remplace" (GBUI VI)
    assert any("held" in n and "qc_failed" in n for n in correction.notes)
    assert not any("validé électroniquement" in n for n in correction.notes)
    assert ("S-2", "F") in by_specimen
    audit = running.rows("select action, subject from audit where action = 'qc_rehold'")
    assert [(row.action, row.subject) for row in audit] == [("qc_rehold", "chem-1:GLU")]


def _cli_config(tmp_path: Path) -> Path:
    """A configuration naming the daemon's store, for the commands people run beside it."""
    config = tmp_path / "cli.yaml"
    config.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'labgate.db'}\nlis:\n  port: 1\ninstruments: []\n",
        encoding="utf-8",
    )
    return config


async def _wait_reload() -> None:
    await asyncio.sleep(0.4)  # reload_seconds is 0.1


async def test_switches_and_blocking_from_the_command_line_apply_at_once(tmp_path: Path) -> None:
    t0 = datetime.now().replace(microsecond=0) - timedelta(hours=1)
    async with daemon(tmp_path, chem_instrument(tmp_path)) as running:
        port = running.gateway.addresses["chem-1"][1]
        config = str(_cli_config(tmp_path))
        who = ["--config", config, "--author", "Dr Durand"]
        await send_messages(port, glucose_message("SW-1", "PAT-1", "5.2", t0))

        assert labgate(["autovalidation", "off", *who, "--reason", "analyser check"]) == 0
        await _wait_reload()
        await send_messages(port, glucose_message("SW-2", "PAT-2", "5.2", t0))

        assert labgate(["autovalidation", "on", *who, "--reason", "check done"]) == 0
        assert labgate(["autovalidation", "off", "--biologist", BIOLOGIST, *who,
                        "--reason", "on leave"]) == 0  # fmt: skip
        await _wait_reload()
        await send_messages(port, glucose_message("SW-3", "PAT-3", "5.2", t0))
        # A name no rule set carries is refused, not silently ignored.
        assert labgate(["autovalidation", "off", "--biologist", "Dr Nobody", *who,
                        "--reason", "typo"]) == 2  # fmt: skip

        assert labgate(["autovalidation", "on", "--biologist", BIOLOGIST, *who,
                        "--reason", "back"]) == 0  # fmt: skip
        assert labgate(["device", "block", "chem-1", *who, "--reason", "drift"]) == 0
        await _wait_reload()
        await send_messages(port, glucose_message("SW-4", "PAT-4", "5.2", t0))
        received = await running.lis.wait_for(3)
        await asyncio.sleep(0.5)  # the quarantined one must not follow
        assert len(running.lis.delivered) == 3
        api = "http://{}:{}/api/validation".format(*running.gateway.addresses["api"])
        async with signed_in(running.gateway) as client:
            shown = (await client.get(api)).json()
        # A person releases it: it goes to the LIS held, the sender woken by the audit change.
        (quarantined,) = running.rows("select id from outbox where state = 'quarantined'")
        assert labgate(["outbox", "release", str(quarantined.id), *who, "--reason", "ok"]) == 0
        released = (await running.lis.wait_for(4))[3]
    assert shown["ruleset"]["name"] == "chemistry-example"
    assert shown["autovalidation"] is True and shown["disabled_biologists"] == []
    assert shown["blocked_devices"] == ["chem-1"]
    assert shown["change_records"][0]["author"] == "labgate (configuration)"
    decided = {
        row.specimen_id: (row.decision, row.reasons)
        for row in running.rows("select specimen_id, decision, reasons from results")
    }
    assert decided == {
        "SW-1": ("autovalidated", "[]"),
        "SW-2": ("held", '["autovalidation_disabled"]'),
        "SW-3": ("held", '["biologist_disabled"]'),
        "SW-4": ("held", '["device_blocked"]'),  # quarantined, then released by a person
    }
    sent = [o.specimen_id for m in received[:3] for o in m.parsed.observations]  # type: ignore[union-attr]
    assert sorted(sent) == ["SW-1", "SW-2", "SW-3"]
    (late,) = released.parsed.observations  # type: ignore[union-attr]
    assert late.specimen_id == "SW-4"
    assert any("held" in n and "device_blocked" in n for n in late.notes)
    people = "where action not in ('user_created', 'login')"  # the test's console sign-in
    actions = [row.action for row in running.rows(f"select action from audit {people} order by id")]
    assert actions == [
        "ruleset_activated",  # the configured rule set seeded the empty store
        "autovalidation_off",
        "autovalidation_on",
        "autovalidation_off",
        "autovalidation_on",
        "device_blocked",
        "outbox_release",
    ]


async def test_previous_value_and_poc_origin_reach_the_lis(tmp_path: Path) -> None:
    t0 = datetime.now().replace(microsecond=0) - timedelta(hours=3)
    extra = "    poc: true\n    location: Urgences\n"
    async with daemon(tmp_path, chem_instrument(tmp_path, extra)) as running:
        port = running.gateway.addresses["chem-1"][1]
        await send_messages(
            port,
            glucose_message("PV-1", "PAT-9", "5.2", t0),
            glucose_message("PV-2", "PAT-9", "5.4", t0 + timedelta(hours=2)),
        )
        received = await running.lis.wait_for(2)
    first = received[0].parsed.observations[0]  # type: ignore[union-attr]
    second = received[1].parsed.observations[0]  # type: ignore[union-attr]
    assert not any("valeur antérieure" in n for n in first.notes)
    assert any(n.startswith("valeur antérieure: 5.2 mmol/L") for n in second.notes)
    for observation in (first, second):
        assert any("biologie délocalisée" in n and "Urgences" in n for n in observation.notes)
    stored = running.rows(
        "select r.previous_value, s.origin, s.location from results r "
        "join specimens s on s.id = r.specimen_row_id where r.specimen_id = 'PV-2'"
    )
    assert [(r.previous_value, r.origin, r.location) for r in stored] == [
        ("5.2", "poc", "Urgences")
    ]
