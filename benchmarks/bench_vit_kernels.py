#!/usr/bin/env python
"""The vision tower's fused ops against the op sequences they replace, at 1024² tower shapes (GPU host).

    python benchmarks/bench_vit_kernels.py --out vit_kernels.json

Per preset shape (Qwen3-VL-8B: T=4096, 16 heads x 72, hidden 1152, MLP 4304; Qwen2.5-VL-7B: T=5476, 16 x 80,
hidden 1280): µs of one call replayed from a CUDA graph (bench_kernels.graph_us: no launch cost, L2 flushed) and
GB/s (every tensor read or written once) or TFLOP/s:
- rotary: 3 .contiguous() copies + in-place rotary (the old tower) vs kernels.rotary_qkv in place on the strided
  views vs rotary_qkv packed (v copied in the same pass), plus a small tile sweep of the in-place launch;
- add + LayerNorm (Qwen3-VL) and add + RMSNorm (Qwen2.5-VL): separate vs fused;
- fc1 + tanh-GELU (Qwen3-VL): F.linear then gelu vs kernels.linear_gelu_tanh (cuBLASLt epilogue).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_kernels import environment, graph_us, row  # noqa: E402

from kernels import norm, reference, rotary  # noqa: E402
from kernels.add_norm import fused_add_layernorm  # noqa: E402
from kernels.linear_act import linear_gelu_tanh  # noqa: E402
from kernels.rotary_qkv import rotary_qkv  # noqa: E402

BF16 = torch.bfloat16
SHAPES = {"qwen3_vl_8b": dict(t=4096, h=16, d=72, inter=4304), "qwen2_5_vl_7b": dict(t=5476, h=16, d=80, inter=0)}
TILES = [(bt, bh, w) for bt in (8, 16, 32) for bh in (1, 2, 4) for w in (2, 4)]


def _timed(name: str, fn, nbytes: int | None = None, **extra) -> dict:
    fn()  # compile / cuBLAS heuristics outside the capture
    torch.cuda.synchronize()
    return row(name, graph_us(fn), nbytes, **extra)


def bench_rotary(prefix: str, t: int, h: int, d: int) -> list[dict]:
    qkv = torch.randn(t, 3 * h * d, device="cuda", dtype=BF16)
    ang = torch.randn(t, d // 2, device="cuda")
    cos, sin = ang.cos(), ang.sin()
    elem, table = t * h * d * 2, 2 * t * (d // 2) * 4

    def old():
        q, k, v = (p.contiguous() for p in qkv.view(t, 3, h, d).unbind(1))
        rotary.apply_rotary_(q, k, cos, sin)

    rows = [_timed(f"{prefix}_rotary_copies_then_inplace", old, 6 * elem + 4 * elem + table),
            _timed(f"{prefix}_rotary_qkv_inplace", lambda: rotary_qkv(qkv, cos, sin, h), 4 * elem + table),
            _timed(f"{prefix}_rotary_qkv_packed", lambda: rotary_qkv(qkv, cos, sin, h, contiguous=True),
                   6 * elem + table)]
    for bt, bh, w in TILES:
        rows.append(_timed(f"{prefix}_rotary_qkv_inplace_tile", lambda: rotary_qkv(
            qkv, cos, sin, h, block_t=bt, block_h=bh, num_warps=w), 4 * elem + table, block_t=bt, block_h=bh,
            num_warps=w))
    return rows


def bench_add_norm(prefix: str, t: int, dim: int, layer: bool) -> list[dict]:
    x, r = (torch.randn(t, dim, device="cuda", dtype=BF16) for _ in range(2))
    w, b = torch.ones(dim, device="cuda", dtype=BF16), torch.zeros(dim, device="cuda", dtype=BF16)
    row_bytes = t * dim * 2
    if layer:
        split, fused = (lambda: norm.layernorm(x + r, w, b)), (lambda: fused_add_layernorm(x, r, w, b))
    else:
        split, fused = (lambda: norm.rmsnorm(x + r, w)), (lambda: norm.fused_add_rmsnorm(x, r, w))
    kind = "layernorm" if layer else "rmsnorm"
    return [_timed(f"{prefix}_add_then_{kind}", split, 5 * row_bytes),
            _timed(f"{prefix}_fused_add_{kind}", fused, 4 * row_bytes)]


def bench_gelu_epilogue(prefix: str, t: int, dim: int, inter: int) -> list[dict]:
    x = torch.randn(t, dim, device="cuda", dtype=BF16)
    w = torch.randn(inter, dim, device="cuda", dtype=BF16) / dim ** 0.5
    b = torch.randn(inter, device="cuda", dtype=BF16)
    flop = 2 * t * dim * inter
    out = []
    for name, fn in ((f"{prefix}_fc1_then_gelu", lambda: F.gelu(F.linear(x, w, b), approximate="tanh")),
                     (f"{prefix}_fc1_gelu_epilogue", lambda: linear_gelu_tanh(x, w, b)),
                     (f"{prefix}_fc1_alone", lambda: F.linear(x, w, b))):
        fn()
        torch.cuda.synchronize()
        us = graph_us(fn)
        out.append(row(name, us, None, tflops=round(flop / us / 1e6, 1)))
    err = (linear_gelu_tanh(x, w, b).float() - reference.linear_gelu_tanh(x.float(), w.float(), b.float())).abs()
    out.append({"name": f"{prefix}_fc1_gelu_epilogue_max_abs_err_vs_fp32", "value": float(err.max())})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    result = {**environment(), "results": {}}
    with torch.inference_mode():
        for preset, s in SHAPES.items():
            dim = s["h"] * s["d"]
            rows = bench_rotary(preset, s["t"], s["h"], s["d"])
            rows += bench_add_norm(preset, s["t"], dim, layer=preset.startswith("qwen3"))
            if s["inter"]:
                rows += bench_gelu_epilogue(preset, s["t"], dim, s["inter"])
            result["results"][preset] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
