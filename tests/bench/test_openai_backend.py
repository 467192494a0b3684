"""`--backend openai`: the harness against the REAL server's OpenAI-compatible port (demo model, CPU, loopback), alone
and interleaved with the same server's gRPC port; vLLM `bench serve`'s flat keys in the summary; refusals counted."""

import json

import pytest
from PIL import Image

from vlm_service.bench import main
from vlm_service.config import Config, EngineConfig, HTTPConfig, ModelConfig, ServerConfig, TLSConfig

KEY = "sk-bench"


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    pytest.importorskip("vlm_service.demo.checkpoint")
    testing = pytest.importorskip("tests.server_harness")
    cfg = Config(model=ModelConfig(model="demo", device="cpu", dtype="float32", vit_attention_backend="sdpa"),
                 engine=EngineConfig(num_blocks=256, max_num_seqs=8, cuda_graphs=False),
                 server=ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("state"), api_keys=(KEY,),
                                     tls=TLSConfig(insecure=True), drain_timeout_s=10, http=HTTPConfig(port=0)))
    with testing.running_server(cfg, warmup=False) as srv:
        yield srv


def _dataset(folder):
    Image.new("RGB", (64, 48), (10, 200, 30)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"this is not a png at all")
    rows = [{"prompt": "Describe the picture.", "images": ["good.png"]},
            {"prompt": "And this one?", "images": ["bad.png"]}, {"prompt": "Just text, no image."}]
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return ["--dataset", "jsonl", "--dataset-path", str(folder / "prompts.jsonl"), "--output-len", "4",
            "--num-prompts", "6", "--num-warmup", "1", "--timeout", "60", "--no-plots", "--api-key", KEY]


def test_openai_backend_against_our_http_port(tmp_path, real_server):
    out = tmp_path / "out"
    rc = main(["--backend", "openai", "--target", real_server.server.http.url, "--max-concurrency", "2",
               "--result-dir", str(out), *_dataset(tmp_path)])
    assert rc == 0
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    assert run["backend"] == "openai" and run["server"]["model"] == "demo"
    m = run["metrics"]
    assert (m["completed"], m["failed"], m["errors"]) == (4, 2, {"HTTP_400": 2})
    assert m["total_output_tokens"] == 4 * 4 and m["total_input_tokens"] > 0
    assert m["tpot_ms"]["count"] == 4 and m["itl_ms"]["count"] >= 4
    for key in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
                "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "request_throughput",
                "output_throughput", "total_token_throughput", "completed", "duration"):
        assert isinstance(m[key], (int, float)), key
    assert m["median_ttft_ms"] == m["ttft_ms"]["median"] and m["mean_ttft_ms"] <= m["mean_e2el_ms"]


def test_grpc_and_openai_interleaved_on_one_server(tmp_path, real_server):
    out = tmp_path / "out"
    rc = main(["--compare", real_server.target, "openai:" + real_server.server.http.url, "--compare-labels", "grpc",
               "http", "--compare-rounds", "2", "--insecure", "--max-concurrency", "1", "--result-dir", str(out),
               *_dataset(tmp_path)])
    assert rc == 0
    runs = {r["label"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert runs["grpc"]["backend"] == "grpc" and runs["http"]["backend"] == "openai"
    for label, errors in (("grpc", {"INVALID_ARGUMENT": 2}), ("http", {"HTTP_400": 2})):
        m = runs[label]["metrics"]
        assert (m["completed"], m["errors"], m["total_output_tokens"]) == (4, errors, 16)


def test_a_wrong_key_is_counted_not_fatal(tmp_path, real_server):
    out = tmp_path / "out"
    args = _dataset(tmp_path)
    args[args.index(KEY)] = "wrong"
    rc = main(["--backend", "openai", "--target", real_server.server.http.url, "--result-dir", str(out), *args])
    assert rc == 1  # nothing completed
    m = json.loads((out / "summary.json").read_text())["runs"][0]["metrics"]
    assert m["errors"] == {"HTTP_401": 6}


def test_a_token_without_text_counts_only_with_logprobs():
    """Random weights emit special tokens: their chunks carry no content, only (when asked) a logprobs entry."""
    import json

    from vlm_service.bench.loadgen import RequestResult
    from vlm_service.bench.openai_client import _StreamState

    def run(logprobs_entry):
        state = _StreamState(RequestResult(index=0, request_id="r"), start=0.0)
        chunk = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None,
                              "logprobs": {"content": logprobs_entry} if logprobs_entry is not None else None}]}
        state.event(json.dumps(chunk), now=0.25)
        state.event("[DONE]", now=0.5)
        state.finish(now=0.5)
        return state.res

    without = run(None)
    assert not without.ok and without.status == "EMPTY_OUTPUT"
    marked = run([{"token": "", "logprob": -1.5, "bytes": [], "top_logprobs": []}])
    assert marked.ok and marked.ttft_ms == 250.0 and marked.output_tokens == 1


def test_videos_go_as_video_url_parts_and_cost_what_they_cost_on_grpc(tmp_path, real_server):
    pytest.importorskip("av")
    out = tmp_path / "out"
    clips = ["--images-per-request", "0", "--videos-per-request", "1", "--video-seconds", "2",
             "--video-resolution", "64x48", "--video-fps", "8", "--video-format", "mp4", "--input-len", "8",
             "--output-len", "2", "--num-prompts", "3", "--num-warmup", "0", "--no-plots", "--api-key", KEY,
             "--logprobs"]  # the demo tokens may have no text: count them by their logprobs entries
    rc = main(["--compare", real_server.target, "openai:" + real_server.server.http.url, "--compare-labels", "grpc",
               "http", "--insecure", "--max-concurrency", "1", "--result-dir", str(out), *clips])
    assert rc == 0
    runs = {r["label"]: r["metrics"] for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert runs["http"]["completed"] == runs["grpc"]["completed"] == 3
    assert runs["http"]["total_input_tokens"] == runs["grpc"]["total_input_tokens"] > 3 * 20  # the frames' tokens
