"""Fused sparse-MoE op (Qwen3-VL-MoE text layers): routing, then the experts' gated MLPs weighted by the router.

Weights are in the nn.Linear layout, one stack per expert: w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I].
CUDA -> the Triton path; CPU -> kernels.reference (a loop over experts), the tests' oracle.
The Triton path (kernels/moe_launch.py, bodies in kernels/triton/moe.py), with P = T*k pairs:
  1. route: softmax + top-k + renormalise in one kernel, which also counts the picks per expert;
  2. align: the pairs sorted by expert into blocks of BLOCK_M slots, each block one expert's (padding: a sentinel);
  3. gate_up: a grouped GEMM over the blocks, SiLU-and-mul in its epilogue -> [slots, I];
  4. down: the grouped GEMM through w2, times the routing weight, written per pair -> [P, H];
  5. the sum over each token's k picks in fp32 -> [T, H] (skipped for k = 1: step 4 writes the output).
For few pairs (P <= moe_config.PAIRS_MAX_PAIRS, decode) the tuner also times the "pairs" path
(kernels/triton/moe_pairs.py): 2 launches, routing fused into a GEMV-style gate_up over each pair, the k-sum into
the down kernel; the "gemv" / "gemv_pdl" paths (kernels/triton/moe_gemv.py): as pairs, with every load of a program
unrolled into flight and the down kernel gathering all k picks' w2 rows in one tile ("gemv_pdl": its w2 loads
overlap the gate_up kernel through programmatic dependent launch, sm_90+; "gemv_routed": the route kernel runs
first, so neither GEMV waits on its own routing); and the "decode" path
(kernels/triton/moe_decode.py): one kernel whose program (I-block, pair) routes, computes its gate/up slice and adds
that slice's down-projection partial product into an fp32 [T, H] with atomics (memset + 1 kernel + cast); for k > 1
also "sorted_atomic" (the down kernel adds each pair into an fp32 [T, H] instead of step 5); the faster path end to
end is kept per bucket (MoeConfig.path).
No step reads a device value on the host, so the op runs inside CUDA graphs. Tile configs: kernels.moe_config,
chosen by kernels.moe_tuning (measured per shape bucket on first use; call tune_fused_moe before capturing CUDA graphs).
"""

from __future__ import annotations

import functools

import torch

from kernels import moe_launch as launch
from kernels import reference
from kernels._dispatch import check, check_float, check_same_device, use_triton
from kernels.moe_config import GEMV_PATHS, INTERPRET_CONFIG, MoeBucket, MoeConfig, default_config, pow2
from kernels.moe_tuning import MoeTuner, measure_config

_TUNER: MoeTuner | None = None  # the process-wide cache of measured choices, made on first use


