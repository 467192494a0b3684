#!/usr/bin/env bash
# H200 runs of the second 2026-11-29 session, as device calls of under 10 minutes each. Run them back to back so the
# FlashInfer JIT cache in /tmp stays warm (the machine is released after 30 s idle):
#   bash benchmarks/gpu_next.sh tests    # GPU-marked tests: kernels, then engine / vit_backends / models
#   bash benchmarks/gpu_next.sh engine   # decode rates + 1024² TTFT (both presets), ViT encode eager/graph, profile
#   bash benchmarks/gpu_next.sh load     # 256-request TTFT load test, fa3 vs flashinfer_cudnn vs auto (Qwen3-VL-8B)
#   bash benchmarks/gpu_next.sh single   # one 1024² image at a time through gRPC, both presets, transformers peer
#   bash benchmarks/gpu_next.sh final    # 7B decode + TTFT and ViT backends again after the host-wait fixes
#   bash benchmarks/gpu_next.sh load3    # third session: load test (client records), peer separately
#   bash benchmarks/gpu_next.sh load3w   # third session: the load test again after a warm-up at the run's concurrency
#   bash benchmarks/gpu_next.sh profile3 # third session: kernel-level profile, ViT encode + prefill
#   bash benchmarks/gpu_next.sh owed     # third session: kernels GPU suite, 7B decode after the plan fixes, engine tests
# (device tool, carry .whl (fetch_wheels.sh all + googleapis-common-protos 1.72.0) and vlm_service/_proto)
source benchmarks/gpu_env.sh >/dev/null || exit 1
log() { grep -v "leaked\|nanobind\|^ - \|USDT\|Warning:" | tail -n "$1"; }
preset_dir() { python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','$1'))"; }
case "${1:-}" in
  tests)  # owed: the kernels GPU suite in full (FlashInfer norm fix, never re-run) and the engine CUDA-graph test
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels 2>&1 | tee $OUT/gpu_tests_kernels.log | log 8
    timeout 360 python3 -m pytest -q -m gpu -p no:cacheprovider tests/engine tests/vit_backends tests/models 2>&1 \
      | tee $OUT/gpu_tests_engine_vit_models.log | log 8 ;;
  engine)
    timeout 200 python3 benchmarks/bench_decode.py --model random:qwen2_5_vl_7b --vit auto \
      --out $OUT/decode_qwen2_5_vl_7b.json 2>&1 | log 30
    timeout 150 python3 benchmarks/bench_decode.py --model random:qwen3_vl_8b --vit auto \
      --out $OUT/decode_qwen3_vl_8b.json 2>&1 | log 30
    timeout 110 python3 benchmarks/bench_vit_backends.py --out $OUT/vit_backends.json 2>&1 | log 8
    timeout 95 python3 -m pytest -q -m gpu -p no:cacheprovider tests/engine 2>&1 | tee $OUT/gpu_tests_engine.log | log 6 ;;
  final)  # the session's last 6 minutes of device time: decode targets (7B) and auto's ratio after the changes
    timeout 190 python3 benchmarks/bench_decode.py --model random:qwen2_5_vl_7b --vit auto \
      --out $OUT/decode_qwen2_5_vl_7b.json 2>&1 | log 30
    timeout 90 python3 benchmarks/bench_vit_backends.py --out $OUT/vit_backends.json 2>&1 | log 24 ;;
  load)
    dir=$(preset_dir qwen3_vl_8b)
    s="serve:--model random:qwen3_vl_8b --vit-attention-backend"
    timeout 570 python3 benchmarks/ttft.py --compare "$s fa3" "$s flashinfer_cudnn" "$s auto" \
      --compare-labels fa3 flashinfer_cudnn auto --compare-rounds 1 --num-prompts 256 --max-concurrency 32 \
      --images-per-request 1 --image-resolution 560x560 --image-format jpeg --input-len 128 --output-len 32 \
      --tokenizer $dir --result-dir /tmp/ttft_load 2>&1 | log 30
    tar czf $OUT/ttft_load_qwen3_vl_8b.tgz -C /tmp ttft_load ;;
  single)
    for m in qwen3_vl_8b qwen2_5_vl_7b; do
      dir=$(preset_dir $m)
      timeout 280 python3 benchmarks/ttft.py --compare "serve:--model random:$m" --compare-labels $m \
        --compare-rounds 1 --num-prompts 8 --max-concurrency 1 --image-resolution 1024x1024 --image-format png \
        --input-len 77 --output-len 8 --tokenizer $dir --peer transformers --peer-model $dir --peer-num-prompts 3 \
        --no-plots --result-dir /tmp/ttft_$m 2>&1 | log 16
      pkill -f "vlm_service.cli serve"
      tar czf $OUT/ttft_single_$m.tgz -C /tmp ttft_$m
    done ;;
  load3)  # third session: the load test, client-side records, then the transformers peer on the same dataset's start
    dir=$(preset_dir qwen3_vl_8b)
    s="serve:--model random:qwen3_vl_8b --vit-attention-backend"
    data="--num-prompts 256 --images-per-request 1 --image-resolution 560x560 --image-format jpeg --input-len 128
      --output-len 32 --tokenizer $dir"
    timeout 400 python3 benchmarks/ttft.py --compare "$s fa3" "$s flashinfer_cudnn" "$s auto" \
      --compare-labels fa3 flashinfer_cudnn auto --compare-rounds 1 --max-concurrency 32 $data \
      --result-dir /tmp/ttft_load 2>&1 | log 30
    tar czf $OUT/ttft_load_qwen3_vl_8b.tgz -C /tmp ttft_load
    timeout 150 python3 benchmarks/ttft.py --peer transformers --peer-model $dir --peer-num-prompts 8 \
      --max-concurrency 1 $data --no-plots --result-dir /tmp/ttft_load_peer 2>&1 | log 16
    tar czf $OUT/ttft_load_peer_qwen3_vl_8b.tgz -C /tmp ttft_load_peer ;;
  load3w)  # the same load test after a warm-up like the run (64 requests, 32 in flight); the peer's numbers stand
    dir=$(preset_dir qwen3_vl_8b)
    s="serve:--model random:qwen3_vl_8b --vit-attention-backend"
    timeout 290 python3 benchmarks/ttft.py --compare "$s fa3" "$s flashinfer_cudnn" "$s auto" \
      --compare-labels fa3 flashinfer_cudnn auto --compare-rounds 1 --max-concurrency 32 --num-prompts 256 \
      --num-warmup 64 --warmup-concurrency 32 --images-per-request 1 --image-resolution 560x560 --image-format jpeg \
      --input-len 128 --output-len 32 --tokenizer $dir --result-dir /tmp/ttft_load_warm 2>&1 | log 30
    tar czf $OUT/ttft_load_warm_qwen3_vl_8b.tgz -C /tmp ttft_load_warm ;;
  profile3)  # third session: kernel-level profile of the 1024² ViT encode and prefill, both presets
    for m in qwen2_5_vl_7b qwen3_vl_8b; do
      timeout 140 python3 benchmarks/profile_gpu.py --preset $m --vit auto --phases vit,prefill \
        --out $OUT/profile_$m.json 2>&1 | log 12
    done ;;
  owed)  # third session, first call: what the second left unmeasured
    timeout 190 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels 2>&1 | tee $OUT/gpu_tests_kernels.log | log 8
    timeout 180 python3 benchmarks/bench_decode.py --model random:qwen2_5_vl_7b --vit auto \
      --out $OUT/decode_qwen2_5_vl_7b.json 2>&1 | log 30
    timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider tests/engine 2>&1 | tee $OUT/gpu_tests_engine.log | log 8 ;;
  *) echo "usage: $0 tests|engine|load|single|final|owed|load3|load3w|profile3" >&2; exit 2 ;;
esac
