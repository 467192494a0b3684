"""Peer mode: the dataset through transformers generate (tiny random Qwen3-VL), reported like a server run."""

import json

import pytest
from tiny_ckpt import write_tiny_qwen3_vl

from vlm_service.bench import main
from vlm_service.bench.dataset import DatasetSpec, build_dataset
from vlm_service.bench.peer import resolve_model_dir, run_peer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny"))


def test_run_peer_measures_every_request(tiny_dir):
    reqs = build_dataset(DatasetSpec(num_requests=2, images_per_request=(1, 2), resolution="64x64",
                                     input_len=(6, 6), output_len=(4, 4)))
    results, duration = run_peer(str(tiny_dir), reqs, device="cpu", dtype="float32")
    assert duration > 0
    for r, req in zip(results, reqs):
        assert r.ok, r.error
        assert 0 < r.ttft_ms <= r.e2e_ms and r.output_tokens == 4 and len(r.itl_ms) == 3
        assert r.prompt_tokens > 6 + 4 * len(req.images) - 1  # text + 4 merged tokens per 64x64 image


def test_peer_alongside_a_server_gives_ratios_against_transformers(tmp_path, tiny_dir, fake_server):
    rc = main(["--target", fake_server.address, "--insecure", "--num-prompts", "2", "--num-warmup", "1",
               "--image-resolution", "64x64", "--input-len", "6", "--output-len", "3", "--peer", "transformers",
               "--peer-model", str(tiny_dir), "--peer-device", "cpu", "--result-dir", str(tmp_path), "--no-plots"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["rate=inf", "peer:transformers"]
    assert summary["runs"][1]["metrics"]["completed"] == 2
    assert summary["ratios"]["baseline"] == "peer:transformers"
    assert (tmp_path / "requests-peer_transformers.jsonl").exists()


def test_peer_model_must_be_a_checkpoint_dir(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        resolve_model_dir(str(tmp_path))


def test_autoprocessor_without_chat_template_gets_the_tokenizers(tiny_dir, monkeypatch):
    # the H200 image has torchvision, so the peer takes AutoProcessor's path; a checkpoint (our presets) whose
    # chat template lives with the tokenizer only must still render chats there
    import importlib.util
    import types as pytypes

    import transformers

    from vlm_service.bench import peer

    tokenizer = pytypes.SimpleNamespace(chat_template="{{ messages }}")
    loaded = pytypes.SimpleNamespace(chat_template=None, tokenizer=tokenizer)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchvision" else real_find_spec(name, *a))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: loaded)
    assert peer._load_processor(tiny_dir).chat_template == "{{ messages }}"
