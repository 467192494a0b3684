"""`vlm-service bench` end to end against fake servers: files, plots, sweep, compare table, errors not fatal."""

import json

from fake_server import FakeInThread

from vlm_service.bench import main

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--insecure", "--num-prompts", "5", "--image-resolution", "32x32:48x64", "--output-len", "3",
         "--input-len", "8", "--num-warmup", "1"]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rate_and_concurrency_sweep_writes_results_and_plots(tmp_path, fake_server):
    rc = main(["--target", fake_server.address, *SMALL, "--request-rate", "50", "inf", "--max-concurrency", "2",
               "--goodput", "ttft:1000", "e2e:5000", "--result-dir", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["date"] and summary["versions"]["grpcio"] and summary["config"]["num_prompts"] == 5
    assert [r["label"] for r in summary["runs"]] == ["rate=50,conc=2", "rate=inf,conc=2"]
    for run in summary["runs"]:
        m = run["metrics"]
        assert m["completed"] == 5 and m["failed"] == 0 and m["good_requests"] == 5
        assert m["ttft_ms"]["max"] <= m["e2e_ms"]["max"] and m["tpot_ms"]["count"] == 5
        assert all(m[k]["mean"] is not None for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"))
        assert m["server_ms"]["vision_ms"]["mean"] == 2.0 and run["server"]["model_id"] == "fake"
        assert run["warmup_requests"] == 1 and run["warmup_failed"] == 0
        lines = _lines(tmp_path / f"requests-{run['label'].replace(',', '_')}.jsonl")
        assert len(lines) == 5 and all(x["ttft_ms"] <= x["e2e_ms"] and x["output_tokens"] == 3 for x in lines)
    for name in ("ttft_cdf.png", "ttft_vs_pixels.png", "latency_vs_throughput.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    assert fake_server.servicer.seen == 1 + 5 + 5


def test_compare_two_targets_interleaved_gives_a_ratio_table(tmp_path, fake_server, capsys):
    other = FakeInThread()
    try:
        rc = main(["--compare", fake_server.address, other.address, "--compare-labels", "a", "b",
                   "--compare-rounds", "2", *SMALL, "--max-concurrency", "2", "--result-dir", str(tmp_path),
                   "--no-plots"])
    finally:
        other.close()
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["a", "b"]
    assert all(r["metrics"]["completed"] == 5 and r["rounds"] == 2 for r in summary["runs"])
    rows = {row["metric"]: row for row in summary["ratios"]["rows"]}
    assert rows["ttft_ms.median"]["a"]["ratio_vs_a"] == 1.0 and rows["ttft_ms.median"]["b"]["ratio_vs_a"] > 0
    assert "ratios against a" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))


def test_server_errors_are_counted_and_bad_flags_refused(tmp_path, fake_server):
    fake_server.servicer.prefill_s = 5.0  # every request misses its 0.2 s deadline
    rc = main(["--target", fake_server.address, *SMALL, "--timeout", "0.2",
               "--result-dir", str(tmp_path), "--no-plots"])
    assert rc == 1  # nothing completed: reported, not raised
    m = json.loads((tmp_path / "summary.json").read_text())["runs"][0]["metrics"]
    assert m["failed"] == 5 and m["errors"] == {"DEADLINE_EXCEEDED": 5}
    assert main(["--num-prompts", "1", "--ca", str(tmp_path / "missing.crt")]) == 2  # (no target: the local one)
    assert main(["--target", "x:1", "--goodput", "nope:1", "--result-dir", str(tmp_path)]) == 2
