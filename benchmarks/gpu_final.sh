#!/usr/bin/env bash
# One H200 call (device tool, carry .whl and vlm_service/_proto), most important first: the TTFT load test
# (256 requests, one 560x560 JPEG each, 128 in / 32 out, concurrency 32, random:qwen3_vl_8b) for
# fa3 vs flashinfer_cudnn vs auto, with the transformers peer on 16 of the requests; then the whole-ViT encode per
# backend, the MRoPE tile sweep and the engine decode/TTFT benchmark on the 7B preset. Each step has its own time
# limit and leaves its results under $OUT even when a later step fails.
source benchmarks/gpu_env.sh >/dev/null || exit 1
log() { grep -v "leaked\|nanobind\|^ - " | tail -n "$1"; }
python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','qwen3_vl_8b'))"
m="serve:--model random:qwen3_vl_8b --vit-attention-backend"
timeout 240 python3 benchmarks/ttft.py --compare "$m fa3" "$m flashinfer_cudnn" "$m auto" --compare-labels fa3 flashinfer_cudnn auto \
  --compare-rounds 1 --num-prompts 256 --max-concurrency 32 --images-per-request 1 --image-resolution 560x560 \
  --image-format jpeg --input-len 128 --output-len 32 --tokenizer /tmp/vlm-state/models/random-qwen3_vl_8b-v2 \
  --peer transformers --peer-model /tmp/vlm-state/models/random-qwen3_vl_8b-v2 --peer-num-prompts 8 \
  --result-dir /tmp/ttft 2>&1 | log 30
pkill -f "vlm_service.cli serve"  # a server left by a timed-out run would hold the GPU's memory
tar czf $OUT/ttft_qwen3_vl_8b.tgz -C /tmp ttft
timeout 60 python3 benchmarks/bench_vit_encode.py --full-model --no-profile --out $OUT/vit_encode.json 2>&1 | log 3
timeout 45 python3 benchmarks/bench_kernels.py --only mrope --out $OUT/mrope.json 2>&1 | grep -i "best\|default\|reference" | log 8
timeout 110 python3 benchmarks/bench_decode.py --model random:qwen2_5_vl_7b --vit auto --out $OUT/decode_qwen2_5_vl_7b.json 2>&1 | log 4
