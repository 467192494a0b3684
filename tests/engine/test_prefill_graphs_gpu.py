"""GPU: piecewise prefill CUDA graphs (engine/prefill_graphs.py) change no greedy token and keep the logits close
(bf16) on small random Qwen3-VL / Qwen3-VL-MoE models and the Qwen2.5-VL demo checkpoint, images included.

Run on the GPU host: pytest -q -m gpu tests/engine/test_prefill_graphs_gpu.py
"""

from __future__ import annotations

import pytest
import torch

import vit_backends
from vlm_service.config import EngineConfig
from vlm_service.engine.attention import BatchLayout
from vlm_service.engine.engine import LLMEngine
from vlm_service.models.common import MultimodalEmbeds
from vlm_service.models.layers import seeded_weights_
from vlm_service.models.loader import normalize_config
from vlm_service.processor.positions import mrope_positions
from vlm_service.types import ProcessedInput, ProcessedVisual, SamplingParams

pytestmark = pytest.mark.gpu

IMAGE, VSTART, VEND = 1000, 1001, 1002


def _config(moe: bool) -> dict:
    rope = {"mrope_interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"}
    text = {"hidden_size": 256, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024, "max_position_embeddings": 4096,
            "rope_theta": 1000000.0, "rope_scaling": rope}
    if moe:
        text.update(num_experts=16, num_experts_per_tok=8, moe_intermediate_size=128, norm_topk_prob=True,
                    mlp_only_layers=[2])
    arch = "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"
    return normalize_config({
        "architectures": [arch], "model_type": "qwen3_vl_moe" if moe else "qwen3_vl", "text_config": text,
        "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                          "out_hidden_size": 256, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        "image_token_id": IMAGE, "vision_start_token_id": VSTART, "vision_end_token_id": VEND,
        "tie_word_embeddings": False,
    })


def _model(arch: str, tmp_path):
    if arch == "qwen2_5_vl":
        from vlm_service.demo.checkpoint import ensure_demo_model
        from vlm_service.models.loader import load_model

        return load_model(ensure_demo_model(tmp_path, arch), torch.bfloat16, "cuda", vit_backends.create("sdpa"))
    from vlm_service.models.qwen3_vl import Qwen3VLForConditionalGeneration
    from vlm_service.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration

    cls = Qwen3VLMoeForConditionalGeneration if arch == "qwen3_vl_moe" else Qwen3VLForConditionalGeneration
    model = cls(_config(arch == "qwen3_vl_moe"), torch.bfloat16, torch.device("cuda"), vit_backends.create("sdpa"))
    seeded_weights_(model, 7, matrix=0.06, norm=0.1, bias=0.02)
    model.weights_loaded()
    return model


def _prompt(model, seed: int, grids, text: int = 5) -> ProcessedInput:
    s = model.spec
    g = torch.Generator().manual_seed(seed)
    ids, images = torch.randint(0, 900, (text + seed,), generator=g).tolist(), []
    for j, (t, h, w) in enumerate(grids):
        ids.append(s.vision_start_token_id)
        pv = torch.randn(t * h * w, 3 * 2 * s.patch_size ** 2, generator=g)
        images.append(ProcessedVisual(pv, (t, h, w), f"{seed}-{j}", len(ids), t * h * w // 4))
        ids += [s.image_token_id] * (t * h * w // 4) + [s.vision_start_token_id + 1]
        ids += torch.randint(0, 900, (3,), generator=g).tolist()
    pos, delta = mrope_positions(ids, grids, s.image_token_id, s.vision_start_token_id, 2)
    return ProcessedInput(ids, images, pos, delta)


class _NoTok:
    def decode(self, ids, skip_special_tokens=True):
        return ""


ARCHS = ["qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl"]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_graphs_do_not_change_greedy_tokens(arch, tmp_path):
    model = _model(arch, tmp_path)
    grids = [[(1, 8, 8)], [], [(1, 4, 4), (1, 8, 4)], [], [(1, 16, 16)], [(1, 6, 4)]]
    prompts = [_prompt(model, s, g, text=5 + 40 * (s % 3)) for s, g in enumerate(grids * 2)]
    sp = SamplingParams(max_tokens=16, ignore_eos=True)
    runs = []
    for max_tokens in (0, 128):  # 128: steps of up to 128 tokens graphed, 129..200 eager
        cfg = EngineConfig(num_blocks=512, max_num_seqs=16, max_batched_tokens=200,
                           prefill_graph_max_tokens=max_tokens)
        eng = LLMEngine(model, _NoTok(), cfg, "cuda")
        assert (eng.runner.prefill_graphs is not None) == (max_tokens > 0)
        for i, p in enumerate(prompts):
            eng.add(str(i), p, sp)
        got = {str(i): [] for i in range(len(prompts))}
        while eng.has_work():
            for out in eng.step():
                if hasattr(out, "token_ids"):
                    got[out.request_id] += list(out.token_ids)
        assert all(len(t) == 16 for t in got.values())
        runs.append(got)
    assert runs[0] == runs[1]


def _step(model, n: int, image_at: int | None):
    """One sequence's first n tokens (an 8x8-patch image at image_at) as execute() inputs."""
    dev, bs = torch.device("cuda"), 16
    ids = torch.randint(0, 900, (n,), generator=torch.Generator().manual_seed(n))
    pos = torch.arange(n).expand(3, -1).clone()
    mm = None
    if image_at is not None:
        pix = torch.randn(64, 3 * 2 * model.spec.patch_size ** 2, generator=torch.Generator().manual_seed(1))
        emb, deep = model.encode_images(pix.to(dev, torch.bfloat16), torch.tensor([[1, 8, 8]]))[0]
        ids[image_at:image_at + 16] = model.spec.image_token_id
        mask = torch.zeros(n, dtype=torch.bool)
        mask[image_at:image_at + 16] = True
        mm = MultimodalEmbeds(emb, mask, list(deep) or None, mask.nonzero()[:, 0].to(dev))
    table = list(range(64))
    slots = torch.tensor([table[i // bs] * bs + i % bs for i in range(n)], device=dev)
    return ids.to(dev), pos.to(dev), BatchLayout([n], [n], [table], slots), mm


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n,image_at", [(77, None), (128, 40), (499, 200), (300, 7)])
def test_prefill_graph_logits_are_close_to_eager(arch, n, image_at, tmp_path):
    model = _model(arch, tmp_path)
    eng = LLMEngine(model, _NoTok(), EngineConfig(num_blocks=512, prefill_graph_max_tokens=512), "cuda")
    runner = eng.runner
    graphs = runner.prefill_graphs
    assert graphs is not None and graphs.fits(n)
    ids, pos, layout, mm = _step(model, n, image_at)
    rows = torch.arange(n, device="cuda")
    runner.prefill_graphs = None
    ref = runner.execute(ids, pos, layout, rows, mm, False)
    runner.prefill_graphs = graphs
    got = runner.execute(ids, pos, layout, rows, mm, False)  # the same k/v stored again, then attended
    torch.cuda.synchronize()
    err = (got - ref).abs().max().item()
    assert err <= 0.03 * ref.abs().max().item() + 1e-2, err
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() > 0.95
