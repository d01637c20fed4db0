"""The shape of a labgate configuration file.

Every model is frozen and forbids unknown keys, so a typo in a lab's file is refused instead of
silently ignored. Instruments are a union discriminated on `protocol`; the ASTM, HL7 and POCT1-A
issues each add their member. Paths in the file are resolved against the file's own folder by the
loader, so `labgate run --config /etc/labgate/labgate.yaml` works from any working directory.
"""

from __future__ import annotations

import codecs
import re
import ssl
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

__all__ = [
    "AnalyserSimulatorSettings",
    "ApiSettings",
    "AstmInstrumentSettings",
    "BackupSettings",
    "ConsoleSettings",
    "DemoSettings",
    "Hl7InstrumentSettings",
    "Hl7OrdersSettings",
    "HprimLinkSettings",
    "InstrumentSettings",
    "LisOrdersSettings",
    "LisSettings",
    "LisSimulatorSettings",
    "Poct1aInstrumentSettings",
    "Poct1aOperator",
    "Poct1aTimeouts",
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
    # A point-of-care device, and where it stands (a ward): its results reach the LIS marked
    # with that origin (GBUI XIII) and rules may test `origin == "poc"`.
    poc: bool = False
    location: str = ""

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


class Hl7OrdersSettings(_Model):
    """How labgate pushes orders to an HL7 analyser (IHE LAW LAB-28 work order broadcast).

    In LAW the side that sends a message owns its MLLP connection: labgate, placing the
    orders, connects to the analyser's order listener, a port apart from the results link
    (`connection: order-port`, with `host`, `port`, optional `tls`). Analysers that take
    orders on the connection they already have with labgate use `connection: results`.
    One message per specimen and action, OML^O33 (LAW) or ORM^O01 (older analysers); each
    must be answered (ORL^O34 / ACK) within `ack_timeout`, else it is sent again, the same
    bytes, after a pause growing from `retry.initial` to `retry.maximum` seconds."""

    connection: Literal["order-port", "results"] = "order-port"
    host: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    tls: TlsSettings | None = None
    connect_timeout: PositiveFloat = 10.0
    message_type: Literal["OML^O33", "ORM^O01"] = "OML^O33"
    ack_timeout: PositiveFloat = 30.0
    retry: RetrySettings = Field(default_factory=lambda: RetrySettings())  # defined below
    # MSH-5/MSH-6 of the orders; MSH-5 is the instrument's name when empty.
    receiving_application: str = ""
    receiving_facility: str = ""

    @model_validator(mode="after")
    def _where(self) -> Hl7OrdersSettings:
        if self.connection == "order-port" and (not self.host.strip() or self.port is None):
            raise ValueError(
                "connection order-port needs the analyser's order listener: host, port"
            )
        if self.connection == "results" and (self.host or self.port is not None or self.tls):
            raise ValueError(
                "connection results sends on the results link: no host, port or tls here"
            )
        return self


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
    poc: bool = False  # a point-of-care device, at `location` (as for ASTM instruments)
    location: str = ""
    # Orders pushed to the analyser (LAB-28) when it is in the LIS's `orders.download_to`;
    # without this section it gets its orders only by asking (LAB-27 queries).
    orders: Hl7OrdersSettings | None = None

    _name = field_validator("name")(_check_name)
    _encoding = field_validator("encoding")(_check_encoding)


class Poct1aOperator(_Model):
    """An operator certified to run tests on the lab's POCT1-A devices (GBUI XIII-2: each
    user has an individual code). Sent to the device in its operator list (OPL.R01); a result
    by anyone else is refused and kept with the reason."""

    # Badge numbers are often written bare in YAML (id: 1042): take them as the text they are.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    id: Annotated[str, Field(min_length=1, max_length=64)]
    name: str = ""
    valid_until: date | None = None  # last day of certification (ACC.expiration_date)


class Poct1aTimeouts(_Model):
    """How long labgate waits for a POCT1-A device, in seconds."""

    hello: PositiveFloat = 30.0  # from the connection to the device's HEL.R01
    # For the device's ACK to labgate's directives, lists and requests; none: END, and the
    # device reconnects. Devices announce their own (DCA 60 s, Sofia 100 s, Nova 120 s).
    reply: PositiveFloat = 60.0


class Poct1aInstrumentSettings(_Model):
    """A point-of-care device speaking POCT1-A2 (glucose meter, blood gas, HbA1c...). It
    connects to labgate (the device is the TCP client); its results reach the LIS marked with
    their origin, `location` (GBUI XIII-2 6), and it is locked while the lab blocks it."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    name: str
    protocol: Literal["poct1a"]
    transport: TcpServerTransport
    location: str = ""  # the ward or unit where the device stands
    # Who may test. Empty: no operator list is sent and no operator is checked.
    operators: tuple[Poct1aOperator, ...] = ()
    # The device's observation ids (LOINC or local) to the LIS's test codes (GBUI XIV).
    test_codes: dict[str, str] = Field(default_factory=dict)
    timeouts: Poct1aTimeouts = Poct1aTimeouts()
    max_message: Annotated[int, Field(ge=1024)] = 1_048_576
    duplicate_window_hours: Annotated[float, Field(ge=0)] = 24.0
    # Ask the device to send each result as it is measured (DTV START_CONTINUOUS); otherwise
    # labgate asks (REQ ROBS) whenever the device reports new observations.
    continuous: bool = True

    _name = field_validator("name")(_check_name)

    @field_validator("operators")
    @classmethod
    def _unique_operators(cls, value: tuple[Poct1aOperator, ...]) -> tuple[Poct1aOperator, ...]:
        seen: set[str] = set()
        for operator in value:
            if operator.id in seen:
                raise ValueError(f"operator id {operator.id!r} is listed twice")
            seen.add(operator.id)
        return value


InstrumentSettings = Annotated[
    AstmInstrumentSettings | Hl7InstrumentSettings | Poct1aInstrumentSettings,
    Field(discriminator="protocol"),
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


class HprimLinkSettings(_Model):
    """How results reach a LIS that reads HPRIM Santé (`lis.kind: hprim`).

    `transport: spool`: each message is a file written to `directory` under a temporary name
    (`temporary_suffix`), synced, then renamed to `NAME.HPR` (and, with `ok_file`, an empty
    `NAME.OK` written the same way after it). The LIS has taken a file when it is `deleted`,
    `moved` (to `moved_to`) or `answered` (a file `NAME` + `answer_suffix` appears), checked
    every `poll_seconds`; one still there after `unconsumed_alarm_minutes` is an alarm.
    `window` (of the LIS section) is how many files may wait in the directory at once.

    `transport: tcp`: labgate connects to `host:port` and sends the message bare (`framing:
    none`; with `raw_ack: byte` the LIS answers ACK 0x06 or NAK 0x15, with `none` a message
    written is taken as delivered) or in ASTM E1381 frames (`framing: e1381`: the ACK of the
    last frame is the acknowledgement), within `ack_timeout` seconds.
    """

    transport: Literal["spool", "tcp"]
    # spool
    directory: str = ""
    temporary_suffix: str = ".tmp"
    data_suffix: str = ".HPR"
    ok_file: bool = False
    ok_suffix: str = ".OK"
    consumption: Literal["deleted", "moved", "answered"] = "deleted"
    moved_to: str = ""
    answer_suffix: str = ".ACK"
    poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    unconsumed_alarm_minutes: Annotated[float, Field(gt=0)] = 15.0
    # tcp
    host: str = "127.0.0.1"
    port: Port | None = None
    framing: Literal["none", "e1381"] = "none"
    raw_ack: Literal["byte", "none"] = "byte"
    ack_timeout: PositiveFloat = 30.0
    connect_timeout: PositiveFloat = 10.0
    # the message (H record; the sender and receiver ids come from the LIS section)
    version: Literal["H2.2", "H2.4"] = "H2.2"
    encoding: str = "latin-1"

    _encoding = field_validator("encoding")(_check_encoding)

    @field_validator("temporary_suffix", "data_suffix", "ok_suffix", "answer_suffix")
    @classmethod
    def _suffix(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value:
            raise ValueError("must be a non-empty file-name ending without a path separator")
        return value

    @model_validator(mode="after")
    def _complete(self) -> HprimLinkSettings:
        if self.transport == "spool":
            if not self.directory.strip():
                raise ValueError("transport spool needs a directory")
            suffixes = {self.temporary_suffix, self.data_suffix}
            suffixes |= {self.ok_suffix} if self.ok_file else set()
            suffixes |= {self.answer_suffix} if self.consumption == "answered" else set()
            expected = 2 + self.ok_file + (self.consumption == "answered")
            if len({suffix.lower() for suffix in suffixes}) != expected:
                raise ValueError("the temporary, data, .OK and answer suffixes must differ")
            if self.consumption == "moved" and not self.moved_to.strip():
                raise ValueError("consumption moved needs moved_to, the folder the LIS moves to")
        elif self.port is None or not self.host.strip():
            raise ValueError("transport tcp needs the LIS's host and port")
        return self


class LisSettings(_Model):
    """The laboratory information system: results go to it over MLLP (HL7 v2.5.1), or as
    HPRIM Santé files or TCP messages with `kind: hprim` (see `HprimLinkSettings`)."""

    name: str = "lis"
    # hl7: ORU^R01/OUL^R22 over MLLP to host:port. hprim: the `hprim` section says how.
    kind: Literal["hl7", "hprim"] = "hl7"
    hprim: HprimLinkSettings | None = None
    # The LIS's own test codes (GBUI XIV), for both kinds: `CODE` (the driver's labgate code,
    # else the analyser's) or `INSTRUMENT:CODE` (one analyser's code) -> the LIS's code.
    transcoding: dict[str, str] = {}
    host: str = "127.0.0.1"
    # The MLLP port, required for kind hl7; an HPRIM link has its own address in its section
    # (or none: a spool directory), and the port then defaults to 0, unused.
    port: Port
    # ORU^R01 (the common default) or OUL^R22 (IHE LAW LAB-29), as the LIS expects.
    message_type: Literal["ORU^R01", "OUL^R22"] = "ORU^R01"
    ack_timeout: PositiveFloat = 30.0
    connect_timeout: PositiveFloat = 10.0
    retry: RetrySettings = RetrySettings()
    # AE/AR from the LIS: `stop` keeps the message for a person (default: no blind loop);
    # `retry` retransmits it like a missing ACK (for LIS that answer AE when busy).
    on_reject: Literal["stop", "retry"] = "stop"
    # Messages on the wire before the first one's ACK is back. 1 (the default) is
    # stop-and-wait, right for every LIS. More only for a LIS that accepts several messages
    # in flight and acknowledges each by MSA-2: ACKs are matched by control id, and on any
    # failure everything not yet acknowledged is sent again, in order, after the backoff.
    window: Annotated[int, Field(ge=1, le=1000)] = 1
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

    @field_validator("transcoding")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        for code, lis_code in value.items():
            if not code.strip() or not lis_code.strip():
                raise ValueError(f"empty code in {code!r}: {lis_code!r}")
        return value

    @model_validator(mode="after")
    def _kind_complete(self) -> LisSettings:
        if self.kind == "hprim" and self.hprim is None:
            raise ValueError("kind hprim needs the hprim section (transport spool or tcp)")
        if self.kind == "hl7" and self.hprim is not None:
            raise ValueError("the hprim section is for kind hprim")
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_port_for_hprim(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("kind") == "hprim" and "port" not in data:
            return {**data, "port": 0}
        return data


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
    """The daemon's HTTP API and console; it listens on loopback unless a lab decides otherwise.

    `tls` makes the listener itself speak HTTPS (GBUI II-3, VII-2 1a: nominative data is
    encrypted on any network): `cert` + `key` are the daemon's; with `require_client_cert`
    only browsers and tools holding a certificate signed by `ca` get in. The session cookie is
    then always Secure. The files are checked at load: a certificate and key that do not load
    together refuse the configuration, rather than the daemon at start."""

    host: str = "127.0.0.1"
    port: Port = 8080
    tls: TlsSettings | None = None

    @field_validator("tls")
    @classmethod
    def _server_side(cls, tls: TlsSettings | None) -> TlsSettings | None:
        if tls is None:
            return None
        if not tls.cert:
            raise ValueError("the API's TLS needs cert and key (the daemon's certificate)")
        if tls.server_hostname:
            raise ValueError("server_hostname is for links labgate opens, not for the API")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls.cert, tls.key)
            if tls.ca:
                context.load_verify_locations(tls.ca)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cert, key or ca do not load: {exc}") from None
        return tls

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def local_url(self) -> str:
        """Where the gateway's own commands (`status`, `doctor`, `restore`) reach the daemon:
        loopback when it listens on every address."""
        host = "127.0.0.1" if self.host in {"0.0.0.0", "", "::"} else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


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

    # Path of a rule-set YAML file (see config/rules/example.yaml). It seeds an empty store:
    # from then on the store's active version decides, changed with `labgate rules activate`
    # and `labgate rules rollback` (GBUI XI-2 change records).
    rules: str
    # The lab's QC plan (Westgard rules, targets per lot, intervals; config/qc/example.yaml).
    # Without it the QC gate is off: QC results are stored and forwarded to no one.
    qc: str | None = None
    # How often the daemon looks for switches, blocks and activations made from elsewhere.
    reload_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0

    @field_validator("qc")
    @classmethod
    def _qc_loads(cls, value: str | None) -> str | None:
        from middleware.config.loader import ConfigError
        from middleware.validation.qc_plan import load_qc_plan

        if value is not None:
            try:
                load_qc_plan(value)
            except ConfigError as exc:
                raise ValueError(f"QC plan refused: {exc}") from None
        return value

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


class AlarmSettings(_Model):
    """When labgate raises alarms (middleware/alarms/conditions.py says what each one means),
    and where it tells people besides the store, the API and /metrics."""

    check_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    # A link labgate opens itself (the LIS, TCP-client and serial analysers) down this long.
    link_lost_after_seconds: Annotated[float, Field(gt=0)] = 60.0
    # Per instrument: no message for this many minutes is an alarm (analysers that connect
    # to labgate come and go; this is how their silence is noticed).
    silence_minutes: dict[str, Annotated[float, Field(gt=0)]] = {}
    error_rate: Annotated[int, Field(ge=0)] = 10  # errors per window on one connection; 0: off
    error_window_minutes: Annotated[float, Field(gt=0)] = 10.0
    backlog_messages: Annotated[int, Field(ge=1)] = 1000
    backlog_age_minutes: Annotated[float, Field(gt=0)] = 15.0
    webhook: str | None = None  # URL that receives a JSON POST when an alarm starts or ends
    webhook_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Devices labgate blocks by itself when one of these alarms starts for them (GBUI XIII:
    # the lab must be able to block a POC analyser). Unblocking is always a person's decision.
    # QC overdue counts time and patient results (QC plan `hours`, `results`); `qc_new_lot`: a
    # reagent lot in use without an accepted QC run (QC plan `new_lot_qc`).
    auto_block: dict[
        str,
        tuple[
            Literal["qc_failed", "qc_overdue", "qc_new_lot", "link_lost", "silence", "error_rate"],
            ...,
        ],
    ] = {}


class BackupSettings(_Model):
    """Automatic daily backups of the store (GBUI I-4: at fixed intervals, with no one having
    to do anything, each run recorded). `labgate backup` takes one at any time."""

    # Where backups go: better a share on another machine than the store's own disk.
    directory: str
    # Local time of the daily backup, "HH:MM" (quote it: YAML reads 02:30 as a number). A
    # daemon that was not running then takes the missed one shortly after it starts.
    at: str = "02:30"
    keep: Annotated[int, Field(ge=1, le=3650)] = 14  # newest backups kept, older ones deleted
    # PostgreSQL stores: the folder of pg_dump, pg_restore and psql (empty: the newest of
    # /usr/lib/postgresql/*/bin, else PATH). pg_dump must be as new as the server.
    pg_bin: str = ""

    @field_validator("at", mode="before")
    @classmethod
    def _time_of_day(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value // 60:02d}:{value % 60:02d}"  # YAML 1.1 sexagesimal: 2:30 -> 150
        if isinstance(value, str):
            hours, _, minutes = value.partition(":")
            if not (
                hours.isdigit()
                and len(minutes) == 2
                and minutes.isdigit()
                and int(hours) < 24
                and int(minutes) < 60
            ):
                raise ValueError('must be a time of day "HH:MM", e.g. "02:30"')
            return f"{int(hours):02d}:{int(minutes):02d}"
        return value


class ConsoleSettings(_Model):
    """The web console's access control (GBUI II-3): sessions end after `idle_minutes` without
    a request, and `max_failed_logins` failed attempts in a row lock an account until an admin
    unlocks it. Cookies are marked Secure on HTTPS requests, or always with `secure_cookies`
    (a TLS-terminating proxy in front of the daemon)."""

    idle_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 15.0
    max_failed_logins: Annotated[int, Field(ge=1, le=10)] = 3
    secure_cookies: bool = False
    refresh_seconds: Annotated[float, Field(ge=1, le=300)] = 5.0


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
    alarms: AlarmSettings = AlarmSettings()
    backup: BackupSettings | None = None
    demo: DemoSettings | None = None
    console: ConsoleSettings = ConsoleSettings()

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
    for section in ("silence_minutes", "auto_block"):
        for name in getattr(settings.alarms, section):
            if name not in seen:
                problems.append((("alarms", section, name), f"no instrument named {name!r}"))
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
