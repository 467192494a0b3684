#!/usr/bin/env bash
# H200: TTFT of the OpenAI-compatible HTTP front door against gRPC on ONE server (random:qwen3_vl_8b), one 1024² PNG
# request at a time (the `single` case of gpu_next.sh). Goal (issue 16): HTTP adds <= 5 ms to the median TTFT.
# The harness runs four times against the same process, alternating grpc/openai/grpc/openai with a different --seed
# each time: the images differ, so neither transport is served from the other's vision or prefix cache. Both ask
# logprobs (--logprobs): random weights emit special tokens, which an OpenAI stream carries as logprobs entries only.
#   bash benchmarks/ttft_http_vs_grpc.sh        (device tool; carry .whl and vlm_service/_proto as for gpu_next.sh;
#                                                fastapi, starlette, uvicorn, httpx etc. must be importable: from .whl,
#                                                or from a PYTHONPATH set by the caller, which is kept)
# Writes $OUT/ttft_http_vs_grpc.json (median/mean/p99 TTFT per run and the HTTP-minus-gRPC medians) and the raw
# results + logs as $OUT/ttft_http_vs_grpc.tgz. About 2-3 minutes: model load + warm-up ~90 s, each run ~10 s.
# Overrides (for a CPU dry run of this script's logic with the demo model; defaults are the H200 run):
#   VLM_BENCH_MODEL=random:qwen3_vl_8b  VLM_BENCH_SERVE_ARGS=""  VLM_BENCH_RESOLUTION=1024x1024  VLM_BENCH_PROMPTS=12
#   VLM_BENCH_WARMUP=3  VLM_BENCH_RUN_TIMEOUT=60 (s per harness run)  VLM_BENCH_READY_S=200  VLM_BENCH_GRPC_PORT=50051
#   VLM_BENCH_HTTP_PORT=8000  VLM_BENCH_WORK=/tmp/ttft_http  PYTHON=python3
#   VLM_SKIP_GPU_ENV=1 (do not source gpu_env.sh: a CPU host; PYTHONPATH defaults to the checkout)
#   e.g. OUT=/tmp/out VLM_SKIP_GPU_ENV=1 VLM_BENCH_MODEL=demo VLM_BENCH_SERVE_ARGS="--device cpu" \
#        VLM_BENCH_RESOLUTION=64x64 VLM_BENCH_PROMPTS=2 VLM_BENCH_WARMUP=1 bash benchmarks/ttft_http_vs_grpc.sh
: "${OUT:?set OUT to the folder the JSON goes to}"
caller_path=$PYTHONPATH
if [ "${VLM_SKIP_GPU_ENV:-0}" != 1 ]; then
  source benchmarks/gpu_env.sh >/dev/null || exit 1
  export PYTHONPATH=$PYTHONPATH${caller_path:+:$caller_path}  # gpu_env.sh resets it; keep the caller's extras
else
  export PYTHONPATH=${caller_path:-$PWD} VLM_STATE_DIR=${VLM_STATE_DIR:-/tmp/vlm-state}
fi
mkdir -p "$OUT"
py=${PYTHON:-python3}
model=${VLM_BENCH_MODEL:-random:qwen3_vl_8b}
grpc_port=${VLM_BENCH_GRPC_PORT:-50051} http_port=${VLM_BENCH_HTTP_PORT:-8000}
work=${VLM_BENCH_WORK:-/tmp/ttft_http}
rm -rf "$work" && mkdir -p "$work"  # stale summaries of an earlier run would be counted below
$py -c "import fastapi, uvicorn, httpx" || { echo "the http extra is missing on this host (see above)" >&2; exit 1; }
source benchmarks/serve_bg.sh
dir=$(model_dir "$model") || exit 1
# shellcheck disable=SC2086  # VLM_BENCH_SERVE_ARGS is a list of flags
serve_bg "$work/serve_http.log" "http:$http_port" --model "$model" --insecure --host 127.0.0.1 --port "$grpc_port" \
  --http-port "$http_port" --log-format json ${VLM_BENCH_SERVE_ARGS:-} || exit 1
pid=$server_pid
common="--num-prompts ${VLM_BENCH_PROMPTS:-12} --num-warmup ${VLM_BENCH_WARMUP:-3} --max-concurrency 1
  --image-resolution ${VLM_BENCH_RESOLUTION:-1024x1024} --image-format png --input-len 77 --output-len 8
  --tokenizer $dir --no-plots --logprobs"
seed=1
for backend in grpc openai grpc openai; do
  if [ $backend = grpc ]; then target="--target 127.0.0.1:$grpc_port --insecure"
  else target="--backend openai --target http://127.0.0.1:$http_port"; fi
  # shellcheck disable=SC2086
  timeout "${VLM_BENCH_RUN_TIMEOUT:-60}" $py benchmarks/ttft.py $target $common --seed $seed --label $backend \
    --result-dir "$work/$seed-$backend" > "$work/$seed-$backend.log" 2>&1
  echo "run $seed-$backend: exit $?"; grep -E "TTFT|completed|error" "$work/$seed-$backend.log" | head -4
  seed=$((seed + 1))
done
kill -TERM $pid; wait $pid; echo "server exit code $?"; trap - EXIT
$py - "$work" "$model" "${VLM_BENCH_RESOLUTION:-1024x1024}" <<'PY' | tee "$OUT/ttft_http_vs_grpc.json"
import json, pathlib, statistics, sys
work, model, resolution = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs, missing = [], []
for run in ("1-grpc", "2-openai", "3-grpc", "4-openai"):
    path = work / run / "summary.json"
    if not path.exists():
        missing.append(run)
        continue
    m = json.loads(path.read_text())["runs"][0]["metrics"]
    runs.append({"run": run, "completed": m["completed"], "median_ttft_ms": m["median_ttft_ms"],
                 "mean_ttft_ms": m["mean_ttft_ms"], "p99_ttft_ms": m["p99_ttft_ms"],
                 "median_tpot_ms": m["median_tpot_ms"]})
med = {}
for b in ("grpc", "openai"):
    vals = [r["median_ttft_ms"] for r in runs if r["run"].endswith(b) and r["completed"]]
    med[b] = statistics.median(vals) if vals else None
diff = med["openai"] - med["grpc"] if None not in med.values() else None
print(json.dumps({"model": model, "image_resolution": resolution, "runs": runs, "missing_runs": missing,
                  "median_of_medians_ms": med, "http_minus_grpc_ms": diff,
                  "goal_http_minus_grpc_ms_at_most": 5.0}, indent=1))
PY
tar czf "$OUT/ttft_http_vs_grpc.tgz" -C "$(dirname "$work")" "$(basename "$work")"