def _check(x: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int) -> None:
    check_float("x", x)
    check_same_device(("x", x), ("router_logits", router_logits), ("w13", w13), ("w2", w2))
    check(x.dim() == 2 and router_logits.dim() == 2 and router_logits.shape[0] == x.shape[0],
          lambda: f"x must be [T, H] and router_logits [T, E], got {tuple(x.shape)} and {tuple(router_logits.shape)}")
    e, two_i, h = w13.shape
    check(h == x.shape[1] and two_i % 2 == 0 and e == router_logits.shape[1],
          lambda: f"w13 must be [E, 2I, H] = [{router_logits.shape[1]}, 2I, {x.shape[1]}], got {tuple(w13.shape)}")
    check(tuple(w2.shape) == (e, h, two_i // 2),
          lambda: f"w2 must be [E, H, I] = [{e}, {h}, {two_i // 2}], got {tuple(w2.shape)}")
    check(1 <= top_k <= e, lambda: f"top_k must be in [1, {e}], got {top_k}")
    check(w13.dtype == x.dtype and w2.dtype == x.dtype, "x, w13 and w2 must share a dtype")


def tuner() -> MoeTuner:
    """The process-wide config cache ($VLM_MOE_CONFIGS names its optional JSON file)."""
    global _TUNER
    if _TUNER is None:
        _TUNER = MoeTuner.from_env()
    return _TUNER


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True,
              impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] float32, expert ids [T, k] int32): softmax, top-k, renormalise."""
    check(router_logits.dim() == 2, lambda: f"router_logits must be [T, E], got {tuple(router_logits.shape)}")
    check_float("router_logits", router_logits)
    check(1 <= top_k <= router_logits.shape[1], lambda: f"top_k must be in [1, {router_logits.shape[1]}], got {top_k}")
    if not use_triton(impl, router_logits):
        return reference.moe_route(router_logits, top_k, renormalize)
    return launch.route(_rows(router_logits), top_k, renormalize)


def fused_moe(x: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int,
              renormalize: bool = True, impl: str = "auto", *, config: MoeConfig | None = None) -> torch.Tensor:
    """x [T, H], router_logits [T, E] -> [T, H] in x's dtype: sum over the k picks of weight * expert MLP(x).

    config forces the Triton tiles (tests, benchmarks); by default they are measured per shape bucket on CUDA."""
    _check(x, router_logits, w13, w2, top_k)
    if not use_triton(impl, x):
        weights, ids = reference.moe_route(router_logits, top_k, renormalize)
        return reference.fused_moe(x, w13, w2, weights, ids)
    x, logits, w13, w2 = _rows(x), _rows(router_logits), _rows(w13), _rows(w2)
    config = config or _config(x, w13, w2, top_k, lambda cfg: _routed(x, logits, w13, w2, top_k, renormalize, cfg),
                               logits=logits, renormalize=renormalize)
    return _routed(x, logits, w13, w2, top_k, renormalize, config)


def _routed(x, logits, w13, w2, top_k: int, renormalize: bool, config: MoeConfig) -> torch.Tensor:
    if config.path == "pairs":
        return _pairs(x, w13, w2, top_k, config, logits=logits, renormalize=renormalize)
    if config.path == "decode":
        return _decode(x, w13, w2, top_k, config, logits=logits, renormalize=renormalize)
    if config.path in GEMV_PATHS:
        return _gemv(x, w13, w2, top_k, config, logits=logits, renormalize=renormalize)
    counts = torch.zeros(w13.shape[0], dtype=torch.int32, device=x.device)
    weights, ids = launch.route(logits, top_k, renormalize, counts)
    return _sorted(x, w13, w2, weights, ids, counts, config)


def fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, impl: str = "auto", *, config: MoeConfig | None = None) -> torch.Tensor:
    """The experts alone, for a routing made elsewhere: topk_weights [T, k] float, topk_ids [T, k] int -> [T, H]."""
    check(topk_ids.shape == topk_weights.shape and topk_ids.dim() == 2 and topk_ids.shape[0] == x.shape[0],
          lambda: f"topk_weights / topk_ids must both be [T={x.shape[0]}, k], got {tuple(topk_weights.shape)} and "
          f"{tuple(topk_ids.shape)}")
    _check(x, torch.empty(x.shape[0], w13.shape[0], device=x.device), w13, w2, topk_ids.shape[1])
    if not use_triton(impl, x):
        return reference.fused_moe(x, w13, w2, topk_weights, topk_ids)
    x, w13, w2 = _rows(x), _rows(w13), _rows(w2)
    ids, weights = topk_ids.to(torch.int32).contiguous(), topk_weights.float().contiguous()
    config = config or _config(x, w13, w2, ids.shape[1], lambda cfg: _given(x, w13, w2, weights, ids, cfg),
                               weights, ids)
    return _given(x, w13, w2, weights, ids, config)


def _given(x, w13, w2, weights, ids, config: MoeConfig) -> torch.Tensor:
    if config.path == "pairs":
        return _pairs(x, w13, w2, ids.shape[1], config, ids=ids, weights=weights)
    if config.path == "decode":
        return _decode(x, w13, w2, ids.shape[1], config, ids=ids.view(-1), weights=weights.view(-1))
    if config.path in GEMV_PATHS:
        return _gemv(x, w13, w2, ids.shape[1], config, ids=ids.view(-1), weights=weights.view(-1))
    return _sorted(x, w13, w2, weights, ids, launch.count_experts(ids, w13.shape[0]), config)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _sorted(x, w13, w2, weights, ids, counts, config: MoeConfig) -> torch.Tensor:
    t, top_k = ids.shape
    out = torch.empty_like(x)
    if t == 0:
        return out
    layout = launch.align(ids, counts, w13.shape[0], config.block_m)
    inter = torch.empty(layout.sorted_ids.shape[0], w2.shape[2], dtype=x.dtype, device=x.device)
    launch.gate_up(x, w13, layout, top_k, config.gate_up, inter)
    if top_k > 1 and config.path == "sorted_atomic":  # the k-sum fused: fp32 adds into [T, H], no [P, H]
        acc = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
        launch.down(inter, w2, layout, weights.view(-1), config.down, acc, atomic_top_k=top_k)
        return out.copy_(acc)
    pairs_out = out if top_k == 1 else torch.empty(t * top_k, x.shape[1], dtype=x.dtype, device=x.device)
    launch.down(inter, w2, layout, weights.view(-1), config.down, pairs_out)
    if top_k > 1:
        launch.sum_picks(pairs_out, top_k, out)
    return out


def _pairs(x, w13, w2, top_k: int, config: MoeConfig, *, logits=None, renormalize=True, ids=None,
           weights=None) -> torch.Tensor:
    """The pairs path: 2 launches; with logits the gate_up kernel routes (ids / weights are its scratch)."""
    t = x.shape[0]
    out = torch.empty_like(x)
    if t == 0:
        return out
    if logits is not None:
        ids = torch.empty(t, top_k, dtype=torch.int32, device=x.device)
        weights = torch.empty(t, top_k, dtype=torch.float32, device=x.device)
    flat_ids, flat_w = ids.view(-1), weights.view(-1)
    inter = torch.empty(t * top_k, w2.shape[2], dtype=x.dtype, device=x.device)
    launch.pairs_gate_up(x, w13, top_k, config.gate_up, inter, flat_ids, flat_w, logits, renormalize)
    launch.pairs_down(inter, w2, flat_ids, flat_w, top_k, config.down, out)
    return out


def _gemv(x, w13, w2, top_k: int, config: MoeConfig, *, logits=None, renormalize=True, ids=None,
          weights=None) -> torch.Tensor:
    """The gemv paths (kernels/triton/moe_gemv.py): 2 launches, each routing for itself from logits (or reading
    ids / weights); "gemv_pdl" launches the down kernel as a programmatic dependent of gate_up. "gemv_routed":
    the route kernel first (3 launches), then both kernels read its ids: each in-kernel routing is ~18 block-wide
    reductions that every program of both grids runs before its first weight load (T=1: 3072 + 512 programs).
    Under PDL (sm_90+) all three form one chain: gate_up is launched as a dependent of the route kernel and waits
    for it before reading anything, and only then lets down start; so the ids down reads before its own wait are
    complete (every gate_up program passed its wait before down could launch)."""
    out = torch.empty_like(x)
    if x.shape[0] == 0:
        return out
    pdl = config.path == "gemv_pdl" or (config.path == "gemv_routed" and launch.pdl_supported(x.device))
    chained = config.path == "gemv_routed" and logits is not None
    if chained:  # route once, up front: [T, k] ids / weights (under PDL gate_up's launch overlaps it)
        weights, ids = launch.route(logits, top_k, renormalize, pdl=pdl)
        ids, weights, logits = ids.view(-1), weights.view(-1), None
    inter = torch.empty(x.shape[0] * top_k, w2.shape[2], dtype=x.dtype, device=x.device)
    launch.gemv_gate_up(x, w13, top_k, config.gate_up, inter, logits=logits, ids=ids, renormalize=renormalize,
                        pdl=pdl, pdl_wait=chained and pdl)
    launch.gemv_down(inter, w2, top_k, config.down, out, logits=logits, ids=ids, weights=weights,
                     renormalize=renormalize, pdl=pdl)
    return out


def _decode(x, w13, w2, top_k: int, config: MoeConfig, **routing) -> torch.Tensor:
    """The decode path: zero an fp32 [T, H], one kernel adds every pick's whole MLP into it, cast to x's dtype."""
    acc = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    if x.shape[0]:
        launch.decode_fused(x, w13, w2, top_k, config.gate_up, config.down, acc, **routing)
    return acc if x.dtype == torch.float32 else acc.to(x.dtype)


@functools.cache
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def bucket_of(x: torch.Tensor, w13: torch.Tensor, pairs: int) -> MoeBucket:
    """The shape bucket a call's config is cached under."""
    e, two_i, h = w13.shape
    return MoeBucket(_device_name(x.device), str(x.dtype).removeprefix("torch."), e, h, two_i // 2, pow2(pairs))


def _config(x, w13, w2, top_k: int, run, weights=None, ids=None, logits=None, renormalize=True) -> MoeConfig:
    """The bucket's cached config, else measured now on these inputs (routed here when the caller routes in-op);
    run(config) runs the caller's whole op with that config (the end-to-end path comparison)."""
    if not x.is_cuda:
        return INTERPRET_CONFIG  # TRITON_INTERPRET on CPU tensors: nothing to measure
    bucket = bucket_of(x, w13, x.shape[0] * top_k)
    chosen = tuner().get(bucket)
    if chosen is None:
        if torch.cuda.is_current_stream_capturing():
            return default_config(bucket)  # measuring needs syncs; tune_fused_moe before capture avoids this
        if x.shape[0] == 0:
            return default_config(bucket)
        if ids is None:  # fused_moe: measure on the routing its logits give
            counts = torch.zeros(w13.shape[0], dtype=torch.int32, device=x.device)
            weights, ids = launch.route(logits, top_k, renormalize, counts)
        else:
            counts = launch.count_experts(ids, w13.shape[0])
        chosen, timings = measure_config(bucket, x, w13, w2, weights, ids, counts, top_k, run)
        tuner().put(bucket, chosen, timings)
    return chosen


def tune_fused_moe(w13: torch.Tensor, w2: torch.Tensor, top_k: int, token_counts, seed: int = 0,
                   logits_dtype: torch.dtype | None = None) -> dict[str, dict]:
    """Measure and cache the configs for T in token_counts (random inputs, uniform-ish routing) on CUDA weights,
    e.g. every decode batch size before capturing its CUDA graph; this also compiles every kernel those calls use
    (router logits in logits_dtype, default the weights' dtype). Returns moe_configs()."""
    gen = torch.Generator(device=w13.device).manual_seed(seed)
    for t in token_counts:
        x = torch.randn(t, w13.shape[2], generator=gen, device=w13.device).to(w13.dtype)
        logits = torch.randn(t, w13.shape[0], generator=gen, device=w13.device).to(logits_dtype or w13.dtype)
        fused_moe(x, logits, w13, w2, top_k)
    return moe_configs()


def moe_configs() -> dict[str, dict]:
    """Shape bucket (as text) -> the tile config chosen for it in this process."""
    return tuner().choices()
