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
#   bash benchmarks/gpu_next.sh tp       # tensor parallelism: TP=1 7B decode unchanged, NCCL tests (>= 2 GPUs)
#   bash benchmarks/gpu_next.sh moe_engine  # issue 14: MoE GPU tests, 30B-A3B decode rates + 1024² TTFT (~6 min)
#   bash benchmarks/gpu_next.sh moe      # issue 14: the seed's load test on 30B-A3B, fa3 / cudnn / auto x 3 (~7-9 min)
#   bash benchmarks/gpu_next.sh preprocess4  # issue 17: GPU vs host image preprocessing, in process and 1024² TTFT
#                                            # through gRPC (both presets, JPEG + PNG); < 8 min; $OUT/preprocess4.json
# (device tool, carry .whl (fetch_wheels.sh all + googleapis-common-protos 1.72.0) and vlm_service/_proto)
source benchmarks/gpu_env.sh >/dev/null || exit 1
log() { grep -v "leaked\|nanobind\|^ - \|USDT\|Warning:" | tail -n "$1"; }
# a server in the background on 127.0.0.1:$2 with ViT backend $1 (KV pool fixed at $3 blocks); its pid in $SRV_$1
moe_serve() {
  python3 -m vlm_service.cli serve --model random:qwen3_vl_30b_a3b --vit-attention-backend $1 --host 127.0.0.1 \
    --port $2 --insecure --num-blocks $3 > /tmp/moe_server_$1.log 2>&1 &
  eval "SRV_$1=$!"
}
# wait (at most $3 s) until server $1 on port $2 is ready; fail early when it died (its log tail on failure)
moe_ready() {
  local end=$((SECONDS + $3)) pid; eval "pid=\$SRV_$1"
  until python3 -m vlm_service.cli health --target 127.0.0.1:$2 --insecure --service vlm.v1.VisionLanguageService \
      >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ] || ! kill -0 $pid 2>/dev/null; then tail -n 30 /tmp/moe_server_$1.log; return 1; fi
    sleep 2
  done
  echo "$1 ready at ${SECONDS}s"
}
preset_dir() { python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','$1'))"; }
case "${1:-}" in
  tp)  # tensor parallelism (issue 18): TP=1 unchanged on one GPU; the NCCL tests and the channel cost need >= 2 GPUs
    timeout 200 python3 benchmarks/bench_decode.py --model random:qwen2_5_vl_7b --vit auto \
      --out $OUT/decode_qwen2_5_vl_7b_tp1.json 2>&1 | log 30
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_engine_gpu.py \
      tests/engine/parallel/test_tp_gpu.py 2>&1 | tee $OUT/gpu_tests_tp.log | log 8
    if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
      timeout 120 python3 benchmarks/bench_tp_channel.py --size 2 --batch 64 --device cuda \
        --out $OUT/tp_channel_cuda.json 2>&1 | log 20
    fi ;;
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
  moe_engine)  # issue 14: the MoE GPU tests (model + kernel), then decode ms/token at batch 1, tok/s at 8 and 64
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_qwen3_vl_moe_gpu.py \
      tests/models/test_presets.py tests/kernels -k "moe or 30b" 2>&1 | tee $OUT/gpu_tests_moe.log | log 8
    timeout 330 python3 benchmarks/bench_decode.py --model random:qwen3_vl_30b_a3b --vit auto \
      --out $OUT/decode_qwen3_vl_30b_a3b.json 2>&1 | log 30 ;;
  moe)  # issue 14: the seed's benchmark (256 prompts, one random 560² JPEG each, 128 text tokens in, 32 out, 32 in
    # flight) on random:qwen3_vl_30b_a3b, 3 rounds of 256 per backend. Three 62 GB servers do not fit in one H200,
    # two do (KV fixed at 2048 blocks = 32k tokens = 3.2 GB each; the load keeps ~16k tokens in flight): fa3 and
    # flashinfer_cudnn are up together and interleaved round by round, then fa3 gives way to auto, which is
    # interleaved with the same flashinfer_cudnn server. flashinfer_cudnn runs in both phases: its two results
    # measure the drift between them. Servers start one after another (the first pays the JIT builds).
    trap 'kill $(jobs -p) 2>/dev/null' EXIT
    dir=$(preset_dir qwen3_vl_30b_a3b)
    data="--num-prompts 768 --compare-rounds 3 --max-concurrency 32 --num-warmup 64 --warmup-concurrency 32
      --images-per-request 1 --image-resolution 560x560 --image-format jpeg --input-len 128 --output-len 32
      --tokenizer $dir --insecure"
    moe_serve fa3 50061 2048; moe_ready fa3 50061 240 || exit 1
    moe_serve flashinfer_cudnn 50062 2048; moe_ready flashinfer_cudnn 50062 120 || exit 1
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee $OUT/moe_gpu_memory.csv
    timeout 170 python3 benchmarks/ttft.py --compare 127.0.0.1:50061 127.0.0.1:50062 \
      --compare-labels fa3 flashinfer_cudnn $data --result-dir /tmp/ttft_moe_a 2>&1 | log 16
    tar czf $OUT/ttft_load_qwen3_vl_30b_a3b_a.tgz -C /tmp ttft_moe_a  # phase A kept if phase B runs out of time
    kill $SRV_fa3; wait $SRV_fa3
    moe_serve auto 50063 2048; moe_ready auto 50063 120 || exit 1
    timeout 170 python3 benchmarks/ttft.py --compare 127.0.0.1:50062 127.0.0.1:50063 \
      --compare-labels flashinfer_cudnn auto $data --result-dir /tmp/ttft_moe_b 2>&1 | log 16
    kill $SRV_flashinfer_cudnn $SRV_auto; wait
    cp /tmp/moe_server_*.log /tmp/ttft_moe_b/
    tar czf $OUT/ttft_load_qwen3_vl_30b_a3b_b.tgz -C /tmp ttft_moe_b ;;
  preprocess4)  # issue 17: --preprocess-device cuda vs cpu. Two servers per preset (started once, kept for both
    # formats), measured interleaved one request at a time; every step is bounded by what is left of 470 s
    end=$((SECONDS + 470))
    left() { local l=$((end - SECONDS)); [ "$l" -gt "$1" ] && echo "$1" || echo $((l > 5 ? l : 5)); }
    for m in qwen3_vl_8b qwen2_5_vl_7b; do
      dir=$(preset_dir $m) pids=() ports=()
      for dev in cpu cuda; do
        port=$(python3 -c "from vlm_service.bench.launch import free_port as f; print(f())")
        python3 -m vlm_service.cli serve --model random:$m --preprocess-device $dev --num-blocks 2048 \
          --host 127.0.0.1 --port $port --insecure > $OUT/server_${m}_$dev.log 2>&1 &
        pids+=($!) ports+=($port)
        deadline=$((SECONDS + $(left 240)))
        until python3 -m vlm_service.cli health --target 127.0.0.1:$port --insecure \
            --service vlm.v1.VisionLanguageService >/dev/null 2>&1; do
          [ $SECONDS -ge $deadline ] && { echo "$m $dev server not ready" >&2; break; }; sleep 1
        done
      done
      for fmt in jpeg png; do
        timeout $(left 80) python3 benchmarks/ttft.py --compare 127.0.0.1:${ports[0]} 127.0.0.1:${ports[1]} \
          --insecure --compare-labels cpu cuda --compare-rounds 2 --num-prompts 12 --max-concurrency 1 \
          --image-resolution 1024x1024 --image-format $fmt --input-len 60 --output-len 4 --tokenizer $dir \
          --no-plots --result-dir $OUT/ttft_pre4_${m}_$fmt 2>&1 | log 14
      done
      for pid in "${pids[@]}"; do kill $pid; done; wait "${pids[@]}" 2>/dev/null
    done
    timeout $(left 60) python3 benchmarks/bench_preprocess.py --out $OUT/preprocess_inproc.json 2>&1 | log 10
    timeout $(left 60) python3 -m pytest -q -m gpu -p no:cacheprovider tests/processor/test_gpu_preprocess_gpu.py \
      -k "corpus or bf16 or threads" 2>&1 | tee $OUT/gpu_tests_preprocess_quick.log | log 6
    python3 benchmarks/summarize_preprocess.py $OUT | tee $OUT/preprocess4.json ;;
  *) echo "usage: $0 tp|tests|engine|load|single|final|owed|load3|load3w|profile3|moe_engine|moe|preprocess4" >&2; exit 2 ;;
esac
