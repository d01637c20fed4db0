"""The engine on small messages: flags, QC rules, transcoding, units, statuses, comments and the
family hooks, each setting on its own."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from drivers import registry
from drivers.base import DriverError
from drivers.engine import INTERNAL_ERROR, ProfileDriver
from drivers.hooks import HOOKS, Hook
from drivers.models import Result, SpecimenReport
from drivers.profile import profile_from_mapping
from protocols import astm


def make(**settings: Any) -> ProfileDriver:
    return ProfileDriver(profile_from_mapping({"name": "test", **settings}))


def reports(driver: ProfileDriver | str, *records: str) -> list[SpecimenReport]:
    if isinstance(driver, str):
        driver = registry.get(driver)  # type: ignore[assignment]
    assert isinstance(driver, ProfileDriver)
    header = records[0] if records and records[0].startswith("H") else "H|\\^&"
    body = records[1:] if records and records[0].startswith("H") else records
    text = "\r".join((header, *body, "L|1|N")) + "\r"
    return driver.to_reports(astm.decode_message(text.encode("latin-1")), "an-1")


def one_result(driver: ProfileDriver | str, r_record: str, *before: str) -> Result:
    [report] = reports(driver, "H|\\^&", "P|1", *before, "O|1|S1||^^^GLU", r_record)
    [result] = report.results
    return result


# --- flags ------------------------------------------------------------------------------------


def test_standard_flags_map_to_themselves_and_repeats_are_separate_flags() -> None:
    result = one_result(make(), "R|1|^^^GLU|25|mmol/L||HH\\A")
    assert result.flags == ("HH", "A")
    assert result.normalized_flags == ("HH", "A")


def test_vendor_flags_map_and_unknown_flags_stay_raw_only() -> None:
    driver = make(flags={"map": {"W": "A", "+": "H", "N": None}})
    result = one_result(driver, "R|1|^^^GLU|25|||W\\+\\N\\Q\\<")
    assert result.flags == ("W", "+", "N", "Q", "<")
    assert result.normalized_flags == ("A", "H", "<")


def test_normalised_flags_are_not_repeated() -> None:
    result = one_result(make(flags={"map": {"HI": "H"}}), "R|1|^^^GLU|25|||H\\HI")
    assert result.normalized_flags == ("H",)


def test_flags_can_be_kept_raw_only() -> None:
    result = one_result("ortho-vision", "R|1|ABO|A|||T\\N||F")
    assert result.flags == ("T", "N")
    assert result.normalized_flags == ()


def test_flag_inside_the_value_field() -> None:
    [report] = reports(
        "beckman-dxh",
        "H|\\!~|||DxH",
        "P|1",
        "O|1|42",
        "R|1|!!!PLT!777-3|178!  L |10^9/L||179 to 408|A||F||SYSTEM||20211028082908|AY52686",
    )
    [result] = report.results
    assert (result.value, result.numeric, result.units) == ("178", Decimal(178), "10^9/L")
    assert result.flags == ("A", "L")
    assert result.normalized_flags == ("A", "L")
    assert result.reference_range == "179 to 408"


# --- QC ---------------------------------------------------------------------------------------


def qc(driver: ProfileDriver, *records: str) -> SpecimenReport:
    [report] = reports(driver, *records)
    return report


def test_qc_from_the_header_processing_id() -> None:
    report = qc(make(), "H|\\^&||||||||||Q", "O|1|C1||^^^GLU", "R|1|^^^GLU|5.1")
    assert report.is_qc and report.results[0].is_qc


def test_qc_from_the_action_code() -> None:
    assert qc(make(), "O|1|C1||^^^GLU|||||||Q", "R|1|^^^GLU|5.1").is_qc


def test_patient_specimen_is_not_qc() -> None:
    report = qc(make(), "O|1|S1||^^^GLU|||||||N", "R|1|^^^GLU|5.1")
    assert not report.is_qc and not report.results[0].is_qc


def test_qc_from_a_specimen_descriptor_marker_any_case_any_component() -> None:
    driver = make(qc={"rules": [{"where": "O-16.*", "contains": ["ctrl"]}]})
    assert qc(driver, "O|1|C1||^^^GLU|||||||||||CTRL^^CTRL MEDIUM", "R|1|^^^GLU|5").is_qc
    assert not qc(driver, "O|1|S1||^^^GLU|||||||||||BLOOD", "R|1|^^^GLU|5").is_qc


def test_qc_from_a_specimen_id_prefix() -> None:
    driver = make(qc={"rules": [{"where": "specimen_id", "prefix": ["QC-"]}]})
    assert qc(driver, "O|1|QC-123||^^^GLU", "R|1|^^^GLU|5").is_qc
    assert not qc(driver, "O|1|X-QC-123||^^^GLU", "R|1|^^^GLU|5").is_qc


def test_qc_from_a_specimen_id_pattern() -> None:
    driver = make(qc={"rules": [{"where": "specimen_id", "regex": "^CTL[0-9]{3}$"}]})
    assert qc(driver, "O|1|CTL007||^^^GLU", "R|1|^^^GLU|5").is_qc
    assert not qc(driver, "O|1|CTL0077||^^^GLU", "R|1|^^^GLU|5").is_qc


def test_qc_from_a_patient_id_pattern() -> None:
    driver = make(qc={"rules": [{"where": "patient_id", "regex": "^CONTROL"}]})
    [report] = reports(driver, "H|\\^&", "P|1|CONTROL-2", "O|1|C1||^^^GLU", "R|1|^^^GLU|5")
    assert report.is_qc


def test_qc_level_and_lot_are_read_only_for_qc_specimens() -> None:
    driver = make(
        qc={
            "rules": [{"where": "O-12", "equals": ["Q"]}],
            "level": "O-16.2",
            "lot": "O-16.3",
        }
    )
    control = qc(driver, "O|1|C1||^^^GLU|||||||Q||||CTRL^L2^LOT9", "R|1|^^^GLU|5")
    assert (control.results[0].qc_level, control.results[0].qc_lot) == ("L2", "LOT9")
    patient = qc(driver, "O|1|S1||^^^GLU|||||||N||||CTRL^L2^LOT9", "R|1|^^^GLU|5")
    assert (patient.results[0].qc_level, patient.results[0].qc_lot) == ("", "")


def test_mindray_qc_result_is_built_from_the_order_record() -> None:
    [report] = reports(
        "mindray-bs240",
        "H|\\^&|||Mindry^^|||||||QR|1394-97|20250701174411",
        "P|518",
        "O|518|||CA^Ca||20250701110003|||||2^mlt cntrl2^059425004^20270201^12.9^M^0.5^13.92",
    )
    assert report.is_qc and report.specimen_id == "mlt cntrl2"
    [result] = report.results
    assert (result.test_code, result.value, result.numeric) == ("CA", "13.92", Decimal("13.92"))
    assert (result.qc_level, result.qc_lot, result.is_qc) == ("2", "059425004", True)
    assert report.extras["qc_target_mean"] == "12.9"
    assert result.instrument == "an-1"


def test_mindray_patient_order_without_results_stays_empty() -> None:
    [report] = reports(
        "mindray-bs240", "H|\\^&|||Mindry^^|||||||PR", "P|1", "O|1|7^1^7|2501|CA^Calcium^^"
    )
    assert report.results == () and not report.is_qc
    assert report.specimen_id == "2501"


# --- transcoding (GBUI XIV) --------------------------------------------------------------------


def test_results_carry_the_lis_code_and_unknown_codes_are_reported() -> None:
    driver = make(transcoding={"tests": {"GLU": "GLY", "NA": "NA+"}})
    [report] = reports(
        driver, "P|1", "O|1|S1||^^^GLU\\^^^K", "R|1|^^^GLU|5.1", "R|2|^^^K|4.1", "R|3|^^^NA|140"
    )
    assert [(r.test_code, r.lis_code) for r in report.results] == [
        ("GLU", "GLY"),
        ("K", "K"),
        ("NA", "NA+"),
    ]
    assert report.extras["untranscoded_tests"] == "K"


def test_without_a_table_codes_pass_through_and_nothing_is_reported() -> None:
    [report] = reports(make(), "P|1", "O|1|S1||^^^GLU", "R|1|^^^GLU|5.1")
    assert report.results[0].lis_code == "GLU"
    assert "untranscoded_tests" not in report.extras


def test_transcoding_both_ways() -> None:
    driver = make(transcoding={"tests": {"WBC": "GB", "HGB": "HB"}})
    assert (driver.transcode("WBC"), driver.to_analyser_code("GB")) == ("GB", "WBC")
    assert (driver.transcode("PLT"), driver.to_analyser_code("PLQ")) == ("PLT", "PLQ")


# --- values, units, statuses, times -------------------------------------------------------------


def test_units_per_test_then_for_every_test_then_as_sent() -> None:
    driver = make(units={"map": {"2": "g/L"}, "per_test": {"WBC": {"1": "10^3/uL"}}})
    [report] = reports(
        driver,
        "P|1",
        "O|1|S1",
        "R|1|^^^WBC|8|1",
        "R|2|^^^HGB|14|1",
        "R|3|^^^ALB|40|2",
        "R|4|^^^NA|140|mmol/L",
    )
    assert [r.units for r in report.results] == ["10^3/uL", "1", "g/L", "mmol/L"]


def test_not_computed_value_gets_status_x() -> None:
    result = one_result("pentra-xlr", "R|10|^^^BAS#^704-7^1|-----|1||HH||F||NNE||20220727121550")
    assert (result.value, result.numeric, result.status) == ("-----", None, "X")
    assert result.units == "10^3/uL"


def test_status_map_default_and_rerun() -> None:
    driver = make(status={"map": {"W": "P", "R": "F"}, "rerun": ["R"], "default": "F"})
    [report] = reports(
        driver,
        "P|1",
        "O|1|S1",
        "R|1|^^^A|1|||||W",
        "R|2|^^^B|1|||||R",
        "R|3|^^^C|1|||||",
        "R|4|^^^D|1|||||C",
    )
    statuses = [(r.status, r.rerun) for r in report.results]
    assert statuses == [("P", False), ("F", True), ("F", False), ("C", False)]


def test_dilution_from_a_component_or_after_a_separator() -> None:
    assert one_result("sysmex-xn", "R|1|^^^^WBC^2|8.13").dilution == "2"
    cobas = one_result("cobas-c311", "R|1|^^^685/3|22.4|U/l||N||F")
    assert (cobas.test_code, cobas.dilution) == ("685", "3")


def test_value_in_a_later_component_and_padding() -> None:
    result = one_result(make(), "R|1|^^^GLU|^  24.7 ^^")
    assert (result.value, result.numeric) == ("24.7", Decimal("24.7"))


def test_comparator_values() -> None:
    result = one_result(make(), "R|1|^^^CRP|< 1.20")
    assert (result.comparator, result.numeric) == ("<", Decimal("1.20"))


def test_dummy_dates_read_as_none() -> None:
    [report] = reports(
        "phadia-prime",
        "P|1||||||18991230",
        "O|1|B1||^^^t2^sIgE^1||18991230000000|18991230000000",
        "R|1|^^^t2^sIgE^1|9.34^^^^|kUA/l||||F||||18991230000000|I1000-1",
    )
    assert report.patient.birth_date is None and report.collected_at is None
    assert report.results[0].measured_at is None
    generic = reports(make(), "P|1||||||18991230", "O|1|B1")[0]
    assert generic.patient.birth_date == date(1899, 12, 30)


def test_measured_at_falls_back_to_the_order() -> None:
    [report] = reports(
        "cobas-c311",
        "P|1",
        "O|1|1^S9^1||^^^685/||||||||||||||||||20240203132011",
        "R|1|^^^685/|22.4|U/l||N||F|||||P1",
    )
    moment = report.results[0].measured_at
    assert moment is not None and (moment.hour, moment.minute) == (13, 20)


# --- comments ----------------------------------------------------------------------------------


def test_comments_go_to_result_specimen_or_patient() -> None:
    [report] = reports(
        make(),
        "P|1",
        "C|1|L|patient note",
        "O|1|S1",
        "C|1|L|order note^second part",
        "R|1|^^^A|1",
        "C|1|I|result note",
        "C|2|I|  ",
        "R|2|^^^B|2",
    )
    assert report.extras["patient_comments"] == "patient note"
    assert report.extras["comments"] == "order note second part"
    assert [r.comments for r in report.results] == [("result note",), ()]


def test_comments_can_be_ignored() -> None:
    driver = make(comments={"after_result": "ignore", "after_order": "ignore"})
    [report] = reports(driver, "P|1", "O|1|S1", "C|1|L|x", "R|1|^^^A|1", "C|1|I|y")
    assert report.results[0].comments == () and "comments" not in report.extras


# --- hooks -------------------------------------------------------------------------------------


def test_sysmex_qflag_threshold_is_an_option() -> None:
    low = make(hook="sysmex-xn", hook_options={"qflag_threshold": 50}, test_id={"code": [5]})
    [report] = reports(low, "P|1", "O|1|^^27", "R|1|^^^^Blasts?|60", "R|2|^^^^NRBC?|40")
    assert [r.normalized_flags for r in report.results] == [("A",), ()]
    assert report.extras["ip_messages"] == "Blasts?"


def test_ortho_well_reactions_become_comments() -> None:
    [report] = reports(
        "ortho-vision",
        "P|1",
        "O|1|SID1||ABO-D",
        "R|1|ABO|A|||||F",
        "M|1|Anti-A|ABO-Rh/Reverse^1^9^777^2023||40^M",
        "M|2|Ctrl|ABO-Rh/Reverse^4^9^777^2023||-118^A",
    )
    assert report.results[0].comments == (
        "Anti-A: 4+ (grade 40, card ABO-Rh/Reverse well 1, lot 777, corrected manually)",
        "Ctrl: error -118 (grade -118, card ABO-Rh/Reverse well 4, lot 777)",
    )


def test_ortho_card_lot_is_the_reagent_lot_of_patient_and_qc_results() -> None:
    """Lines as in the VISION capture (corpus astm-ortho-vision-1.txt), the QC specimen marked
    by O-12 Q as the profile reads it."""
    card = "ABO-Rh/Reverse^{well}^000009^{lot}^20231022235959^g.jpg^c.jpg"
    [patient, control] = reports(
        "ortho-vision",
        "P|1|PID123456",
        "O|1|SID101||ABO-D|N|20240307151207|||||||||CENTBLOOD",
        "R|1|ABO|A|||||F||Automatic||20240307151236|JNumber",
        f"M|1|Anti-A|{card.format(well=1, lot='77777')}||40^A",
        f"M|2|Ctrl|{card.format(well=4, lot='77778')}||0^A",  # a second card: first lot kept
        "O|2|QC-LOW||ABO-D|N|20240307151300|||||Q",
        "R|1|ABO|O|||||F||Automatic||20240307151336|JNumber",
        f"M|1|Anti-A|{card.format(well=1, lot='77777')}||0^A",
    )
    assert [r.reagent_lot for r in patient.results] == ["77777"]
    assert control.is_qc and [r.reagent_lot for r in control.results] == ["77777"]
    assert patient.results[0].comments[1].endswith("lot 77778)")  # each well keeps its own


def test_a_profile_says_where_the_reagent_lot_is() -> None:
    on_result = make(result={"reagent_lot": "R-3.6"})
    assert one_result(on_result, "R|1|^^^GLU^^RL-0912|5.1").reagent_lot == "RL-0912"
    assert one_result(make(), "R|1|^^^GLU^^RL-0912|5.1").reagent_lot == ""  # not said: none
    on_order = make(result={"reagent_lot": "O-16.2"})
    [report] = reports(on_order, "P|1", "O|1|S1||^^^GLU|||||||||||SER^RL-7", "R|1|^^^GLU|5")
    assert report.results[0].reagent_lot == "RL-7"
    with pytest.raises(ValueError, match="the reagent lot must be read from R/O records"):
        make(result={"reagent_lot": "P-3"})


def test_records_the_engine_does_not_know_go_to_the_hook_and_are_otherwise_ignored() -> None:
    [report] = reports(make(), "P|1", "O|1|S1", "R|1|^^^A|1", "M|1|x", "S|1|y", "Z|1")
    assert len(report.results) == 1


# --- refusals ------------------------------------------------------------------------------------


def test_result_before_any_order() -> None:
    with pytest.raises(DriverError, match="before any O record"):
        reports(make(), "R|1|^^^GLU|5")


def test_order_without_specimen_id_names_the_places_tried() -> None:
    with pytest.raises(DriverError, match=r"no specimen id in O-3\.\*, O-4\.\*"):
        reports(make(), "P|1", "O|1|||^^^GLU")


def test_result_without_test_code() -> None:
    with pytest.raises(DriverError, match="no test code"):
        reports(make(), "P|1", "O|1|S1", "R|1||5")


class _BrokenHook(Hook):
    name = "broken"

    def on_result(self, draft: Any, record: astm.Record, result: Result) -> Result | None:
        raise ZeroDivisionError("bug")


def test_a_bug_becomes_a_driver_error_so_the_message_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(HOOKS, "broken", _BrokenHook)
    driver = make(hook="broken")
    with pytest.raises(DriverError, match=f"^{INTERNAL_ERROR} in 'test': ZeroDivisionError"):
        reports(driver, "P|1", "O|1|S1", "R|1|^^^A|1")


def test_lowercase_record_types_are_read() -> None:
    [report] = reports(make(), "p|1", "o|1|S1", "r|1|^^^A|1")
    assert report.results[0].test_code == "A"
