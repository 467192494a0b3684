"""Tiny checkpoints of both dense families whose head counts make tensor parallelism interesting (4 q heads,
2 KV heads: at TP=4 each KV head is replicated on two ranks; the model vocab is the demo tokenizer's + 3, which
divides by neither 2 nor 4, so the last rank's vocab slice is padded), and helpers for driving a TP engine
synchronously in the in-process tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from vlm_service.config import Config, EngineConfig, ModelConfig, ParallelConfig, ServerConfig
from vlm_service.demo.checkpoint import _special_ids, _token_fields, build_once
from vlm_service.models.layers import seeded_weights_
from vlm_service.types import ChatMessage, ImageInput

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)


def _qwen3(ids, vocab):
    from transformers import Qwen3VLConfig

    text = dict(TEXT, vocab_size=vocab, head_dim=16, bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_fields(ids))


def _qwen2_5(ids, vocab):
    from transformers import Qwen2_5_VLConfig

    text = dict(TEXT, vocab_size=vocab, bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, window_size=112, fullatt_block_indexes=[1],
                  hidden_act="silu")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_fields(ids))


def _write(out: Path, arch: str) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    from vlm_service.processor.tokenizer import build_demo_tokenizer
    from vlm_service.processor.vision import write_preprocessor_config

    build_demo_tokenizer(out)
    ids, vocab = _special_ids(out)
    vocab += 3  # rows no token uses, as real checkpoints have; the vocab then divides by neither 2 nor 4
    config = (_qwen3 if arch == "qwen3_vl" else _qwen2_5)(ids, vocab)
    cls = Qwen3VLForConditionalGeneration if arch == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    model = cls(config).eval()
    seeded_weights_(model, 1)
    model.generation_config.eos_token_id = [ids["im_end"], ids["eot"]]
    model.save_pretrained(out)
    write_preprocessor_config(out, arch)


def tiny_checkpoint(root: Path, arch: str) -> Path:
    return build_once(Path(root) / f"tp-{arch}", lambda d: _write(d, arch))


def tp_config(ckpt: Path, size: int, state_dir: Path, **engine) -> Config:
    eng = dict(block_size=4, num_blocks=96, max_num_seqs=4, max_batched_tokens=256, cuda_graphs=False,
               overlap_scheduling=True)
    eng.update(engine)
    return Config(model=ModelConfig(model=str(ckpt), device="cpu", dtype="float32", vit_attention_backend="sdpa"),
                  engine=EngineConfig(**eng), server=ServerConfig(state_dir=state_dir),
                  parallel=ParallelConfig(tensor_parallel_size=size))


@contextlib.contextmanager
def tp_runtime(cfg: Config):
    """load_runtime(cfg) (rank 0 in this process, workers spawned); workers stopped on exit."""
    from vlm_service.runtime import load_runtime

    runtime = load_runtime(cfg)
    try:
        yield runtime
    finally:
        parallel = runtime.extras.get("parallel")
        if parallel is not None:
            parallel.shutdown()


def record_logits(engine) -> list[torch.Tensor]:
    """Every logits tensor the engine's runner returns from now on, in order."""
    seen, execute = [], engine.runner.execute

    def wrapped(*args):
        out = execute(*args)
        seen.append(out.clone())
        return out

    engine.runner.execute = wrapped
    return seen


def chats(image_bytes: list[bytes]) -> list[tuple[ChatMessage, ...]]:
    """A text-only chat, one with an image and one with two images."""
    img = [ImageInput(b, "image/png") for b in image_bytes]
    return [(ChatMessage("user", ("tell me a story about a cat",)),),
            (ChatMessage("user", (img[0], "what is in the picture?")),),
            (ChatMessage("user", (img[1], "and", img[0], "compare them")),)]
