"""Specimen serum indices (H/I/L) on the review queue: read from the specimen's index results,
shown in a column of their own beside the flags, instrument comments, dilution and rerun, and
in `/api/results`, on both store backends."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx

from drivers.models import Patient, Result, SpecimenReport
from middleware.store import IncomingMessage, Store
from middleware.validation.indices import index_name, indices_of
from web.conftest import StubGateway
from web.test_console_api import sign_in

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _result(specimen: str, code: str, value: str, sequence: int, **extra: object) -> Result:
    return Result(
        specimen_id=specimen,
        test_code=code,
        value=value,
        numeric=Decimal(value),
        instrument="chem-1",
        sequence=sequence,
        measured_at=NOW,
        **extra,  # type: ignore[arg-type]
    )


def hemolysed_message() -> IncomingMessage:
    """Specimen S7: a potassium held for its H index, with the analyser's three index results
    (H transcoded from the analyser's own code, I and L sent under labgate's codes); specimen
    S8 of the same message has no index at all."""
    potassium = _result(
        "S7",
        "K",
        "6.1",
        1,
        units="mmol/L",
        flags=("H",),
        comments=("data alarm 43",),
        dilution="5",
        rerun=True,
    )
    s7 = SpecimenReport(
        "S7",
        Patient("P7"),
        (
            potassium,
            _result("S7", "990/", "120", 2, lis_code="HIL-H"),
            _result("S7", "HIL-I", "5", 3),
            _result("S7", "hil-l", "30", 4),
        ),
    )
    s8 = SpecimenReport("S8", Patient("P8"), (_result("S8", "NA", "140", 1, units="mmol/L"),))
    return IncomingMessage(
        message_id="m-hil",
        connection="chem-1",
        protocol="astm",
        received_at=NOW,
        raw=b"\x021H|\\^&\r\x03AA\r\n",
        reports=(s7, s8),
        decisions=(
            ("held", ("specimen_index", "instrument_flag")),
            ("held", ("no_rule",)),
            ("held", ("no_rule",)),
            ("held", ("no_rule",)),
            ("autovalidated", ()),
        ),
        lis="lis",
    )


def test_index_results_are_recognised_by_either_code() -> None:
    assert index_name("", "HIL-H") == "h"
    assert index_name("hil-i ", "123/") == "i"
    assert index_name("K", "K") is None
    pairs = [
        ("", "HIL-L", "30"),
        ("HIL-H", "990/", "90"),
        ("HIL-H", "990/", "120"),
        ("K", "K", "4"),
    ]
    assert indices_of(pairs) == {"h": "120", "l": "30"}  # H, I, L order; the last H counts
    assert list(indices_of([*pairs, ("", "HIL-I", "5")])) == ["h", "i", "l"]
    assert indices_of([("", "HIL-I", "  ")]) == {}


def test_the_review_queue_carries_each_result_s_specimen_indices(store: Store) -> None:
    store.save_message(hemolysed_message())
    rows = {row["test"]: row for row in store.results_page()}
    potassium = rows["K"]
    assert potassium["indices"] == {"h": "120", "i": "5", "l": "30"}
    assert potassium["reasons"] == ["specimen_index", "instrument_flag"]  # apart from them
    assert (potassium["dilution"], potassium["rerun"]) == ("5", True)
    assert potassium["comments"] == ["data alarm 43"]
    assert rows["HIL-H"]["indices"] == potassium["indices"]  # same specimen
    assert rows["NA"]["indices"] == {} and rows["NA"]["rerun"] is False
    held = store.results_page("held", instrument="chem-1")
    assert [row["test"] for row in held] == ["hil-l", "HIL-I", "HIL-H", "K"]


async def test_the_api_and_the_page_show_the_indices_in_their_own_column(
    http: httpx.AsyncClient, gateway: StubGateway
) -> None:
    gateway.store.save_message(hemolysed_message())
    await sign_in(http, gateway.store, "biologist")
    [potassium] = [
        row for row in (await http.get("/api/results?decision=held")).json() if row["test"] == "K"
    ]
    assert potassium["indices"] == {"h": "120", "i": "5", "l": "30"}
    page = (await http.get("/results")).text
    assert '<th title="serum indices: haemolysis, icterus, lipaemia">H / I / L</th>' in page
    row = page.split(f'data-result="{potassium["id"]}"')[1].split("</tr>")[0]
    indices = row.split('<td class="indices over">')[1].split("</td>")[0]
    assert '<span class="index" data-index="h">H 120</span>' in indices
    assert "I 5" in indices and "L 30" in indices and "specimen_index" not in indices
    after = row.split('<td class="indices over">')[1].split("</td>", 1)[1]
    assert '<span class="reason">specimen_index</span>' in after  # still among the reasons
    for shown in ("dilution 5", "rerun", "data alarm 43"):
        assert shown in row
    everything = (await http.get("/results?view=all")).text
    sodium = everything.split("<td>NA</td>")[1].split("</tr>")[0]
    assert '<td class="indices"></td>' in sodium
