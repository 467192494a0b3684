"""GPU: every usable backend matches the float64 per-segment reference within bf16 tolerance; auto caches its pick;
flashinfer_cudnn builds one cuDNN graph per bucket, not per shape. Run on the H200: pytest -m gpu tests/vit_backends"""

import pytest
import torch
from _vit_reference import random_qkv, reference_attention

from vit_backends import create, usable
from vit_backends.shapes import cu_seqlens, qwen25_layers, qwen3_layers

pytestmark = pytest.mark.gpu

BACKENDS = ["sdpa", "fa3", "flashinfer_cudnn", "auto"]
LAYOUTS = {
    "many_mixed": [1, 7, 64, 64, 200, 64, 7, 1, 333, 64, 64, 1000, 5, 64],
    "qwen25_windows_1024px": qwen25_layers([1024])["window"],
    "qwen25_full_2_images": qwen25_layers([448, 560])["full"],
    "qwen3_full_3_images": qwen3_layers([448, 1024, 560])["full"],
}


def _backend(name):
    if name not in usable():
        pytest.skip(f"{name} is not usable on this machine")
    return create(name)


@pytest.mark.parametrize("head_dim", [64, 72, 80, 128])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", BACKENDS)
def test_backend_matches_reference_bf16(name, layout, head_dim):
    backend = _backend(name)
    q, k, v, cu, max_len = random_qkv(LAYOUTS[layout], 16, head_dim, dtype=torch.bfloat16, device="cuda",
                                      seed=head_dim)
    with torch.inference_mode():  # as the ViT runs: inference tensors have no version counter
        out = backend(q, k, v, cu, max_len)
        again = backend(q, k, v, cu, max_len)  # cached per-cu_seqlens plans
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["fa3", "flashinfer_cudnn"])
def test_strided_qkv_from_a_fused_projection(name):
    backend = _backend(name)
    lengths = [64] * 5 + [16, 4]
    qkv = torch.randn(sum(lengths), 3, 16, 80, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(1)  # [T, H, D] views with token stride 3*H*D
    cu = cu_seqlens(lengths, "cuda")
    out = backend(q, k, v, cu, 64)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-2, rtol=2e-2)


def test_fa3_refuses_fp32_clearly():
    backend = _backend("fa3")
    q, k, v, cu, max_len = random_qkv([8, 8], 2, 64, device="cuda")
    with pytest.raises(ValueError, match="fa3 ViT attention backend runs bfloat16"):
        backend(q, k, v, cu, max_len)


def test_auto_pick_is_cached(monkeypatch):
    auto = create("auto")
    resolved = []
    real = auto._resolve
    monkeypatch.setattr(auto, "_resolve", lambda *a: resolved.append(a[0]) or real(*a))
    q, k, v, cu, max_len = random_qkv([1024] * 4, 16, 80, dtype=torch.bfloat16, device="cuda")
    first = auto(q, k, v, cu, max_len)
    second = auto(q, k, v, cu, max_len)
    assert len(resolved) == 1 and torch.equal(first, second)
    (choice,) = auto.choices().values()
    assert choice in usable() and choice != "auto"
    (timings,) = auto.timings().values()
    assert choice == min(timings, key=timings.get) or len(timings) == 0


def test_flashinfer_cudnn_reuses_graphs_within_a_bucket(monkeypatch):
    backend = _backend("flashinfer_cudnn")
    import flashinfer.cudnn.prefill as prefill

    keys = []
    real = prefill._build_prefill_graph

    def spy(*args, **kwargs):
        keys.append(prefill._sdpa_prefill_key_fn(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(prefill, "_build_prefill_graph", spy)
    for lengths in ([100, 200, 300], [50, 60, 70, 400], [400, 3]):  # 3 and 4 segments, max 300/400: one bucket...
        q, k, v, cu, max_len = random_qkv(lengths, 16, 80, dtype=torch.bfloat16, device="cuda")
        out = backend(q, k, v, cu, max_len)
        torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), atol=2e-2, rtol=2e-2)
    assert len(set(keys[:2])) == 1  # ...the first two share one graph
    assert len(set(keys)) == 2  # 2 segments, max 400 -> batch 2, seqlen 512: a second graph
    assert {(b, s) for b, s, *_ in backend.graph_shapes} == {(4, 512), (2, 512)}
