"""benchmarks/summarize_steps.py reads a real step log: the toy engine with step_log on, logged through the server's
json formatter, and the request ids as the harness records them."""

import json
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from engine_helpers import ToyTokenizer, ToyVLM, build_input, image, text  # noqa: E402

from vlm_service.cli import _JsonFormatter  # noqa: E402
from vlm_service.config import EngineConfig  # noqa: E402
from vlm_service.engine.engine import LLMEngine  # noqa: E402
from vlm_service.types import SamplingParams, TokenDelta  # noqa: E402


def test_summary_of_a_toy_engine_step_log(tmp_path):
    log_path = tmp_path / "serve.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(_JsonFormatter())
    steps_log = logging.getLogger("vlm_service.steps")
    steps_log.addHandler(handler)
    steps_log.setLevel(logging.INFO)
    try:
        cfg = EngineConfig(block_size=4, num_blocks=256, max_batched_tokens=32, short_prefill_tokens=16,
                           mixed_long_prefill_tokens=8, step_log=True)
        eng = LLMEngine(ToyVLM(), ToyTokenizer(), cfg, "cpu")
        sp = SamplingParams(max_tokens=3, ignore_eos=True)
        eng.add("long", build_input(text(1, 3), image(1, 16, 16), text(2, 3)), sp)
        first = {}
        for i in range(60):
            if i == 2:
                eng.add("short", build_input(text(3, 4), image(3, 2, 2), text(4, 2)), sp)
            if i > 2 and not eng.has_work():
                break
            launched_before = eng.step_no  # a call reads back the launch before its own (overlap)
            for out in eng.step():
                if isinstance(out, TokenDelta):
                    first.setdefault(out.request_id, launched_before)
    finally:
        steps_log.removeHandler(handler)
        handler.close()
    records = tmp_path / "requests-x.jsonl"
    records.write_text("".join(json.dumps({"request_id": rid, "ok": True}) + "\n" for rid in ("short", "long")))
    out = tmp_path / "wait.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "summarize_steps.py"), str(log_path), "--records",
                    str(records), "--out", str(out)], check=True, cwd=ROOT, timeout=60)
    result = json.loads(out.read_text())
    waits = {w["request_id"]: w for w in result["per_request"]}
    assert result["with_step_log"] == 2 and result["server_steps"] == eng.step_no
    assert waits["short"]["steps_to_first_token"] == 1 and waits["short"]["steps_mixed"] == [True]
    assert waits["long"]["steps_new_visual_tokens"][0] == 64  # the 16x16-patch image, encoded in its first step
    assert waits["long"]["steps_to_first_token"] == first["long"]  # first scheduled in step 1
    assert all(t <= 32 for w in waits.values() for t in w["steps_tokens"])
