"""The shape of a labgate configuration file.

Every model is frozen and forbids unknown keys, so a typo in a lab's file is refused instead of
silently ignored. Instruments are a union discriminated on `protocol`; the ASTM, HL7 and POCT1-A
issues each add their member. Paths in the file are resolved against the file's own folder by the
loader, so `labgate run --config /etc/labgate/labgate.yaml` works from any working directory.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

__all__ = [
    "AnalyserSimulatorSettings",
    "ApiSettings",
    "AstmInstrumentSettings",
    "DemoSettings",
    "Hl7InstrumentSettings",
    "InstrumentSettings",
    "LisOrdersSettings",
    "LisSettings",
    "LisSimulatorSettings",
    "SerialTransport",
    "Settings",
    "StoreSettings",
    "TcpClientTransport",
    "TcpServerTransport",
    "TlsSettings",
    "Transport",
    "ValidationSettings",
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


def _check_encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown character encoding {value!r}") from None
    return value


def _check_pem_file(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
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


class ReconnectSettings(_Model):
    """Backoff between attempts to (re)open a link labgate opens itself (TCP client, serial)."""

    initial: PositiveFloat = 1.0
    maximum: PositiveFloat = 30.0


class TcpClientTransport(_Model):
    """labgate connects out to an analyser that listens (some vendors' only TCP mode)."""

    type: Literal["tcp-client"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    connect_timeout: PositiveFloat = 10.0
    reconnect: ReconnectSettings = ReconnectSettings()

    _host = field_validator("host")(_check_loopback_or_any)


class SerialTransport(_Model):
    """An RS-232 line (LIS1-A §5: 8N1 at 9600 baud is the default every device must offer)."""

    type: Literal["serial"]
    port: str  # /dev/ttyS0, /dev/ttyUSB0, /dev/serial/by-id/...
    baudrate: Literal[300, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["none", "even", "odd"] = "none"
    stopbits: Literal[1, 2] = 1
    # LIS1-A defines no hardware handshake (§5.3.1); some cables and converters need one.
    flow_control: Literal["none", "rtscts", "xonxoff"] = "none"
    reconnect: ReconnectSettings = ReconnectSettings()

    @field_validator("port")
    @classmethod
    def _device_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be a device path such as /dev/ttyS0")
        return value


Transport = Annotated[
    TcpServerTransport | TcpClientTransport | SerialTransport, Field(discriminator="type")
]


class AstmTimers(_Model):
    """E1381 timers in seconds (LIS1-A §6.5.2); defaults are the standard's."""

    establish: PositiveFloat = 15.0
    reply: PositiveFloat = 15.0
    receive: PositiveFloat = 30.0
    busy: PositiveFloat = 10.0


class AstmInstrumentSettings(_Model):
    """An analyser speaking ASTM E1394 records, framed by E1381 or, for the instruments that
    offer nothing better, unframed over TCP."""

    name: str
    protocol: Literal["astm"]
    driver: str = "generic-astm"
    transport: Transport
    framing: Literal["e1381", "unframed"] = "e1381"
    # Unframed only: answer each message with a bare ACK byte (some vendors expect it).
    unframed_ack: bool = False
    encoding: str = "latin-1"
    timers: AstmTimers = AstmTimers()
    # A message identical to one stored from this analyser within this many hours is the
    # analyser resending after a lost ACK: acknowledged again, not stored twice.
    duplicate_window_hours: Annotated[float, Field(ge=0)] = 24.0
    poc: bool = False

    _name = field_validator("name")(_check_name)

    _encoding = field_validator("encoding")(_check_encoding)

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        from drivers import registry

        if registry.is_profile_path(value):
            # A lab's own analyser profile (relative paths: from where labgate is started).
            try:
                registry.resolve(value)
            except (OSError, registry.ProfileError) as exc:
                raise ValueError(f"profile {value!r} refused: {exc}") from None
            return value
        if value not in registry.names():
            raise ValueError(
                f"unknown driver {value!r}; known: {', '.join(registry.names())}, "
                "or the path of a profile file (.yaml)"
            )
        return value


class Hl7InstrumentSettings(_Model):
    """An analyser speaking HL7 v2 over MLLP (IHE LAW: OUL^R22 or ORU^R01 results)."""

    name: str
    protocol: Literal["hl7"]
    transport: TcpServerTransport | TcpClientTransport = Field(discriminator="type")
    tls: TlsSettings | None = None
    # Used when MSH-18 does not say (many analysers leave it empty).
    encoding: str = "latin-1"
    max_message: Annotated[int, Field(ge=1024)] = 1_048_576
    duplicate_window_hours: Annotated[float, Field(ge=0)] = 24.0
    poc: bool = False

    _name = field_validator("name")(_check_name)
    _encoding = field_validator("encoding")(_check_encoding)


InstrumentSettings = Annotated[
    AstmInstrumentSettings | Hl7InstrumentSettings, Field(discriminator="protocol")
]


class RetrySettings(_Model):
    """Exponential backoff with jitter between retransmissions to the LIS (GBUI VII-2)."""

    initial: PositiveFloat = 1.0
    maximum: PositiveFloat = 60.0


class TlsSettings(_Model):
    """TLS on an MLLP link (GBUI VII-2 1a: nominative data is encrypted on any network that
    people outside the lab can reach). Paths are PEM files.

    As a server: `cert` + `key` are ours; with `require_client_cert`, peers must present a
    certificate signed by `ca` (mutual TLS). As a client: `ca` verifies the server (the system
    store when empty); `cert` + `key`, if given, are our client certificate."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    require_client_cert: bool = False
    server_hostname: str = ""  # client side: the name to verify (defaults to the host)

    _files = field_validator("cert", "key", "ca")(_check_pem_file)

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key go together")
        if self.require_client_cert and not self.ca:
            raise ValueError("require_client_cert needs the ca that signs client certificates")
        return self


class LisOrdersSettings(_Model):
    """Where labgate listens for the LIS's orders (ORM^O01 / OML^O33 over MLLP, IHE LAB-28)."""

    host: str = "127.0.0.1"
    port: Port
    tls: TlsSettings | None = None
    # Orders are kept for any analyser's query; those named here also get every order
    # downloaded at once (analysers that do not query).
    download_to: tuple[str, ...] = ()


class LisSettings(_Model):
    """The laboratory information system: results go to it over MLLP (HL7 v2.5.1)."""

    name: str = "lis"
    host: str = "127.0.0.1"
    port: Port
    # ORU^R01 (the common default) or OUL^R22 (IHE LAW LAB-29), as the LIS expects.
    message_type: Literal["ORU^R01", "OUL^R22"] = "ORU^R01"
    ack_timeout: PositiveFloat = 30.0
    connect_timeout: PositiveFloat = 10.0
    retry: RetrySettings = RetrySettings()
    # AE/AR from the LIS: `stop` keeps the message for a person (default: no blind loop);
    # `retry` retransmits it like a missing ACK (for LIS that answer AE when busy).
    on_reject: Literal["stop", "retry"] = "stop"
    # original: the LIS answers AA/AE/AR. enhanced: MSH-15 AL / MSH-16 NE, the LIS's commit
    # acknowledgement (CA) is final — it has taken the message in charge; CE/CR as AE/AR.
    ack_mode: Literal["original", "enhanced"] = "original"
    # An analyser's query for a specimen labgate holds no order for is forwarded to the LIS as
    # QBP^Q11 (IHE LAB-27) on the results link's address; keep the timeout below the analyser's.
    query_forwarding: bool = False
    query_timeout: PositiveFloat = 5.0
    tls: TlsSettings | None = None
    orders: LisOrdersSettings | None = None
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


class ValidationSettings(_Model):
    """The biologists' rule set deciding which results are auto-validated (GBUI V-3)."""

    rules: str  # path of a rule-set YAML file (see config/rules/example.yaml)

    @field_validator("rules")
    @classmethod
    def _loads(cls, value: str) -> str:
        from middleware.config.loader import ConfigError
        from middleware.validation.ruleset import load_ruleset

        try:
            load_ruleset(value)
        except ConfigError as exc:
            raise ValueError(f"rule set refused: {exc}") from None
        return value


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
    validation: ValidationSettings | None = None
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
    if settings.lis.orders is not None:
        for index, name in enumerate(settings.lis.orders.download_to):
            if name not in seen:
                problems.append(
                    (("lis", "orders", "download_to", index), f"no instrument named {name!r}")
                )
    if settings.demo is not None:
        listening = {
            i.name for i in settings.instruments if isinstance(i.transport, TcpServerTransport)
        }
        for index, simulator in enumerate(settings.demo.analysers):
            if simulator.instrument in seen and simulator.instrument not in listening:
                problems.append(
                    (
                        ("demo", "analysers", index, "instrument"),
                        f"{simulator.instrument!r} must use a tcp-server transport for the demo",
                    )
                )
            if simulator.instrument not in seen:
                problems.append(
                    (
                        ("demo", "analysers", index, "instrument"),
                        f"no instrument named {simulator.instrument!r}",
                    )
                )
    return problems
