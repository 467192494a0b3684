"""Item 7: `--model random:<preset>` on a machine without CUDA is refused in one line (it would build ~30 GB of
float32 weights); an unknown preset is named likewise."""

from __future__ import annotations

import pytest
import torch

from tests.first_contact.fc_helpers import cli, one_line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: random: presets are allowed")
def test_random_preset_on_cpu_is_refused(tmp_path):
    run = cli("serve", "--model", "random:qwen2_5_vl_7b", "--port", "0", "--state-dir", str(tmp_path), timeout=60)
    assert run.returncode == 2
    line = one_line(run.stderr)
    assert "random:qwen2_5_vl_7b" in line and "CUDA" in line and "--model demo" in line
    assert not (tmp_path / "models").exists()  # nothing was built


def test_unknown_preset_is_named(tmp_path):
    run = cli("serve", "--model", "random:nope", "--port", "0", "--state-dir", str(tmp_path), timeout=60)
    assert run.returncode == 2
    assert "random:nope" in one_line(run.stderr)
