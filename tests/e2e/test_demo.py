"""`make run`'s configuration: the shipped demo starts daemon, simulated analyser and simulated
LIS in one command, delivers results, answers `labgate status`, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import free_port
from e2e.daemon import ROOT, Daemon


def test_demo_config_starts_delivers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    # Same file, moved to free ports so the test runs beside anything else on the machine.
    demo["api"]["port"] = api_port = free_port()
    demo["lis"]["port"] = free_port()
    demo["instruments"][0]["transport"]["port"] = free_port()
    demo["demo"]["analysers"][0]["interval"] = 0.2
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo))
    daemon = Daemon(config, api_port, tmp_path / "demo.log")
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chem = next(c for c in daemon.health()["connections"] if c["name"] == "chem-1")
            if chem["delivered"] >= 1:
                break
            time.sleep(0.2)
        assert chem["delivered"] >= 1, daemon.log()
        assert chem["state"] == "connected"

        status = subprocess.run(
            [sys.executable, "-m", "middleware", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert status.returncode == 0, status.stderr
        assert "chem-1" in status.stdout and "running" in status.stdout

        received = sorted((tmp_path / "var" / "lis-received").glob("*.hl7"))
        assert received and b"ORU^R01" in received[0].read_bytes()
    finally:
        code = daemon.interrupt()
    assert code == 0, daemon.log()
    assert "gateway_stopped" in daemon.log()
    assert "Traceback" not in daemon.log()
