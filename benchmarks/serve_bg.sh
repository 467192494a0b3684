# Sourced by the H200 scripts that run the harness against one long-lived server (ttft_http_vs_grpc.sh,
# mixed_load.sh). `serve_bg LOG READY ARGS...` starts `$py -m vlm_service.cli serve ARGS` in the background (pid in
# $server_pid, stopped when the script exits) and waits until it is ready: READY is http:PORT (GET /health/ready
# answers) or grpc:PORT (the plaintext gRPC health service says SERVING). $VLM_BENCH_READY_S bounds the wait (default 200 s).
serve_bg() {
  local log=$1 ready_port=$2; shift 2
  $py -m vlm_service.cli serve "$@" > "$log" 2>&1 &
  server_pid=$!
  trap 'kill -TERM $server_pid 2>/dev/null' EXIT
  $py - "$ready_port" "$server_pid" "${VLM_BENCH_READY_S:-200}" <<'PY' || { tail -30 "$log"; return 1; }
import os, sys, time, urllib.request
spec, pid, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kind, port = spec.split(":")  # http:PORT (GET /health/ready) or grpc:PORT (a TCP connect, then the harness waits)
for _ in range(limit):
    try:
        if kind == "http":
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1)
        else:  # the gRPC health service says SERVING once the model is loaded and warm
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                ask = health_pb2.HealthCheckRequest(service="vlm.v1.VisionLanguageService")  # "" is liveness only
                status = health_pb2_grpc.HealthStub(channel).Check(ask, timeout=1).status
            if status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError("not serving yet")
        break
    except Exception:
        try:
            os.kill(pid, 0)
        except OSError:
            raise SystemExit("the server exited before it was ready")
        time.sleep(1)
else:
    raise SystemExit(f"not ready after {limit} s")
PY
}

model_dir() {  # model_dir MODEL: the checkpoint folder `serve --model MODEL` loads (its tokenizer is the harness's)
  $py -c "
import sys
from vlm_service.config import Config, ModelConfig, ServerConfig, default_state_dir
from vlm_service.runtime import resolve_model_path
cfg = Config(model=ModelConfig(model=sys.argv[1]), server=ServerConfig(state_dir=default_state_dir()))
print(resolve_model_path(cfg)[2])
" "$1"
}
