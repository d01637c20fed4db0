"""Profiles as data: the shipped ones load, a lab's own file extends them, and a bad file is
refused with its name, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import registry
from drivers.engine import ProfileDriver
from drivers.generic_astm import GenericAstmDriver
from drivers.profile import ProfileError, load_profile_file
from protocols import astm

FAMILIES = {
    "access2",
    "afinion2",
    "beckman-dxh",
    "cobas-c311",
    "generic-astm",
    "mindray-bs240",
    "ortho-vision",
    "pentra-xlr",
    "phadia-prime",
    "sysmex-xn",
}


def test_registry_lists_every_family_profile() -> None:
    assert set(registry.names()) == FAMILIES
    assert registry.DEFAULT == "generic-astm"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_shipped_profile_loads_under_its_file_name(name: str) -> None:
    driver = registry.get(name)
    assert driver.name == name
    assert registry.get(name) is driver  # loaded once
    assert load_profile_file(registry.PROFILES / f"{name}.yaml").name == name


def test_default_driver_is_the_generic_class() -> None:
    driver = registry.get("generic-astm")
    assert isinstance(driver, GenericAstmDriver)
    assert driver.encoding == "latin-1"


def test_unknown_driver_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        registry.get("no-such-analyser")


def _write(tmp_path: Path, text: str, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_lab_profile_extends_a_shipped_one_and_adds_its_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: lab-xn\nextends: sysmex-xn\ntranscoding:\n  tests: {WBC: LEUCO, HGB: HB}\n",
    )
    driver = registry.load_profile(path)
    assert isinstance(driver, ProfileDriver)
    assert driver.name == "lab-xn"
    assert driver.profile.hook == "sysmex-xn"  # inherited
    assert driver.profile.test_id.dilution_component == 6
    assert driver.transcode("WBC") == "LEUCO"
    assert driver.to_analyser_code("HB") == "HGB"


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as caught:
        registry.load_profile(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_bad_flag_names_file_line_and_field(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\nflags:\n  map:\n    W: Z\n")
    assert f"{tmp_path / 'lab.yaml'}:4: flags.map.W:" in message


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\nflagz: {}\n")
    assert ":2: flagz: Extra inputs are not permitted" in message


def test_bad_record_place_says_how_to_write_one(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\nspecimen:\n  id: [O3]\n")
    assert "specimen.id.0" in message
    assert "O-4.3" in message  # the example of the syntax


def test_place_in_the_wrong_record_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\nspecimen:\n  id: [P-3]\n")
    assert "specimen" in message and "O records" in message


def test_bad_component_rule(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\ntest_id:\n  code: [4x]\n")
    assert "test_id.code.0" in message


def test_unknown_hook(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\nhook: nope\n")
    assert ":2: hook: unknown hook 'nope'" in message
    assert "sysmex-xn" in message


def test_bad_hook_option(tmp_path: Path) -> None:
    message = _error(
        tmp_path, "name: lab\nhook: sysmex-xn\nhook_options:\n  qflag_threshold: lots\n"
    )
    assert ":4: hook_options.qflag_threshold:" in message


def test_hook_options_without_hook(tmp_path: Path) -> None:
    assert "hook_options" in _error(tmp_path, "name: lab\nhook_options: {a: 1}\n")


def test_qc_rule_needs_exactly_one_test(tmp_path: Path) -> None:
    message = _error(
        tmp_path, "name: lab\nqc:\n  rules:\n    - {where: O-16, equals: [QC], prefix: [Q]}\n"
    )
    assert "qc.rules.0" in message and "exactly one" in message


def test_qc_rule_with_bad_regex(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\nqc:\n  rules:\n    - {where: specimen_id, regex: '('}\n")
    assert "qc.rules.0.regex" in message


def test_ambiguous_transcoding_table(tmp_path: Path) -> None:
    message = _error(tmp_path, "name: lab\ntranscoding:\n  tests: {WBC: GB, UWBC: GB}\n")
    assert "GB <- WBC, UWBC" in message


def test_ambiguity_resolved_by_the_reverse_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: lab\ntranscoding:\n  tests: {WBC: GB, UWBC: GB}\n  to_analyser: {GB: WBC}\n",
    )
    assert registry.load_profile(path).to_analyser_code("GB") == "WBC"


def test_bad_delimiters(tmp_path: Path) -> None:
    assert "orders.delimiters" in _error(tmp_path, "name: lab\norders:\n  delimiters: '||^&'\n")


def test_unknown_encoding(tmp_path: Path) -> None:
    assert "encoding" in _error(tmp_path, "name: lab\nencoding: klingon\n")


def test_missing_name(tmp_path: Path) -> None:
    assert "name: Field required" in _error(tmp_path, "description: no name\n")


def test_not_yaml(tmp_path: Path) -> None:
    assert "not valid YAML" in _error(tmp_path, "name: [lab\n")


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in _error(tmp_path, "- name\n")


def test_extends_unknown_profile(tmp_path: Path) -> None:
    assert "no profile 'nope'" in _error(tmp_path, "name: lab\nextends: nope\n")


def test_extends_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "name: a\nextends: ./lab.yaml\n", "a.yaml")
    assert "extends itself" in _error(tmp_path, "name: lab\nextends: ./a.yaml\n")


def test_missing_file() -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        registry.load_profile("/nonexistent/lab.yaml")


def test_profile_error_is_a_value_error() -> None:
    # pydantic settings validators turn ValueError into a configuration error with the field.
    assert issubclass(ProfileError, ValueError)


def test_lab_profile_changes_behaviour(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: lab\n"
        "extends: generic-astm\n"
        "flags:\n  map: {W: A}\n"
        "qc:\n  rules:\n    - {where: specimen_id, prefix: [CQ]}\n",
    )
    driver = registry.load_profile(path)
    text = b"H|\\^&\rP|1\rO|1|CQ1||^^^GLU\rR|1|^^^GLU|5.1|||W\rL|1\r"
    [report] = driver.to_reports(astm.decode_message(text), "a")
    assert report.is_qc
    assert report.results[0].normalized_flags == ("A",)
