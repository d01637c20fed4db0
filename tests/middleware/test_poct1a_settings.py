"""A POCT1-A device in the configuration: what is accepted, what is refused, with the line."""

from __future__ import annotations

from datetime import date

import pytest

from middleware.config import load_settings_text
from middleware.config.loader import ConfigError
from middleware.config.settings import Poct1aInstrumentSettings

BASE = "lis: {port: 2575}\ninstruments:\n"


def test_a_device_with_operators_codes_and_timeouts() -> None:
    settings = load_settings_text(
        BASE + "  - name: glu-1\n    protocol: poct1a\n"
        "    transport: {type: tcp-server, host: 0.0.0.0, port: 7001}\n"
        "    location: Urgences\n"
        "    operators: [{id: 1042, name: Claire, valid_until: 2026-06-30}, {id: OP2}]\n"
        "    test_codes: {14743-9: GLU, 2345: GLU}\n"
        "    timeouts: {reply: 100}\n"
    )
    (device,) = settings.instruments
    assert isinstance(device, Poct1aInstrumentSettings)
    assert [(o.id, o.valid_until) for o in device.operators] == [
        ("1042", date(2026, 6, 30)),  # a bare badge number is its text
        ("OP2", None),
    ]
    assert device.test_codes == {"14743-9": "GLU", "2345": "GLU"}
    assert (device.timeouts.hello, device.timeouts.reply) == (30.0, 100.0)
    assert device.continuous and device.location == "Urgences"


@pytest.mark.parametrize(
    ("body", "line", "field", "problem"),
    [
        (
            "    transport: {type: tcp-server, port: 7001}\n    operators: [{id: A}, {id: A}]\n",
            6,
            "instruments[0].operators",
            "listed twice",
        ),
        (
            "    transport: {type: tcp-client, host: h, port: 7001}\n",
            5,
            "instruments[0].transport.type",
            "tcp-server",
        ),
        (
            "    transport: {type: tcp-server, port: 7001}\n    timeouts: {reply: 0}\n",
            6,
            "instruments[0].timeouts.reply",
            "greater than 0",
        ),
    ],
)
def test_refusals_name_the_line_and_field(body: str, line: int, field: str, problem: str) -> None:
    text = BASE + "  - name: glu-1\n    protocol: poct1a\n" + body
    with pytest.raises(ConfigError) as refused:
        load_settings_text(text, "lab.yaml")
    (found,) = refused.value.problems
    assert (found.line, found.field) == (line, field)
    assert problem in found.message
