"""The harness against the REAL server (demo model, CPU, plaintext loopback): a fixed-rate and a fixed-concurrency
run complete with consistent metrics, plots are written, and a malformed image is counted, not fatal."""

import json

import pytest
from PIL import Image

from vlm_service.bench import main
from vlm_service.config import Config, EngineConfig, ModelConfig, ServerConfig, TLSConfig


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    pytest.importorskip("vlm_service.demo.checkpoint")
    testing = pytest.importorskip("tests.server_harness")
    cfg = Config(model=ModelConfig(model="demo", device="cpu", dtype="float32", vit_attention_backend="sdpa"),
                 engine=EngineConfig(num_blocks=256, max_num_seqs=8, cuda_graphs=False),
                 server=ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("state"),
                                     tls=TLSConfig(insecure=True), drain_timeout_s=10))
    with testing.running_server(cfg) as srv:
        yield srv


def _jsonl_with_a_bad_image(folder):
    Image.new("RGB", (64, 48), (10, 200, 30)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"this is not a png at all")
    rows = [{"prompt": "Describe the picture.", "images": ["good.png"]},
            {"prompt": "And this one?", "images": ["bad.png"]},
            {"prompt": "Just text, no image."}]
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder / "prompts.jsonl"


def test_fixed_rate_and_concurrency_against_the_real_server(tmp_path, real_server):
    prompts = _jsonl_with_a_bad_image(tmp_path)
    out = tmp_path / "out"
    rc = main(["--target", real_server.target, "--insecure", "--dataset", "jsonl", "--dataset-path", str(prompts),
               "--num-prompts", "6", "--num-warmup", "1", "--output-len", "4", "--request-rate", "20", "inf",
               "--max-concurrency", "2", "--timeout", "60", "--result-dir", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["server"]["model_id"] == "demo"
    for run in summary["runs"]:
        m = run["metrics"]
        assert m["num_requests"] == 6 and m["completed"] == 4 and m["failed"] == 2
        assert m["errors"] == {"INVALID_ARGUMENT": 2}
        assert m["total_output_tokens"] == 4 * 4  # min_tokens = max_tokens = 4
        assert m["ttft_ms"]["max"] <= m["e2e_ms"]["max"] and m["ttft_ms"]["median"] <= m["e2e_ms"]["median"]
        assert m["tpot_ms"]["count"] == 4 and m["itl_ms"]["count"] >= 4
        assert m["server_ms"]["vision_ms"]["count"] == 4 and m["server_ms"]["ttft_ms"]["mean"] > 0
        assert m["request_throughput"] > 0 and m["total_input_tokens"] > 0
    for name in ("ttft_cdf.png", "ttft_vs_pixels.png", "latency_vs_throughput.png"):
        assert (out / name).stat().st_size > 1000


def test_compare_launches_a_server_from_a_spec_and_stops_it(tmp_path, fake_server):
    pytest.importorskip("vlm_service.demo.checkpoint")
    spec = (f"serve:--model demo --device cpu --dtype float32 --vit-attention-backend sdpa --num-blocks 256 "
            f"--no-cuda-graphs --state-dir {tmp_path / 'state'}")
    out = tmp_path / "out"
    rc = main(["--compare", spec, fake_server.address, "--compare-labels", "launched", "fake", "--insecure",
               "--compare-rounds", "1", "--num-prompts", "2", "--num-warmup", "0", "--images-per-request", "0",
               "--input-len", "6", "--output-len", "3", "--result-dir", str(out), "--no-plots",
               "--server-ready-timeout", "300"])
    assert rc == 0
    runs = {r["label"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert runs["launched"]["metrics"]["completed"] == 2 and runs["launched"]["server"]["model_id"] == "demo"
    assert runs["launched"]["server_exit_code"] == 0 and runs["fake"]["metrics"]["completed"] == 2
    assert list(out.glob("server-*.log"))
