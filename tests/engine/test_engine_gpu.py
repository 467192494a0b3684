"""GPU: FlashInfer paged attention matches the torch reference; CUDA graphs and overlapped scheduling do not
change tokens.

Run on the GPU host: pytest -q tests/engine/test_engine_gpu.py
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import ToyTokenizer, run_to_completion
from test_demo_model import _prompt

from vlm_service.config import EngineConfig
from vlm_service.engine.attention import BatchLayout, FlashInferAttention, FlashInferPlanner, TorchPagedAttention
from vlm_service.engine.engine import LLMEngine
from vlm_service.models.common import ModelSpec
from vlm_service.types import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("query_lens", [[1, 1, 1], [5, 1, 17]])
def test_flashinfer_matches_reference(query_lens):
    dev, bs, hq, hk, d = torch.device("cuda"), 16, 8, 2, 128
    spec = ModelSpec("t", 1, hq, hk, d, hq * d, 10, 4096, 0, 0, (), 2, 14, 2)
    cache = torch.randn(64, 2, bs, hk, d, device=dev, dtype=torch.bfloat16)
    ctx_lens = [37 + q for q in query_lens]
    tables = [list(range(i * 8, i * 8 + 8)) for i in range(len(query_lens))]
    slots = torch.cat([torch.tensor(t)[torch.arange(c - q, c) // bs] * bs + torch.arange(c - q, c) % bs
                       for t, c, q in zip(tables, ctx_lens, query_lens)]).to(dev)
    layout = BatchLayout(query_lens, ctx_lens, tables, slots)
    n = sum(query_lens)
    q = torch.randn(n, hq, d, device=dev, dtype=torch.bfloat16)
    k, v = (torch.randn(n, hk, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
    ref = TorchPagedAttention([cache.clone()], layout, d ** -0.5).attend(0, q, k, v)
    planner = FlashInferPlanner(dev, spec, torch.bfloat16, bs)
    out = FlashInferAttention([cache.clone()], slots, planner.plan(layout)).attend(0, q, k, v)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_cuda_graphs_do_not_change_greedy_tokens(tmp_path):
    import json

    from transformers import AutoModelForImageTextToText

    import vit_backends
    from vlm_service.demo.checkpoint import ensure_demo_model
    from vlm_service.models.loader import load_model

    path = ensure_demo_model(tmp_path, "qwen3_vl")
    config = json.loads((path / "config.json").read_text())
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    model = load_model(path, torch.bfloat16, "cuda", vit_backends.create("sdpa"))
    prompts = [_prompt(config, hf, g, s)[0] for s, g in enumerate([[(1, 6, 4)], [], [(1, 4, 4)]] * 3)]
    sp = SamplingParams(max_tokens=12, ignore_eos=True)
    runs = []
    # eager + serial, graphs + serial, graphs + overlapped scheduling (next step fed from the device)
    for graphs, overlap in ((False, False), (True, False), (True, True)):
        cfg = EngineConfig(num_blocks=256, max_num_seqs=16, cuda_graphs=graphs, overlap_scheduling=overlap)
        eng = LLMEngine(model, ToyTokenizer(), cfg, "cuda")
        assert (eng.runner.graphs is not None) == graphs
        res = run_to_completion(eng, [(str(i), p, sp) for i, p in enumerate(prompts)])
        runs.append([res[str(i)][0] for i in range(len(prompts))])
        assert eng.block_manager.num_free_blocks == 256
    assert runs[0] == runs[1] == runs[2]


def test_pinned_staging_reaches_the_device_intact():
    from vlm_service.engine.transfer import tensor_to_device, to_device

    dev = torch.device("cuda")
    t = to_device(list(range(-5, 1000)), torch.int32, dev)
    torch.cuda.synchronize()
    assert t.device.type == "cuda" and t.dtype == torch.int32 and t.cpu().tolist() == list(range(-5, 1000))
    host = torch.randn(3, 17).t()  # not contiguous
    assert torch.equal(tensor_to_device(host.contiguous(), dev).cpu(), host)
