"""Item 6: `make-demo-model --out DIR` writes the checkpoint into DIR itself, so `--model DIR` takes it."""

from __future__ import annotations

import torch

from tests.first_contact.fc_helpers import cli, one_line
from vlm_service.preflight import check_checkpoint_dir


def test_out_dir_is_the_checkpoint(tmp_path):
    out = tmp_path / "my-demo"
    run = cli("make-demo-model", "--arch", "qwen2_5_vl", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    check_checkpoint_dir(out)  # what `serve --model DIR` checks first

    import vit_backends
    from vlm_service.models.loader import load_model
    from vlm_service.processor.processor import Processor

    model = load_model(out, torch.float32, torch.device("cpu"), vit_backends.create("sdpa"))
    assert model.spec.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert Processor.from_pretrained(out).tokenizer is not None


def test_out_dir_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    run = cli("make-demo-model", "--out", str(tmp_path))
    assert run.returncode == 2
    assert "exists and is not an empty folder" in one_line(run.stderr)
    assert (tmp_path / "notes.txt").read_text() == "mine"
