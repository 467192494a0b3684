#!/usr/bin/env bash
# The H200 runs still owed after 2026-11-29 (see benchmarks/results/2026-11-29_h200/README.md), as three device
# calls of under 10 minutes each; run them back to back so the FlashInfer JIT cache in /tmp stays warm:
#   bash benchmarks/gpu_next.sh tests   # GPU tests re-run after that day's fixes (norms, demo head_dim 64, engine)
#   bash benchmarks/gpu_next.sh engine  # 1024² TTFT + decode rates on both presets; ViT backends with loop timing
#   bash benchmarks/gpu_next.sh serve   # single-request 1024² TTFT through gRPC on both presets + transformers peer
# (device tool, carry .whl with googleapis-common-protos added, and vlm_service/_proto)
source benchmarks/gpu_env.sh >/dev/null || exit 1
log() { grep -v "leaked\|nanobind\|^ - " | tail -n "$1"; }
case "${1:-}" in
  tests)
    timeout 560 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 300 tests/kernels tests/models tests/engine \
      2>&1 | tee $OUT/gpu_tests.log | log 15 ;;
  engine)
    for m in qwen2_5_vl_7b qwen3_vl_8b; do
      timeout 150 python3 benchmarks/bench_decode.py --model random:$m --vit auto --out $OUT/decode_$m.json 2>&1 | log 4
    done
    timeout 150 python3 benchmarks/bench_vit_backends.py --out $OUT/vit_backends.json 2>&1 | log 6 ;;
  serve)
    for m in qwen2_5_vl_7b qwen3_vl_8b; do
      dir=$(python3 -c "from vlm_service.models.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','$m'))")
      timeout 260 python3 benchmarks/ttft.py --compare "serve:--model random:$m" --compare-labels $m \
        --num-prompts 16 --max-concurrency 1 --image-resolution 1024x1024 --image-format png --input-len 77 \
        --output-len 8 --tokenizer $dir --peer transformers --peer-model $dir --peer-num-prompts 4 \
        --no-plots --result-dir /tmp/ttft_$m 2>&1 | log 20
      pkill -f "vlm_service.cli serve"
      tar czf $OUT/ttft_single_$m.tgz -C /tmp ttft_$m
    done ;;
  *) echo "usage: $0 tests|engine|serve" >&2; exit 2 ;;
esac
