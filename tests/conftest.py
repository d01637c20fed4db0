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
