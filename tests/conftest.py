"""Shared fixtures: free loopback ports, configuration text for a gateway under test."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour, not speed: on a shared 2-core machine a per-example deadline
# only produces flaky failures. Speed is measured by benchmarks/.
settings.register_profile(
    "labgate", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("labgate")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for daemons in subprocesses,
    which must be told their port in advance)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_config(
    db_path: Path,
    *,
    lis_port: int,
    api_port: int = 0,
    instruments: dict[str, int] | None = None,
    ack_timeout: float = 5.0,
    retry_initial: float = 0.2,
    retry_maximum: float = 1.0,
) -> str:
    """YAML for a gateway on loopback with one ASTM TCP instrument per entry of `instruments`."""
    instruments = instruments if instruments is not None else {"chem-1": 0}
    lines = [
        "gateway: test-gateway",
        "store:",
        f"  url: sqlite:///{db_path}",
        "api:",
        "  host: 127.0.0.1",
        f"  port: {api_port}",
        "lis:",
        "  name: lis",
        "  host: 127.0.0.1",
        f"  port: {lis_port}",
        f"  ack_timeout: {ack_timeout}",
        "  connect_timeout: 2",
        "  retry:",
        f"    initial: {retry_initial}",
        f"    maximum: {retry_maximum}",
        "instruments:",
    ]
    for name, port in instruments.items():
        lines += [
            f"  - name: {name}",
            "    protocol: astm",
            "    transport:",
            "      type: tcp-server",
            "      host: 127.0.0.1",
            f"      port: {port}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def config_text_factory():  # type: ignore[no-untyped-def]
    return gateway_config


# --- the two storage backends ----------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a real PostgreSQL server on loopback: `LABGATE_TEST_POSTGRES` when set (CI's
    `make test` starts one with scripts/postgres.sh), else started here by that script."""
    import os
    import subprocess

    url = os.environ.get("LABGATE_TEST_POSTGRES")
    if url:
        return url
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        pytest.fail(f"PostgreSQL could not be started: {started.stderr.strip()}")
    return started.stdout.strip().splitlines()[-1]


@pytest.fixture
def postgres_url(postgres_server: str):  # type: ignore[no-untyped-def]
    """A fresh, empty database on the PostgreSQL server for one test, dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:16]
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_server.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store on each backend labgate supports (DESIGN.md: SQLite embedded,
    PostgreSQL for several gateways sharing one store)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'labgate.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A test CA (trustme) and, signed by it, a server certificate for 127.0.0.1/localhost and
    a client one, as PEM files: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    `client.key` -> their paths."""
    import trustme

    ca = trustme.CA()
    files: dict[str, str] = {}

    def write(name: str, blob: trustme.Blob) -> None:
        path = tmp_path / name
        blob.write_to_path(str(path))
        files[name] = str(path)

    write("ca.pem", ca.cert_pem)
    for who, names in {"server": ("127.0.0.1", "localhost"), "client": ("client.lab",)}.items():
        cert = ca.issue_cert(*names)
        write(f"{who}.pem", cert.cert_chain_pems[0])
        write(f"{who}.key", cert.private_key_pem)
    return files
