"""The biologists' rule set deciding live results: auto-validated ones reach the LIS marked
"validé électroniquement" with the responsible biologist and the rule-set version; held ones
carry every reason, including a delta check against the patient's previous specimen."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from e2e.test_astm_transports import daemon

from simulators.analyser import AnalyserSimulator, SimulatedResult, build_result_message

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules" / "example.yaml"


async def test_rule_set_autovalidates_holds_and_delta_checks(tmp_path: Path) -> None:
    instrument = (
        "  - name: chem-1\n    protocol: astm\n    transport: {type: tcp-server, port: 0}\n"
        f"validation:\n  rules: {RULES}\n"
    )
    first_at = datetime.now().replace(microsecond=0) - timedelta(hours=2)
    async with daemon(tmp_path, instrument) as running:
        analyser = AnalyserSimulator("127.0.0.1", running.gateway.addresses["chem-1"][1])
        await analyser.connect()
        try:
            first = build_result_message(
                "VAL-1",
                "PAT-V",
                [
                    SimulatedResult("GLU", "5.2", "mmol/L", "3.9 to 5.8", "N"),
                    SimulatedResult("K", "6.5", "mmol/L", "3.5 to 5.1", "HH"),
                ],
                when=first_at,
            )
            second = build_result_message(
                "VAL-2",
                "PAT-V",
                [SimulatedResult("GLU", "8.0", "mmol/L", "3.9 to 5.8", "H")],
                when=first_at + timedelta(hours=1),
            )
            assert await analyser.send(first) is True
            assert await analyser.send(second) is True
        finally:
            await analyser.close()
        received = await running.lis.wait_for(2)
    decided = {
        (row.specimen_id, row.test_code): (row.decision, row.reasons, row.ruleset, row.biologist)
        for row in running.rows(
            "select specimen_id, test_code, decision, reasons, ruleset, biologist from results"
        )
    }
    glu, k, glu_later = (
        decided[("VAL-1", "GLU")],
        decided[("VAL-1", "K")],
        decided[("VAL-2", "GLU")],
    )
    assert glu[:2] == ("autovalidated", "[]")
    assert glu[2:] == ("chemistry-example 2025.1", "Dr A. Martin")
    assert k[0] == "held" and "critical_value" in k[1] and "outside_autoverify_range" in k[1]
    assert glu_later[0] == "held" and glu_later[1] == '["delta_exceeded"]'  # +54 % > 15 %
    notes = {o.code: o.notes for m in received if m.parsed for o in m.parsed.observations}
    first_glu = next(o for o in received[0].parsed.observations if o.code == "GLU")  # type: ignore[union-attr]
    assert any("validé électroniquement" in n and "Dr A. Martin" in n for n in first_glu.notes)
    assert any("critical_value" in n for n in notes["K"])
