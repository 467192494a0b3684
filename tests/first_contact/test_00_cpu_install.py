"""README command 1's install: a CPU server needs no triton (~640 MB installed, the largest wheel after torch), so
triton is in the [gpu] and [test] extras only; the demo runtime loads and generates with triton unimportable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.first_contact.fc_helpers import REPO

_SERVE_WITHOUT_TRITON = """
import asyncio, sys
sys.modules["triton"] = None  # import triton -> ImportError, as on an install without it
from pathlib import Path
from vlm_service.config import Config, ModelConfig, ServerConfig
from vlm_service.runtime import load_runtime
from vlm_service.server.app import _warmup
rt = load_runtime(Config(model=ModelConfig(device="cpu"), server=ServerConfig(state_dir=Path(sys.argv[1]))))
async def go():
    rt.start()
    await _warmup(rt, 64)  # the start-up requests: text, then two images
    await rt.stop(drain=False)
asyncio.run(go())
print("served")
"""


def test_triton_is_not_a_base_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("triton")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("triton") for d in extras["gpu"]) and any(d.startswith("triton") for d in extras["test"])


def test_demo_serves_without_triton(served):
    run = subprocess.run([sys.executable, "-c", _SERVE_WITHOUT_TRITON, str(served.state_dir)], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("served"), run.stderr[-2000:]
