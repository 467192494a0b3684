#!/usr/bin/env bash
# H200 runs for video input (issue 15), each one device call of under 8 minutes (a fresh machine builds FlashInfer's
# JIT kernels inside the first server start: ~2 min):
#   bash benchmarks/gpu_video.sh ttft    # TTFT of one 10 s 1280x720 H.264 clip (30 fps source, sampled at 2 fps),
#                                        # qwen3_vl_8b and qwen2_5_vl_7b, server breakdown + transformers peer
#   bash benchmarks/gpu_video.sh tests   # the GPU-marked video tests (processor half against transformers' video
#                                        # processors, which need torchvision, on the CPU and, for the GPU video path,
#                                        # on CUDA; the models on CUDA), the host stages of the TTFT clip per preset
#                                        # ($OUT/video_decode_<preset>.json) and (VIDEO_CPU_SUITES=1) the CPU video
#                                        # suites on the host
# VIDEO_MODELS (default: both presets) and VIDEO_TTFT_PROMPTS (default 3) narrow or widen the ttft run.
# Carry what gpu_next.sh carries (.whl/ with the GPU extras and googleapis-common-protos, vlm_service/_proto) plus
# a PyAV wheel for Python 3.12: pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl av
source benchmarks/gpu_env.sh >/dev/null || exit 1
python3 -c "import av" 2>/dev/null || { echo "PyAV (av) is missing: carry its wheel in .whl/" >&2; exit 1; }
log() { grep -v "leaked\|nanobind\|^ - \|USDT\|Warning:" | tail -n "$1"; }
preset_dir() { python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','$1'))"; }
case "${1:-}" in
  ttft)
    for m in ${VIDEO_MODELS:-qwen3_vl_8b qwen2_5_vl_7b}; do
      dir=$(preset_dir $m)
      # unique clips: every request misses the vision and prefix caches, as a first request would
      timeout ${VIDEO_TTFT_TIMEOUT_S:-240} python3 benchmarks/ttft.py --compare "serve:--model random:$m --warmup-image-side 0" \
        --compare-labels $m --compare-rounds 1 --num-prompts ${VIDEO_TTFT_PROMPTS:-3} --num-warmup 1 --max-concurrency 1 \
        --images-per-request 0 --videos-per-request 1 --video-seconds 10 --video-resolution 1280x720 \
        --video-fps 30 --video-format mp4 --unique-videos --input-len 32 --output-len 8 --tokenizer $dir \
        --peer transformers --peer-model $dir --peer-num-prompts 2 --no-plots \
        --result-dir /tmp/ttft_video_$m 2>&1 | log 24
      pkill -f "vlm_service.cli serve"
      tar czf $OUT/ttft_video_$m.tgz -C /tmp ttft_video_$m
    done ;;
  tests)
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/processor/test_video_processor_gpu.py \
      tests/processor/test_gpu_video_gpu.py tests/models/test_video_gpu.py 2>&1 | tee $OUT/gpu_tests_video.log | log 12
    # the host stages of the TTFT clip (demux, segment decode, RGB, resize, the CPU and the GPU video paths)
    for m in qwen3_vl_8b qwen2_5_vl_7b; do
      timeout 90 python3 benchmarks/bench_video_decode.py --preset $m --clip /tmp/clip_bench.mp4 \
        --out $OUT/video_decode_$m.json 2>&1 | log 12
    done
    [ -n "${VIDEO_CPU_SUITES:-}" ] && timeout 200 python3 -m pytest -q -p no:cacheprovider tests/processor/test_video.py \
      tests/processor/test_video_decode.py tests/processor/test_gpu_video.py tests/models/test_video_parity.py \
      2>&1 | tee $OUT/tests_video_cpu_suites.log | log 8 ;;
  *) echo "usage: $0 ttft|tests" >&2; exit 2 ;;
esac
