"""Configuration files: every shipped file is valid; a bad one is refused with file, line, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.config import ConfigError, load_settings, load_settings_text

ROOT = Path(__file__).resolve().parents[2]
GOOD = """\
lis:
  port: 2575
instruments:
  - name: chem-1
    protocol: astm
    transport:
      type: tcp-server
      port: 5001
"""


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    settings = load_settings(path)
    assert settings.lis.port > 0
    assert settings.instruments


def test_minimal_config_gets_documented_defaults() -> None:
    settings = load_settings_text(GOOD)
    instrument = settings.instruments[0]
    assert instrument.driver == "generic-astm"
    assert instrument.transport.host == "127.0.0.1"
    assert instrument.timers.reply == 15.0
    assert settings.store.url == "sqlite:///var/labgate.db"


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_settings_text(text, "lab.yaml")
    assert all(p.file == "lab.yaml" for p in info.value.problems)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_out_of_range_port_names_line_and_field() -> None:
    text = GOOD.replace("port: 5001", "port: 70000")
    [(line, field, message)] = _problems(text)
    assert (line, field) == (8, "instruments[0].transport.port")
    assert "65535" in message


def test_unknown_key_is_refused_not_ignored() -> None:
    text = GOOD.replace("    protocol: astm\n", "    protocol: astm\n    baudrate: 9600\n")
    [(line, field, message)] = _problems(text)
    assert (line, field) == (6, "instruments[0].baudrate")
    assert "not permitted" in message


def test_missing_required_field_points_at_its_section() -> None:
    [(line, field, message)] = _problems(GOOD.replace("  port: 2575\n", "  host: 127.0.0.1\n"))
    assert (line, field) == (1, "lis.port")
    assert "required" in message.lower()


def test_unknown_protocol_and_driver_are_refused() -> None:
    problems = _problems(GOOD.replace("protocol: astm", "protocol: telnet"))
    assert (
        problems[0][1] == "instruments[0]" and "protocol" in problems[0][2]
    ) or "telnet" in problems[0][2]
    [(line, field, message)] = _problems(
        GOOD.replace("    protocol: astm\n", "    protocol: astm\n    driver: nope\n")
    )
    assert (line, field) == (6, "instruments[0].driver")
    assert "generic-astm" in message


def test_duplicate_instrument_names_are_refused_at_the_second() -> None:
    text = GOOD + GOOD.split("instruments:\n")[1].replace("port: 5001", "port: 5002")
    [(line, field, message)] = _problems(text)
    assert (line, field) == (9, "instruments[1].name")
    assert "twice" in message


def test_yaml_syntax_error_gives_the_line() -> None:
    [(line, field, message)] = _problems("lis:\n  port: [2575\n")
    assert line is not None and line >= 2
    assert field == "" and "YAML" in message


def test_several_problems_are_all_reported() -> None:
    text = GOOD.replace("port: 2575", "port: -1").replace("port: 5001", "port: 99999")
    assert {field for _, field, _ in _problems(text)} == {
        "lis.port",
        "instruments[0].transport.port",
    }


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


def test_serial_and_tcp_client_transports_validate() -> None:
    text = """\
lis:
  port: 2575
instruments:
  - name: xn-550
    protocol: astm
    framing: e1381
    transport:
      type: serial
      port: /dev/ttyUSB0
      baudrate: 9600
      parity: none
      flow_control: rtscts
  - name: dxh
    protocol: astm
    framing: unframed
    unframed_ack: true
    transport:
      type: tcp-client
      host: 10.0.0.5
      port: 5100
"""
    serial, client = load_settings_text(text).instruments
    assert serial.transport.type == "serial" and serial.transport.baudrate == 9600
    assert client.transport.type == "tcp-client" and client.framing == "unframed"
    assert client.transport.reconnect.maximum == 30.0


def test_serial_line_settings_are_checked() -> None:
    text = GOOD.replace(
        "      type: tcp-server\n      port: 5001\n",
        "      type: serial\n      port: ttyS0\n      baudrate: 9601\n",
    )
    problems = {(line, field) for line, field, _ in _problems(text)}
    assert problems == {
        (8, "instruments[0].transport.port"),
        (9, "instruments[0].transport.baudrate"),
    }


def test_demo_analyser_needs_a_listening_instrument() -> None:
    text = (
        GOOD.replace(
            "      type: tcp-server\n      port: 5001\n",
            "      type: tcp-client\n      host: 127.0.0.1\n      port: 5001\n",
        )
        + "demo:\n  analysers:\n    - instrument: chem-1\n"
    )
    [(line, field, message)] = _problems(text)
    assert (line, field) == (12, "demo.analysers[0].instrument")
    assert "tcp-server" in message


def test_a_labs_own_profile_file_can_be_the_driver(tmp_path: Path) -> None:
    profile = tmp_path / "my-analyser.yaml"
    profile.write_text("name: my-analyser\nextends: generic-astm\ndescription: ours\n")
    text = GOOD.replace("    protocol: astm\n", f"    protocol: astm\n    driver: {profile}\n")
    assert load_settings_text(text).instruments[0].driver == str(profile)
    profile.write_text("name: my-analyser\nextends: generic-astm\ncolour: blue\n")
    [(line, field, message)] = _problems(text)
    assert (line, field) == (6, "instruments[0].driver")
    assert "colour" in message


def test_hl7_instrument_and_lis_orders_validate_and_refer_to_known_analysers() -> None:
    text = """\
lis:
  port: 2575
  message_type: OUL^R22
  on_reject: retry
  orders:
    port: 2576
    download_to: [chem-9]
instruments:
  - name: xn-hl7
    protocol: hl7
    transport: {type: tcp-client, host: 127.0.0.1, port: 6000}
"""
    [(line, field, message)] = _problems(text)
    assert (line, field) == (7, "lis.orders.download_to[0]")
    assert "chem-9" in message
    settings = load_settings_text(text.replace("chem-9", "xn-hl7"))
    assert settings.instruments[0].protocol == "hl7"
    assert settings.lis.message_type == "OUL^R22" and settings.lis.on_reject == "retry"
    problems = _problems(text.replace("OUL^R22", "OUL^R99").replace("chem-9", "xn-hl7"))
    assert [(line, field) for line, field, _ in problems] == [(3, "lis.message_type")]
