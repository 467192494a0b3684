#!/usr/bin/env bash
# H200, issue 17: do large images stall small ones behind them? One server (random:qwen3_vl_8b, fa3, images on the
# host path: --preprocess-device cpu) and the harness twice: small requests alone (512² JPEG, one at a time), then the
# same small requests while a second harness keeps 4 large requests in flight (2048² noise PNGs, ~12 MB each, the
# slowest images to decode). Each small request has a new image (--seed differs per run; no cache hits).
#   bash benchmarks/mixed_load.sh      (after source benchmarks/gpu_env.sh; carry .whl + vlm_service/_proto)
# Writes $OUT/mixed_load.json: small-request TTFT alone vs under the large load (median, p90, p99), the server's
# breakdown (queue / vision / prefill medians), the large run's own numbers, and from the server's step log
# (--step-log) why the small ones waited: steps from first scheduled to first token, those steps' times, the step
# in flight when they were scheduled (benchmarks/summarize_steps.py; per request in $OUT/mixed_load_steps.json).
# Baseline without the short-first policy: VLM_BENCH_SERVE_ARGS="--short-prefill-tokens 0". ~2 min.
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
  --vit-attention-backend ${VLM_BENCH_VIT:-fa3} --preprocess-device cpu --log-format json --step-log ${VLM_BENCH_SERVE_ARGS:-} || exit 1
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
$py - "$work" "$model" "$OUT" "${VLM_BENCH_SERVE_ARGS:-}" <<'PY' | tee "$OUT/mixed_load.json"
import json, pathlib, statistics, sys
sys.path.insert(0, "benchmarks")
from summarize_steps import record_ids, summarize
work, model, outdir = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
out = {"model": model, "small": "512x512 jpeg, concurrency 1", "large": "noise png, concurrency 4 (mixed_load.sh)",
       "serve_args": sys.argv[4]}
per_request = {}
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
    records = sorted((work / run).glob("requests-*.jsonl"))
    rows = [json.loads(x) for p in records for x in p.read_text().splitlines() if x.strip()]
    for key in ("queue_ms", "vision_ms", "prefill_ms"):
        vals = [r["server"][key] for r in rows if r.get("ok") and r.get("server")]
        out[run][f"server_median_{key}"] = round(statistics.median(vals), 2) if vals else None
    if records and (work / "serve.log").exists():
        wait = summarize(work / "serve.log", record_ids(records))
        per_request[run] = wait.pop("per_request")
        out[run]["wait"] = wait
a, b = out.get("small_alone", {}), out.get("small_under_load", {})
if "median_ttft_ms" in a and "median_ttft_ms" in b:
    out["small_median_ttft_added_by_large_load_ms"] = round(b["median_ttft_ms"] - a["median_ttft_ms"], 2)
(outdir / "mixed_load_steps.json").write_text(json.dumps(per_request, indent=1))
print(json.dumps(out, indent=1))
PY
tar czf "$OUT/mixed_load.tgz" -C "$(dirname "$work")" "$(basename "$work")"
