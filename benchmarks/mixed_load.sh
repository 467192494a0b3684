#!/usr/bin/env bash
# H200, issue 17: do large images stall small ones behind them? One server (random:qwen3_vl_8b, fa3, images on the
# host path: --preprocess-device cpu) and the harness twice: small requests alone (512² JPEG, one at a time), then the
# same small requests while a second harness keeps 4 large requests in flight (2048² noise PNGs, ~12 MB each, the
# slowest images to decode). Each small request has a new image (--seed differs per run; no cache hits).
#   bash benchmarks/mixed_load.sh      (after source benchmarks/gpu_env.sh; carry .whl + vlm_service/_proto)
# Writes $OUT/mixed_load.json: small-request TTFT alone vs under the large load (median, p90, p99) and the large
# run's own numbers. ~2 min.
: "${OUT:?set OUT}"
py=${PYTHON:-python3}
model=${VLM_BENCH_MODEL:-random:qwen3_vl_8b}
port=${VLM_BENCH_GRPC_PORT:-50061}
work=${VLM_BENCH_WORK:-/tmp/mixed_load}
rm -rf "$work" && mkdir -p "$work" "$OUT"
source benchmarks/serve_bg.sh
dir=$(model_dir "$model") || exit 1
# shellcheck disable=SC2086
serve_bg "$work/serve.log" "grpc:$port" --model "$model" --insecure --host 127.0.0.1 --port "$port" \
  --vit-attention-backend ${VLM_BENCH_VIT:-fa3} --preprocess-device cpu --log-format json ${VLM_BENCH_SERVE_ARGS:-} || exit 1
run() {  # run LABEL SEED RESOLUTION FORMAT PROMPTS CONCURRENCY
  timeout "${VLM_BENCH_RUN_TIMEOUT:-120}" $py benchmarks/ttft.py --target 127.0.0.1:$port --insecure \
    --num-prompts "$5" --num-warmup 2 --max-concurrency "$6" --image-resolution "$3" --image-format "$4" \
    --input-len 64 --output-len 8 --tokenizer "$dir" --no-plots --logprobs --seed "$2" --label "$1" \
    --result-dir "$work/$1" > "$work/$1.log" 2>&1
  echo "run $1: exit $?"
}
small=${VLM_SMALL_PROMPTS:-24}
run small_alone 1 512x512 jpeg "$small" 1
large=${VLM_LARGE_RESOLUTION:-2048x2048}
run large 2 "$large" png ${VLM_LARGE_PROMPTS:-96} 4 &
large_pid=$!
# the small run starts once the large run's requests are being served (its dataset takes a while to make)
for _ in $(seq 240); do
  [ "$(grep -c "pixels=$(( ${large%x*} * ${large#*x} ))" "$work/serve.log")" -ge 2 ] && break; sleep 0.5
done
run small_under_load 3 512x512 jpeg "$small" 1
wait $large_pid
kill -TERM $server_pid; wait $server_pid; trap - EXIT
$py - "$work" "$model" <<'PY' | tee "$OUT/mixed_load.json"
import json, pathlib, sys
work, model = pathlib.Path(sys.argv[1]), sys.argv[2]
out = {"model": model, "small": "512x512 jpeg, concurrency 1", "large": "noise png, concurrency 4 (mixed_load.sh)"}
for run in ("small_alone", "small_under_load", "large"):
    path = work / run / "summary.json"
    if not path.exists():
        out[run] = {"missing": True}
        continue
    m = json.loads(path.read_text())["runs"][0]["metrics"]
    t = m["ttft_ms"]
    out[run] = {"completed": m["completed"], "failed": m["failed"], "median_ttft_ms": t["median"],
                "p90_ttft_ms": t.get("p90"), "p99_ttft_ms": t.get("p99"), "mean_ttft_ms": t.get("mean"),
                "duration_s": m.get("duration"), "log": f"{run}.log"}
a, b = out.get("small_alone", {}), out.get("small_under_load", {})
if "median_ttft_ms" in a and "median_ttft_ms" in b:
    out["small_median_ttft_added_by_large_load_ms"] = round(b["median_ttft_ms"] - a["median_ttft_ms"], 2)
print(json.dumps(out, indent=1))
PY
tar czf "$OUT/mixed_load.tgz" -C "$(dirname "$work")" "$(basename "$work")"
