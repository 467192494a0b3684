"""Fused-MoE op benchmark (run on the GPU host): `python benchmarks/bench_moe.py --out moe.json`.

Qwen3-VL-30B-A3B's MoE layer: E=128 experts, k=8, H=2048, I=768, bf16. Prefill (T = 4096, 16384 tokens) reports
TFLOP/s, flops = T*k*(2*H*2I + 2*I*H), against 790 TFLOP/s; decode (T = 1, 8, 64) reports GB/s, bytes = the experts
actually touched (distinct experts * (2I*H + H*I) * 2) + activations in and out, against 4.3 TB/s. The Triton op
(after its per-bucket tuning, which is reported) is timed as a CUDA-graph replay of one fused_moe call with an
L2 flush before each replay (kernels.gpu_timing.cold_l2_us, which the tuner uses too: weights come from HBM, as in
a 48-layer step); the torch reference (a loop
over experts with host syncs, not capturable) is timed by do_bench on the eager call. Each row also checks the
Triton output against the reference. "path" names the variant the tuner kept for the row's bucket: "sorted"
(route, align, grouped GEMMs, k-sum), "sorted_atomic", "pairs" (few tokens: 2 launches, see
kernels/triton/moe_pairs.py), "gemv" / "gemv_pdl" / "gemv_routed" (few tokens: kernels/triton/moe_gemv.py) or "decode"
(few tokens: one fused kernel, kernels/triton/moe_decode.py); "paths_us" gives every path's tuning time end to end
(the per-tile timings are under "tuning_timings_us"). $VLM_MOE_PATHS restricts the paths (kernels.moe_tuning).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import moe, reference  # noqa: E402
from kernels.gpu_timing import cold_l2_us  # noqa: E402

PEAK_TFLOPS = 790.0
HBM_GBPS = 4300.0
E, K, H, I = 128, 8, 2048, 768


def bench_us(fn, rep: int = 100) -> float:
    from triton.testing import do_bench

    return 1000.0 * do_bench(fn, warmup=10, rep=rep, return_mode="median")


def graph_us(fn) -> float:
    """Device time of one fn() replayed from a CUDA graph (no Python launch cost), cold L2: the tuner's own helper
    (kernels.gpu_timing), so the bench measures exactly what the tuner ranked."""
    return cold_l2_us(fn, reps=100)


def _inputs(t: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(t, H, generator=g, device="cuda").to(torch.bfloat16)
    logits = torch.randn(t, E, generator=g, device="cuda")
    return x, logits


def _row(name: str, t: int, us: float, ref_us: float, err: float, touched: int, **extra) -> dict:
    flops = t * K * (2 * H * 2 * I + 2 * I * H)
    nbytes = touched * (2 * I * H + H * I) * 2 + 2 * t * H * 2
    tflops, gbps = flops / us / 1e6, nbytes / us / 1e3
    out = {"name": name, "tokens": t, "us": round(us, 2), "reference_us": round(ref_us, 2),
           "speedup_vs_reference": round(ref_us / us, 2), "tflops": round(tflops, 1),
           "pct_peak_tflops": round(100 * tflops / PEAK_TFLOPS, 1), "gbps": round(gbps, 1),
           "pct_hbm": round(100 * gbps / HBM_GBPS, 1), "experts_touched": touched, "max_abs_err": err, **extra}
    print(json.dumps(out), flush=True)
    return out


def bench_case(w13, w2, t: int, kind: str) -> dict:
    x, logits = _inputs(t)
    start = time.time()
    moe.tune_fused_moe(w13, w2, K, [t], logits_dtype=torch.float32)  # tiles measured now, not in the graph
    tune_s = time.time() - start
    out = moe.fused_moe(x, logits, w13, w2, K)
    weights, ids = moe.moe_route(logits, K)
    ref_fn = lambda: reference.fused_moe(x, w13, w2, weights, ids)  # noqa: E731
    err = (out.float() - ref_fn().float()).abs().max().item()
    us = graph_us(lambda: moe.fused_moe(x, logits, w13, w2, K))
    ref_us = bench_us(ref_fn, rep=20 if t > 1024 else 100)
    touched = int(torch.unique(ids).numel())
    bucket = str(moe.bucket_of(x, w13, t * K))
    config = moe.moe_configs().get(bucket)
    # each path's best config timed as the whole op while tuning (µs): which variant won, and by how much
    candidates = moe.tuner().timings().get(bucket, {}).get("end_to_end", {})
    return _row(f"fused_moe_{kind}", t, us, ref_us, err, touched, tune_s=round(tune_s, 1),
                path=(config or {}).get("path"), config=config, bucket=bucket, paths_us=candidates)


def environment() -> dict:
    import triton

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "peak_tflops_bf16": PEAK_TFLOPS, "hbm_peak_gbps": HBM_GBPS,
            "shape": {"experts": E, "top_k": K, "hidden": H, "moe_intermediate": I, "dtype": "bfloat16"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="path of the JSON results file")
    ap.add_argument("--prefill", type=int, nargs="*", default=[4096, 16384], help="prefill token counts")
    ap.add_argument("--decode", type=int, nargs="*", default=[1, 8, 64], help="decode batch sizes")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    g = torch.Generator(device="cuda").manual_seed(1)
    w13 = (torch.randn(E, 2 * I, H, generator=g, device="cuda") / H ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(E, H, I, generator=g, device="cuda") / I ** 0.5).to(torch.bfloat16)
    rows = [bench_case(w13, w2, t, "decode") for t in args.decode]
    rows += [bench_case(w13, w2, t, "prefill") for t in args.prefill]
    result = {**environment(), "results": rows, "tuned_configs": moe.moe_configs(),
              "tuning_timings_us": moe.tuner().timings()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
