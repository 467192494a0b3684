"""GPU (NCCL, one GPU per rank, decode CUDA graphs with the all-reduces inside, the Triton fused-MoE op on each
rank's expert slices): TP=2/4 against TP=1 on a tiny Qwen3-VL-MoE (head_dim 64, 4 q / 2 KV heads, 8 experts of
moe_intermediate 48), bf16. Skips without enough GPUs.

Run on a host with >= 2 GPUs: pytest -q -m gpu tests/engine/parallel/test_tp_moe_gpu.py
"""

from __future__ import annotations

import pytest
import torch
from test_tp_gpu import _run
from tp_helpers import tiny_checkpoint

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("size", [2, 4])
def test_nccl_moe_tp_with_cuda_graphs_matches_tp1(size, tmp_path):
    if torch.cuda.device_count() < size:
        pytest.skip(f"needs {size} GPUs")
    ckpt = tiny_checkpoint(tmp_path, "qwen3_vl_moe_hd64")
    tokens1, logits1 = _run(ckpt, 1, tmp_path)
    tokens, logits = _run(ckpt, size, tmp_path)
    # bf16 sums in another order: the prefill logits agree closely and the first tokens are the same
    torch.testing.assert_close(logits[0], logits1[0], atol=5e-2, rtol=5e-2)
    assert {k: v[:4] for k, v in tokens.items()} == {k: v[:4] for k, v in tokens1.items()}
