#!/usr/bin/env bash
# MoE decode work (issue 14 follow-up) on one H200, one device call of ~6 min (each step has its own timeout):
#   source benchmarks/gpu_env.sh && bash benchmarks/gpu_moe_decode.sh
# 1. the GPU tests of the decode MoE path, the q/k norm + MRoPE and norm + router fusions, and the models using them;
# 2. bench_moe.py (the op alone, every path measured by the tuner with the bench's own timing) -> $OUT/moe3.json;
# 3. bench_decode.py on random:qwen3_vl_30b_a3b: ms/token at batch 1, tok/s at 8 and 64 -> $OUT/decode_30b_s5.json;
# 4. profile_decode.py: per-kernel µs per graph-captured step at batch 1 and 8 -> $OUT/profile_decode_30b.json.
# The tuned MoE configs are shared through $VLM_MOE_CONFIGS, so each bucket is measured once.
set -o pipefail
: "${OUT:?set OUT}"
export VLM_MOE_CONFIGS=$OUT/moe_configs.json
log() { grep -v "leaked\|nanobind\|^ - \|USDT\|Warning:" | tail -n "$1"; }
# (-k "not 4096": the 4096-token shape test tunes the prefill buckets, which bench_moe.py does next anyway)
timeout 130 python3 -m pytest -q -m gpu -p no:cacheprovider -k "not 4096" tests/kernels/test_moe_kernels.py \
  tests/kernels/test_qk_norm_rope.py tests/kernels/test_norm_router.py tests/models/test_qwen3_vl_moe_gpu.py \
  tests/models/test_qwen3_vl_gpu.py 2>&1 | tee $OUT/gpu_tests_moe_decode.log | log 12
timeout 140 python3 benchmarks/bench_moe.py --out $OUT/moe3.json 2>&1 | log 8
timeout 200 python3 benchmarks/bench_decode.py --model random:qwen3_vl_30b_a3b --vit auto \
  --out $OUT/decode_30b_s5.json 2>&1 | log 25
timeout 110 python3 benchmarks/profile_decode.py --model random:qwen3_vl_30b_a3b --batch 1 8 \
  --out $OUT/profile_decode_30b.json 2>&1 | log 36
