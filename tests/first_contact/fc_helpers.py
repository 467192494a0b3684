"""Helpers of the issue-13 (first contact) tests: the real `vlm-service serve` as a child process, set up as a newcomer runs it (dev CA
made in its state dir, TLS on loopback, the demo model), plus helpers that run the real CLI commands.

The session's server (conftest.py `served`) logs with --log-format json to a file (the request-log tests read it)
and has a metrics port. Tests that must kill or signal a server start their own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

pytest.importorskip("cryptography")

from tests.server_harness import free_port, wait_serving  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m vlm_service.cli ARGS` as a subprocess (the code of this tree), text output."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "vlm_service.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=stdin, cwd=REPO)


def one_line(text: str) -> str:
    """The text, asserted to be exactly one non-empty line."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


def png(width: int, height: int, seed: int = 0, noisy: bool = False) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if noisy:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Served:
    """A running `vlm-service serve`: where it listens, its state dir (dev CA), log file and metrics port."""

    port: int
    metrics_port: int
    state_dir: Path
    log: Path
    process: subprocess.Popen

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_flags(self) -> list[str]:
        return ["--target", self.target, "--state-dir", str(self.state_dir)]

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.state_dir / "tls" / "ca.crt")

    def request_lines(self, request_id: str, timeout: float = 15.0) -> list[dict]:
        """The JSON request-log lines of request_id (waits for the first)."""
        end = time.monotonic() + timeout
        while True:
            found = [e for e in _json_lines(self.log) if e.get("request_id") == request_id
                     and e.get("logger") == "vlm_service.requests"]
            if found or time.monotonic() > end:
                return found
            time.sleep(0.1)


def _json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def start_serve(tmp: Path, *extra: str, state_dir: Path | None = None) -> Served:
    """Start `vlm-service serve` (TLS with the dev CA, demo model on CPU, no warm-up image) and wait until ready."""
    port, metrics = free_port(), free_port()
    state = state_dir or tmp / "state"
    log = tmp / f"serve-{port}.log"
    args = ["serve", "--port", str(port), "--state-dir", str(state), "--device", "cpu", "--warmup-image-side", "0",
            "--metrics-port", str(metrics), "--log-format", "json", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlm_service.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO)
    served = Served(port, metrics, state, log, proc)
    _wait_ready(served)
    return served


def _wait_ready(served: Served, timeout: float = 300.0) -> None:
    ca = served.state_dir / "tls" / "ca.crt"
    end = time.monotonic() + timeout
    while not ca.exists():  # the server writes its dev CA before it listens
        if served.process.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"server did not start:\n{served.log.read_text()[-3000:]}")
        time.sleep(0.1)
    wait_serving(served.target, served.credentials(), max(1.0, end - time.monotonic()), served.process)


def stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.terminate()
        try:
            served.process.wait(60)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()
