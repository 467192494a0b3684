"""Item 4: user errors end in exactly one line on stderr and exit code 2 (no traceback): a second server on a port in
use, `generate --image missing.png`, a checkpoint folder without its tokenizer files."""

from __future__ import annotations

import shutil

from tests.first_contact.fc_helpers import cli, one_line


def test_port_in_use(served, tmp_path):
    run = cli("serve", "--port", str(served.port), "--state-dir", str(tmp_path))
    assert run.returncode == 2
    line = one_line(run.stderr)
    assert line.startswith("vlm-service serve: error: --port") and "in use" in line


def test_generate_missing_image(served):
    run = cli("generate", *served.client_flags, "--image", "missing.png", "describe")
    assert run.returncode == 2
    assert one_line(run.stderr) == "vlm-service generate: error: --image missing.png: no such file"


def test_checkpoint_without_tokenizer_files(served, tmp_path):
    demo = next((served.state_dir / "models").glob("demo-qwen3_vl-*"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(demo, ckpt)
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer_config.json").unlink()
    run = cli("serve", "--model", str(ckpt), "--port", "0", "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 2
    line = one_line(run.stderr)
    assert line.startswith(f"vlm-service serve: error: --model {ckpt}: not a complete checkpoint")
    assert "tokenizer.json" in line and "tokenizer_config.json" in line


def test_missing_ca_file(served, tmp_path):
    run = cli("info", *served.client_flags, "--ca", str(tmp_path / "nope.crt"))
    assert run.returncode == 2
    assert one_line(run.stderr).endswith("nope.crt: no such file")
