#!/usr/bin/env bash
# One device call's worth of H200 measurements of what is already built (session 6), each step with its own timeout
# so a call stays under the device's 10-minute limit. Carry .whl + vlm_service/_proto for `moe`, then (same warm
# machine, right after) .whl2 + vlm_service/_proto for `serve` (gpu_env.sh installs each into /tmp/site{,2}):
#   bash benchmarks/gpu_round.sh moe     # issue 14: bench_moe -> moe3.json, bench_decode (30B) -> decode_30b.json,
#                                        #           profile_decode b1/b8 -> profile_decode_30b.json   (~8 min)
#   bash benchmarks/gpu_round.sh serve   # issue 16: HTTP vs gRPC TTFT (ttft_http_vs_grpc.sh); issue 15: the video
#                                        # GPU tests; issue 17: the tower timing (vit_tower.json); issue 14: the MoE
#                                        # test cut by session 5's timeout                                   (~9 min)
# Round two (a fresh warm machine: load; it went back before the next round):
#   bash benchmarks/gpu_round.sh load    # issue 17: seed load shape on 8B (ttft_load_8b.tgz), mixed_load.json (~5 min)
# Round three (fresh machine): http, then video right after it on the same machine:
#   bash benchmarks/gpu_round.sh http    # carry .whlA .whl3: issue 16, HTTP vs gRPC again                      (~4 min)
#   bash benchmarks/gpu_round.sh video   # carry .whlB: issue 15, video TTFT 8B + 7B, then the video GPU tests  (~8 min)
# Session 7 (one warm machine: s7m first with .whlA + vlm_service/_proto, then s7b and s7c with .whlB; s7a on any):
#   bash benchmarks/gpu_round.sh s7m     # issue 17: mixed_load.sh (the short-first prefill policy), the engine's
#                                        # GPU tests (its CUDA-event wait after long steps)   (6.3 min on a fresh machine)
#   bash benchmarks/gpu_round.sh s7a     # issue 14: bench_moe + the MoE GPU tests                            (~2-4 min)
#   bash benchmarks/gpu_round.sh s7b     # issue 15: sweep_video_threads.py, then the 8B video TTFT with the
#                                        # sweep's best AUTO scale ($VLM_VIDEO_DECODE_THREADS_SCALE)           (4.2 min)
#   bash benchmarks/gpu_round.sh s7c     # issue 15: 7B video TTFT + the video GPU tests                       (5.6 min)
# Session 9, planned (carry .whlA + vlm_service/_proto; s9a first on a fresh machine, the others right after it):
#   bash benchmarks/gpu_round.sh s9a     # issue 17: gRPC single-request TTFT, 8B, 1024² JPEG and PNG, GPU preprocessing,
#                                        # three servers: --prefill-graph-max-tokens 0 / 1024 / 2048 (does the
#                                        # 1,267-token step lose host time inside the server?), server step logs
#   bash benchmarks/gpu_round.sh s9b     # issue 17: mixed_load.sh with the prefill graphs on, then off (same build)
#   bash benchmarks/gpu_round.sh s9c     # issue 14: 30B decode with VLM_DECODE_TENSOR_CORES=0 (its session-8 run timed
#                                        # out on a fresh machine: run it warm, with room for the JIT build)
set -o pipefail
source benchmarks/gpu_env.sh >/dev/null || exit 1
log() { grep -v "leaked\|nanobind\|^ - \|USDT\|Warning:" | tail -n "$1"; }
case "${1:-}" in
  moe)
    export VLM_MOE_CONFIGS=$OUT/moe_configs.json
    timeout 140 python3 benchmarks/bench_moe.py --out $OUT/moe3.json 2>&1 | log 8
    timeout 200 python3 benchmarks/bench_decode.py --model random:qwen3_vl_30b_a3b --vit auto \
      --out $OUT/decode_30b.json 2>&1 | log 25
    timeout 120 python3 benchmarks/profile_decode.py --model random:qwen3_vl_30b_a3b --batch 1 8 \
      --out $OUT/profile_decode_30b.json 2>&1 | log 40 ;;
  serve)
    VLM_SKIP_GPU_ENV=1 VLM_BENCH_RUN_TIMEOUT=50 timeout 200 bash benchmarks/ttft_http_vs_grpc.sh 2>&1 | log 30
    timeout 130 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_video_gpu.py 2>&1 \
      | tee $OUT/gpu_tests_video.log | log 8
    timeout 110 python3 benchmarks/bench_vit_encode.py --vit fa3 flashinfer_cudnn --out $OUT/vit_tower.json 2>&1 | log 20
    timeout 80 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_qwen3_vl_moe_gpu.py \
      -k cuda_graphs_and_overlap 2>&1 | tee $OUT/gpu_tests_moe_graphs.log | log 6 ;;
  load)  # issue 17 (carry .whl): the seed's load shape on 8B with fa3 (goal: median TTFT not worse than 399 ms; the
         # server's preprocess share under load), then mixed_load.sh (small images behind large ones)
    dir=$(python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','qwen3_vl_8b'))")
    timeout 170 python3 benchmarks/ttft.py --compare "serve:--model random:qwen3_vl_8b --vit-attention-backend fa3" \
      --compare-labels fa3 --compare-rounds 1 --num-prompts 256 --num-warmup 32 --warmup-concurrency 32 \
      --max-concurrency 32 --images-per-request 1 --image-resolution 560x560 --image-format jpeg --input-len 128 \
      --output-len 32 --tokenizer "$dir" --no-plots --result-dir /tmp/ttft_load_8b 2>&1 | log 30
    pkill -f "vlm_service.cli serve"
    tar czf $OUT/ttft_load_8b.tgz -C /tmp ttft_load_8b
    timeout 170 bash benchmarks/mixed_load.sh 2>&1 | log 40 ;;
  http)  # issue 16, first call of a fresh machine (carry .whlA = .whl without cuDNN's frontend, .whl3 = the http
         # stack without PyAV): HTTP vs gRPC after the data-URL change (fa3, so cuDNN is not needed)
    VLM_SKIP_GPU_ENV=1 VLM_BENCH_RUN_TIMEOUT=50 VLM_BENCH_SERVE_ARGS="--vit-attention-backend fa3" timeout 280 \
      bash benchmarks/ttft_http_vs_grpc.sh 2>&1 | log 30 ;;
  video)  # issue 15, right after (carry .whlB = cuDNN's frontend + PyAV): video TTFT, 8B then 7B, with the frames
          # preprocessed on the GPU; then the video GPU tests
    VIDEO_TTFT_TIMEOUT_S=230 bash benchmarks/gpu_video.sh ttft
    timeout 60 python3 benchmarks/bench_video_decode.py --preset qwen3_vl_8b --clip /tmp/clip_bench.mp4 \
      --out $OUT/video_decode_qwen3_vl_8b.json 2>&1 | log 12
    timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/processor/test_gpu_video_gpu.py \
      tests/processor/test_video_processor_gpu.py 2>&1 | tee $OUT/gpu_tests_video_processor.log | log 12 ;;
  s7a)
    export VLM_MOE_CONFIGS=$OUT/moe_configs.json
    timeout 175 python3 benchmarks/bench_moe.py --out $OUT/moe.json 2>&1 | log 6
    timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/ -k moe 2>&1 | tee $OUT/gpu_tests_moe.log \
      | log 6 ;;
  s7m)
    VLM_BENCH_RUN_TIMEOUT=150 timeout 330 bash benchmarks/mixed_load.sh 2>&1 | log 30
    timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_engine_gpu.py 2>&1 \
      | tee $OUT/gpu_tests_engine.log | log 6 ;;
  s7b)
    timeout 170 python3 benchmarks/sweep_video_threads.py --out $OUT/sweep_video_threads.json 2>&1 | log 30
    # the best all-changes-on AUTO row's scale (a scale is what the env knob sets)
    scale=$(python3 -c "import json,sys; rows=json.load(open(sys.argv[1]))['allocations']
on=[r for r in rows if r['thread_type']=='AUTO' and r['longest']==0 and r['drain'] and r['preopen'] and r['stream_frames']]
print(min(on, key=lambda r: r['prepare_device']['median_ms'])['scale'])" $OUT/sweep_video_threads.json) || scale=1.5
    echo "video decode threads scale: $scale" | tee $OUT/video_threads_scale.txt
    export VLM_VIDEO_DECODE_THREADS_SCALE=$scale
    timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/processor/test_gpu_video_stream.py 2>&1 \
      | tee $OUT/gpu_tests_video_stream.log | log 6
    VIDEO_MODELS=qwen3_vl_8b VIDEO_TTFT_PROMPTS=5 VIDEO_TTFT_TIMEOUT_S=240 bash benchmarks/gpu_video.sh ttft ;;
  s7c)
    # run as VLM_VIDEO_DECODE_THREADS_SCALE=<s7b's scale> bash benchmarks/gpu_round.sh s7c (each call's $OUT is new)
    VIDEO_MODELS=qwen2_5_vl_7b VIDEO_TTFT_PROMPTS=5 VIDEO_TTFT_TIMEOUT_S=220 bash benchmarks/gpu_video.sh ttft
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/processor/test_video_processor_gpu.py \
      tests/processor/test_gpu_video_gpu.py tests/models/test_video_gpu.py 2>&1 | tee $OUT/gpu_tests_video.log | log 12 ;;
  s9a)
    dir=$(python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','qwen3_vl_8b'))")
    ports=()
    for m in 0 1024 2048; do
      port=$(python3 -c "from vlm_service.bench.launch import free_port as f; print(f())")
      python3 -m vlm_service.cli serve --model random:qwen3_vl_8b --preprocess-device cuda --num-blocks 2048 \
        --vit-attention-backend fa3 --prefill-graph-max-tokens $m --host 127.0.0.1 --port $port --insecure \
        --log-format json --step-log > $OUT/server_pg$m.log 2>&1 &
      ports+=(127.0.0.1:$port)
      deadline=$((SECONDS + 240))
      until python3 -m vlm_service.cli health --target 127.0.0.1:$port --insecure \
          --service vlm.v1.VisionLanguageService >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && { echo "server pg$m not ready" >&2; break; }; sleep 1
      done
    done
    for fmt in jpeg png; do
      timeout 100 python3 benchmarks/ttft.py --compare "${ports[@]}" --insecure --compare-labels pg0 pg1024 pg2048 \
        --compare-rounds 2 --num-prompts 12 --max-concurrency 1 --image-resolution 1024x1024 --image-format $fmt \
        --input-len 60 --output-len 4 --tokenizer $dir --no-plots --result-dir $OUT/ttft_pg_$fmt 2>&1 | log 16
    done
    pkill -f "vlm_service.cli serve" ;;
  s9b)
    VLM_BENCH_RUN_TIMEOUT=150 timeout 280 bash benchmarks/mixed_load.sh 2>&1 | log 30
    mkdir -p $OUT/graphs_off && VLM_BENCH_SERVE_ARGS="--prefill-graph-max-tokens 0" OUT=$OUT/graphs_off \
      VLM_BENCH_RUN_TIMEOUT=150 timeout 280 bash benchmarks/mixed_load.sh 2>&1 | log 30 ;;
  s9c)
    VLM_DECODE_TENSOR_CORES=0 timeout 400 python3 benchmarks/bench_decode.py --model random:qwen3_vl_30b_a3b \
      --vit fa3 --out $OUT/decode_30b_tc0.json 2>&1 | log 12 ;;
  *) echo "usage: $0 moe|serve|load|http|video|s7a|s7b|s7c|s9a|s9b|s9c" >&2; exit 2 ;;
esac
