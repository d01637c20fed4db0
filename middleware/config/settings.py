"""The shape of a labgate configuration file.

Every model is frozen and forbids unknown keys, so a typo in a lab's file is refused instead of
silently ignored. Instruments are a union discriminated on `protocol`; the ASTM, HL7 and POCT1-A
issues each add their member. Paths in the file are resolved against the file's own folder by the
loader, so `labgate run --config /etc/labgate/labgate.yaml` works from any working directory.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

__all__ = [
    "AnalyserSimulatorSettings",
    "ApiSettings",
    "AstmInstrumentSettings",
    "DemoSettings",
    "InstrumentSettings",
    "LisSettings",
    "LisSimulatorSettings",
    "Settings",
    "StoreSettings",
    "TcpServerTransport",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Port = Annotated[int, Field(ge=0, le=65535)]  # 0 = let the OS choose (tests, benchmarks)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_loopback_or_any(host: str) -> str:
    if not host.strip():
        raise ValueError("must not be empty")
    return host


class TcpServerTransport(_Model):
    """labgate listens; the analyser connects in (LIS1-A §7: the computer system is the server)."""

    type: Literal["tcp-server"]
    host: str = "127.0.0.1"
    port: Port

    _host = field_validator("host")(_check_loopback_or_any)


class AstmTimers(_Model):
    """E1381 timers in seconds (LIS1-A §6.5.2); defaults are the standard's."""

    establish: PositiveFloat = 15.0
    reply: PositiveFloat = 15.0
    receive: PositiveFloat = 30.0
    busy: PositiveFloat = 10.0


class AstmInstrumentSettings(_Model):
    """An analyser speaking ASTM E1394 records over E1381 framing."""

    name: str
    protocol: Literal["astm"]
    driver: str = "generic-astm"
    transport: TcpServerTransport
    encoding: str = "latin-1"
    timers: AstmTimers = AstmTimers()
    poc: bool = False

    _name = field_validator("name")(_check_name)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown character encoding {value!r}") from None
        return value

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        from drivers import registry

        if value not in registry.names():
            raise ValueError(f"unknown driver {value!r}; known: {', '.join(registry.names())}")
        return value


InstrumentSettings = Annotated[AstmInstrumentSettings, Field(discriminator="protocol")]


class RetrySettings(_Model):
    """Exponential backoff with jitter between retransmissions to the LIS (GBUI VII-2)."""

    initial: PositiveFloat = 1.0
    maximum: PositiveFloat = 60.0


class LisSettings(_Model):
    """The laboratory information system that receives results as HL7 v2.5.1 ORU^R01 over MLLP."""

    name: str = "lis"
    host: str = "127.0.0.1"
    port: Port
    ack_timeout: PositiveFloat = 30.0
    connect_timeout: PositiveFloat = 10.0
    retry: RetrySettings = RetrySettings()
    sending_application: str = "LABGATE"
    sending_facility: str = "LAB"
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"

    _name = field_validator("name")(_check_name)


class StoreSettings(_Model):
    """Where results, raw messages, the outbox and the trace are kept."""

    url: str = "sqlite:///var/labgate.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql")):
            raise ValueError("must be sqlite:///PATH or a postgresql:// URL")
        return value


class ApiSettings(_Model):
    """The daemon's HTTP API; it listens on loopback unless a lab decides otherwise."""

    host: str = "127.0.0.1"
    port: Port = 8080


class AnalyserSimulatorSettings(_Model):
    """A simulated analyser started beside the daemon (demo and tests only)."""

    instrument: str
    interval: PositiveFloat = 2.0
    results_per_message: Annotated[int, Field(ge=1, le=50)] = 3
    count: Annotated[int, Field(ge=0)] = 0  # 0 = keep sending until stopped


class LisSimulatorSettings(_Model):
    """A simulated LIS started beside the daemon; it keeps every message it received."""

    received_dir: str = "var/lis-received"


class DemoSettings(_Model):
    """Simulators the daemon starts in the same process, so `make run` needs nothing else."""

    lis: LisSimulatorSettings | None = None
    analysers: tuple[AnalyserSimulatorSettings, ...] = ()


class Settings(_Model):
    """A whole labgate configuration file."""

    gateway: str = "labgate"
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    lis: LisSettings
    instruments: tuple[InstrumentSettings, ...] = ()
    demo: DemoSettings | None = None

    def instrument(self, name: str) -> InstrumentSettings:
        for instrument in self.instruments:
            if instrument.name == name:
                return instrument
        raise KeyError(name)


def cross_check(settings: Settings) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span sections; each problem comes with the path of the offending field."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: set[str] = set()
    for index, instrument in enumerate(settings.instruments):
        if instrument.name in seen:
            problems.append(
                (
                    ("instruments", index, "name"),
                    f"instrument name {instrument.name!r} is used twice",
                )
            )
        seen.add(instrument.name)
    if settings.demo is not None:
        for index, simulator in enumerate(settings.demo.analysers):
            if simulator.instrument not in seen:
                problems.append(
                    (
                        ("demo", "analysers", index, "instrument"),
                        f"no instrument named {simulator.instrument!r}",
                    )
                )
    return problems
