"""Tiny checkpoints of both dense families and the MoE family whose head counts make tensor parallelism interesting
(4 q heads, 2 KV heads: at TP=4 each KV head is replicated on two ranks; the model vocab is the demo tokenizer's
+ 3, which divides by neither 2 nor 4, so the last rank's vocab slice is padded), the MoE one in each expert
layout, and helpers for driving a TP engine synchronously in the in-process tests."""

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


_MROPE = {16: [2, 3, 3], 64: [12, 10, 10]}  # head_dim -> mrope_section (sums to head_dim / 2)


def _qwen3(ids, vocab, head_dim=16):
    from transformers import Qwen3VLConfig

    text = dict(TEXT, vocab_size=vocab, head_dim=head_dim, bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _MROPE[head_dim],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_fields(ids))


# the MoE family on the same attention sizes: 8 experts of moe_intermediate 48 (12 per rank at TP=4; 2I != H, so
# the hub orientation is not square), 2 per token,
# layer 1 dense (mlp_only_layers) so a dense MLP is sharded inside the MoE model too
MOE_TEXT = dict(num_hidden_layers=3, moe_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
                mlp_only_layers=[1])


def _qwen3_moe(ids, vocab, head_dim=16):
    from transformers import Qwen3VLMoeConfig

    dense = _qwen3(ids, vocab, head_dim)
    text = dict(dense.text_config.to_dict(), **MOE_TEXT)
    return Qwen3VLMoeConfig(text_config=text, vision_config=dense.vision_config.to_dict(), tie_word_embeddings=False,
                            **_token_fields(ids))


def _qwen2_5(ids, vocab):
    from transformers import Qwen2_5_VLConfig

    text = dict(TEXT, vocab_size=vocab, bos_token_id=ids["eot"], eos_token_id=ids["im_end"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, window_size=112, fullatt_block_indexes=[1],
                  hidden_act="silu")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_fields(ids))


def _classes(arch: str):
    """(config builder, transformers model class) of an arch."""
    import transformers

    return {"qwen3_vl": (_qwen3, transformers.Qwen3VLForConditionalGeneration),
            "qwen2_5_vl": (_qwen2_5, transformers.Qwen2_5_VLForConditionalGeneration),
            "qwen3_vl_moe": (_qwen3_moe, transformers.Qwen3VLMoeForConditionalGeneration),
            # head_dim 64, a size FlashInfer's paged attention supports (the GPU tests)
            "qwen3_vl_moe_hd64": (lambda ids, vocab: _qwen3_moe(ids, vocab, 64),
                                  transformers.Qwen3VLMoeForConditionalGeneration)}[arch]


def _write(out: Path, arch: str) -> None:
    from vlm_service.processor.tokenizer import build_demo_tokenizer
    from vlm_service.processor.family_rules import write_preprocessor_config

    build_demo_tokenizer(out)
    ids, vocab = _special_ids(out)
    vocab += 3  # rows no token uses, as real checkpoints have; the vocab then divides by neither 2 nor 4
    make_config, cls = _classes(arch)
    model = cls(make_config(ids, vocab)).eval()
    seeded_weights_(model, 1)
    model.generation_config.eos_token_id = [ids["im_end"], ids["eot"]]
    model.save_pretrained(out)
    write_preprocessor_config(out, "qwen3_vl" if arch.startswith("qwen3_vl_moe") else arch)


def tiny_checkpoint(root: Path, arch: str) -> Path:
    """arch: qwen3_vl, qwen2_5_vl, qwen3_vl_moe (its experts fused as transformers 5 saves them) or
    qwen3_vl_moe_hd64 (the same with head_dim 64, for the GPU)."""
    return build_once(Path(root) / f"tp-{arch}", lambda d: _write(d, arch))


def _per_expert(name: str, t: torch.Tensor) -> dict:
    """A fused expert tensor ([E, 2I, H] gate_up / [E, H, I] down) -> experts.{e}.gate_proj/up_proj/down_proj."""
    base, kind = name.rsplit(".", 1)
    if kind == "down_proj":
        return {f"{base}.{e}.down_proj.weight": t[e].clone() for e in range(t.shape[0])}
    i = t.shape[1] // 2
    return {f"{base}.{e}.{p}_proj.weight": t[e, s:s + i].clone() for e in range(t.shape[0])
            for p, s in (("gate", 0), ("up", i))}


def _hub(name: str, t: torch.Tensor) -> dict:
    """The hub checkpoints' layout: keys model.layers.* / visual.*, fused experts transposed ([E, H, 2I], [E, I, H])."""
    if name.startswith("model.visual."):
        name = name[len("model."):]
    name = name.replace("model.language_model.", "model.", 1)
    return {name: t.transpose(1, 2).contiguous() if name.endswith(MOE_FUSED) else t}


MOE_FUSED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
MOE_LAYOUTS = {"per_expert": _per_expert, "hub": _hub}


def moe_checkpoint(root: Path, layout: str = "fused") -> Path:
    """The tiny MoE checkpoint with its experts in `layout`: fused (as saved), per_expert or hub (fused transposed,
    hub key prefix); the same weights in each."""
    src = tiny_checkpoint(root, "qwen3_vl_moe")
    if layout == "fused":
        return src
    return build_once(Path(root) / f"tp-qwen3_vl_moe-{layout}", lambda d: _relayout(src, d, MOE_LAYOUTS[layout]))


def _relayout(src: Path, dst: Path, rewrite) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    out: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        for name, t in load_file(f).items():
            out.update(rewrite(name, t) if name.endswith(MOE_FUSED) or rewrite is _hub else {name: t})
    save_file(out, dst / "model.safetensors")


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
