"""Run the real `labgate` daemon in a subprocess for tests that kill or signal it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """`python -m middleware run --config FILE` with its output kept in a log file."""

    def __init__(self, config: Path, api_port: int, log: Path) -> None:
        self.config = config
        self.api = f"http://127.0.0.1:{api_port}"
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "middleware",
                "run",
                "--config",
                str(self.config),
                "--json-logs",
            ],
            cwd=self.config.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.api}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def health(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(f"{self.api}/api/health", timeout=5).json()  # type: ignore[no-any-return]

    def kill(self) -> None:
        """kill -9: no clean-up of any kind runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def hangup(self) -> None:
        """SIGHUP, as `systemctl reload labgate` sends it: read the configuration again."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C, as a person would stop `make run`; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
