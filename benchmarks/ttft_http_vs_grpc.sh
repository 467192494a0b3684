#!/usr/bin/env bash
# H200: TTFT of the OpenAI-compatible HTTP front door against gRPC on ONE server (random:qwen3_vl_8b), one 1024² PNG
# request at a time (the `single` case of gpu_next.sh). Goal: HTTP adds <= 5 ms to the median TTFT.
# The harness runs four times against the same process, alternating grpc/http/grpc/http with a different --seed each
# time: the images differ, so neither transport is served from the other's vision or prefix cache. Both ask logprobs
# (--logprobs): random weights emit special tokens, which an OpenAI stream carries as logprobs entries, not content.
#   bash benchmarks/ttft_http_vs_grpc.sh        (device tool; carry .whl and vlm_service/_proto as for gpu_next.sh;
#                                                .whl also needs fastapi, starlette, uvicorn, httpx and their deps
#                                                unless the image has them)
# Writes $OUT/ttft_http_vs_grpc.json (median/mean/p99 TTFT per run and the HTTP-minus-gRPC medians) and the raw
# results as $OUT/ttft_http_vs_grpc.tgz. About 2-3 minutes: model load + warm-up ~90 s, each run ~10 s.
source benchmarks/gpu_env.sh >/dev/null || exit 1
python3 -c "import fastapi, uvicorn, httpx" || { echo "the http extra is missing on this host (see above)" >&2; exit 1; }
dir=$(python3 -c "from vlm_service.demo.presets import ensure_preset_dir as e; print(e('/tmp/vlm-state','random:qwen3_vl_8b'))")
python3 -m vlm_service.cli serve --model random:qwen3_vl_8b --insecure --port 50051 --http-port 8000 \
  --log-format json > /tmp/serve_http.log 2>&1 &
pid=$!
python3 - <<'PY' || { tail -30 /tmp/serve_http.log; kill $pid; exit 1; }
import time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen("http://127.0.0.1:8000/health/ready", timeout=1)
        break
    except Exception:
        time.sleep(1)
else:
    raise SystemExit("not ready after 200 s")
PY
common="--num-prompts 12 --num-warmup 3 --max-concurrency 1 --image-resolution 1024x1024 --image-format png
  --input-len 77 --output-len 8 --tokenizer $dir --no-plots --logprobs"
seed=1
for backend in grpc openai grpc openai; do
  if [ $backend = grpc ]; then target="--target 127.0.0.1:50051 --insecure"; else target="--backend openai --target http://127.0.0.1:8000"; fi
  timeout 60 python3 benchmarks/ttft.py $target $common --seed $seed --label $backend \
    --result-dir /tmp/ttft_http/$seed-$backend 2>&1 | grep -E "TTFT|completed|error" | head -4
  seed=$((seed + 1))
done
kill -TERM $pid; wait $pid; echo "server exit code $?"
python3 - <<'PY' | tee $OUT/ttft_http_vs_grpc.json
import json, pathlib, statistics
runs = []
for path in sorted(pathlib.Path("/tmp/ttft_http").glob("*/summary.json")):
    m = json.loads(path.read_text())["runs"][0]["metrics"]
    runs.append({"run": path.parent.name, "completed": m["completed"], "median_ttft_ms": m["median_ttft_ms"],
                 "mean_ttft_ms": m["mean_ttft_ms"], "p99_ttft_ms": m["p99_ttft_ms"],
                 "median_tpot_ms": m["median_tpot_ms"]})
if any(r["median_ttft_ms"] is None for r in runs):
    raise SystemExit(f"a run measured no TTFT (see its requests-*.jsonl): {runs}")
med = {b: statistics.median(r["median_ttft_ms"] for r in runs if r["run"].endswith(b)) for b in ("grpc", "openai")}
print(json.dumps({"runs": runs, "median_of_medians_ms": med, "http_minus_grpc_ms": med["openai"] - med["grpc"]},
                 indent=1))
PY
tar czf $OUT/ttft_http_vs_grpc.tgz -C /tmp ttft_http serve_http.log
