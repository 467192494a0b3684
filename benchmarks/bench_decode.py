#!/usr/bin/env python
"""Engine benchmark on one device: decode ms/token at batch 1, tokens/s at batch 8 and 64, TTFT with one image.

    python benchmarks/bench_decode.py --model random:qwen2_5_vl_7b --out benchmarks/results/decode_qwen2_5_vl_7b.json

Runs the LLMEngine directly (no gRPC): random full-size weights in bf16, FlashInfer paged attention and decode CUDA
graphs on CUDA. Warm-up steps (JIT builds, graph capture) are never timed.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.types import ChatMessage, ImageInput, SamplingParams


def load(name: str, device: torch.device, vit: str, state_dir: Path):
    import vit_backends
    from vlm_service.demo import presets
    from vlm_service.processor.processor import Processor

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = presets.build_random_model(name, dtype, device, vit_backends.create(vit))
    # pixels as the server's processor writes them on CUDA (model dtype, pinned; vlm_service/runtime.py)
    cuda = device.type == "cuda"
    processor = Processor.from_pretrained(presets.ensure_preset_dir(state_dir, name),
                                          pixel_dtype=dtype if cuda else torch.float32, pin_pixels=cuda)
    return model, processor


def png(seed: int, size: int) -> bytes:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def prompt(processor, words: int, image: bytes | None = None):
    parts = ((ImageInput(image, "image/png"),) if image else ()) + (" ".join(["hello"] * words),)
    return processor.process((ChatMessage("user", parts),))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rate(engine, processor, device, batch: int, steps: int, salt: int) -> dict:
    """Prefill `batch` requests, then time `steps` pure decode steps."""
    sp = SamplingParams(max_tokens=steps + 8, ignore_eos=True)
    for i in range(batch):
        engine.add(f"d{salt}-{i}", prompt(processor, 60 + i + salt), sp)
    while any(not s.output_ids for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    engine.step()  # one untimed decode step
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    dt = time.perf_counter() - t0
    for rid in list(engine.requests):
        engine.abort(rid)
    return {"batch": batch, "steps": steps, "ms_per_step": dt / steps * 1e3, "tokens_per_s": batch * steps / dt}


def ttft(engine, processor, device, size: int, seed: int) -> dict:
    """Wall time from add() (preprocessed input in hand) to the first token, one image of size x size."""
    image = png(seed, size)
    t_pre = time.perf_counter()
    inp = prompt(processor, 77, image)
    pre_ms = (time.perf_counter() - t_pre) * 1e3
    sync(device)
    t0 = time.perf_counter()
    engine.add(f"ttft{seed}", inp, SamplingParams(max_tokens=1))
    outs = []
    while not any(hasattr(o, "finish_reason") for o in outs):
        outs += engine.step()
    sync(device)
    fin = [o for o in outs if hasattr(o, "finish_reason")][0]
    return {"ttft_ms": (time.perf_counter() - t0) * 1e3, "preprocess_ms": pre_ms, "vision_ms": fin.timings.vision_ms,
            "prompt_tokens": fin.usage.prompt_tokens, "image_tokens": fin.usage.image_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:qwen2_5_vl_7b")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vit", default="sdpa")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--image-size", type=int, default=1024)
    args = ap.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as state:
        model, processor = load(args.model, device, args.vit, Path(state))
        cfg = EngineConfig(max_num_seqs=64, max_batched_tokens=8192, max_model_len=8192,
                           enable_prefix_cache=False, cuda_graphs=not args.no_cuda_graphs)
        engine = LLMEngine(model, processor.tokenizer, cfg, device)
        decode_rate(engine, processor, device, 2, 4, salt=99)  # warm-up: JIT, plans
        # warm-up: ViT shapes; the first sight of an image size runs the tower eagerly, the second captures its
        # CUDA graph (vision_graphs.py), later ones replay it: that is what the timed requests measure
        warm = [ttft(engine, processor, device, args.image_size, seed=1000 + i) for i in range(2)]
        result = {
            "model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda_graphs": engine.runner.graphs is not None,
            "kv_blocks": engine.block_manager.num_blocks,
            "decode": [decode_rate(engine, processor, device, b, args.steps, salt=b) for b in (1, 8, 64)],
            "ttft": [ttft(engine, processor, device, args.image_size, seed=s) for s in range(3)],
            "ttft_first_sight_eager": warm[0],
            "overlap_scheduling": cfg.overlap_scheduling,
        }
    result["decode_ms_per_token_batch1"] = result["decode"][0]["ms_per_step"]
    result["ttft_ms_median"] = statistics.median(t["ttft_ms"] for t in result["ttft"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ttft",)}, indent=2))


if __name__ == "__main__":
    main()
