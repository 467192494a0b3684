"""GPU preprocessing on CUDA against the CPU path (the oracle): pixel tolerance over a corpus of real-looking images,
greedy tokens and logits on the tiny demo checkpoints, the real server with --preprocess-device cuda.

Run on the GPU host: pytest -m gpu tests/processor/test_gpu_preprocess_gpu.py

Bounds, in levels of the uint8 scale (one level = 1 / (255 * std) after normalise):
- host-decoded images (PNG, WebP, GIF, the JPEGs the GPU does not take): only the resampler differs. Measured on
  CPU with the same torch ops (test_gpu_ops.py): at most one level, on ~0.03 % of values; CUDA's interpolate sums
  in float32 like the CPU one, so the bound is the same one level, with at most 1 % of values off.
- nvJPEG-decoded JPEGs: the decoder differs from libjpeg-turbo as well (IDCT, chroma upsampling). torchvision's
  own test of decode_jpeg(device="cuda") bounds the mean difference to libjpeg-turbo by 2 levels; the resize only
  averages, so mean <= 2 levels here too. Single values can differ more at sharp colour edges (chroma upsampling):
  the 99th percentile is bounded by 20 levels, an allowance not measured here (no nvJPEG on the CPU machine).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_corpus import corpus, encode, real_looking
from vlm_service.processor.gpu_preprocess import GpuPreprocessor
from vlm_service.processor.image import decode_image
from vlm_service.processor.vision import ImageConfig, preprocess_image
from vlm_service.processor.family_rules import demo_image_config

pytestmark = pytest.mark.gpu

CFG = ImageConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)  # Qwen2.5-VL's patch, up to 1280 tokens
LIMIT = 40_000_000
GPU_DECODED = {"jpeg-progressive", "jpeg-444", "jpeg-gray"}  # plus every "jpeg-HxW"


@pytest.fixture(scope="module")
def pre32():
    return GpuPreprocessor(CFG, torch.device("cuda"), torch.float32)


def _level_diff(got: torch.Tensor, want: torch.Tensor, cfg: ImageConfig) -> np.ndarray:
    """|got - want| in levels, per value; rows hold C blocks of tp*p*p values."""
    c = len(cfg.image_std)
    std = torch.tensor(cfg.image_std).repeat_interleave(got.shape[1] // c)
    return ((got.float().cpu() - want.float()).abs() * std * 255).numpy()


def test_corpus_within_the_bounds(pre32):
    assert pre32.jpeg is not None, "torchvision's decode_jpeg is not usable here"
    failures, gpu_jpegs = [], 0
    for name, data, mime in corpus():
        before = pre32.images["gpu_jpeg"]
        got, grid = pre32(data, mime, LIMIT, "f")
        want, want_grid = preprocess_image(decode_image(data, mime, LIMIT, "f"), CFG)
        assert got.is_cuda and got.dtype == torch.float32 and grid == want_grid, name
        on_gpu = pre32.images["gpu_jpeg"] > before
        gpu_jpegs += on_gpu
        eligible = name in GPU_DECODED or name.startswith("jpeg-") and name[5].isdigit()
        assert on_gpu <= eligible, name  # (an eligible one nvJPEG refuses, e.g. 5 px wide, falls back to the host)
        d = _level_diff(got, want, CFG)
        stats = f"{name}: mean {d.mean():.3f} p99 {np.percentile(d, 99):.2f} max {d.max():.2f} levels"
        if on_gpu and (d.mean() > 2.0 or np.percentile(d, 99) > 20):
            failures.append(stats)
        if not on_gpu and (d.max() > 1.01 or (d > 0.01).mean() > 0.01):
            failures.append(stats)
    assert gpu_jpegs >= 10 and not failures, (gpu_jpegs, failures)  # 13 are eligible


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_bf16_on_the_device_as_the_server_uses_it(arch):
    cfg = ImageConfig.from_dict(demo_image_config(arch, hub_limits=True))
    pre = GpuPreprocessor(cfg, torch.device("cuda"), torch.bfloat16)
    data = encode(Image.fromarray(real_looking(1024, 1024, seed=5)), "PNG")
    got, grid = pre(data, "image/png", LIMIT, "f")
    want, want_grid = preprocess_image(decode_image(data, "", LIMIT, "f"), cfg, torch.bfloat16)
    assert got.device.type == "cuda" and got.dtype == torch.bfloat16 and grid == want_grid
    step = 1 / (255 * min(cfg.image_std))  # one level, plus one bf16 rounding of |v| < 4
    assert (got.float().cpu() - want.float()).abs().max().item() <= step + 2 ** -6


def test_threads_give_the_single_thread_results(pre32):
    items = [(n, d, m) for n, d, m in corpus(sizes=[(333, 517), (768, 1366), (57, 91)])]
    alone = [pre32(d, m, LIMIT, "f")[0].cpu() for _, d, m in items]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda it: pre32(it[1], it[2], LIMIT, "f")[0].cpu(), items * 2))
    for k, got in enumerate(together):
        assert torch.equal(got, alone[k % len(items)]), items[k % len(items)][0]


# ---- output: the tiny checkpoints ---------------------------------------------------------------------------------

def _prompts(n: int = 8):
    out = []
    for k in range(n):
        h, w = [(300, 400), (512, 512), (97, 203), (640, 360)][k % 4]
        img = Image.fromarray(real_looking(h, w, seed=100 + k))
        fmt = "JPEG" if k % 2 == 0 else "PNG"
        out.append((encode(img, fmt, quality=90) if fmt == "JPEG" else encode(img, fmt), f"image/{fmt.lower()}"))
    return out


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_greedy_tokens_agree_and_logits_close(arch, tmp_path_factory):
    import vit_backends
    from vlm_service.demo.checkpoint import ensure_demo_model
    from tests.models.reference_generate import generate
    from vlm_service.models.loader import load_model
    from vlm_service.processor.processor import Processor
    from vlm_service.types import ChatMessage, ImageInput

    path = ensure_demo_model(tmp_path_factory.mktemp("demo"), arch)
    model = load_model(path, torch.float32, "cuda", vit_backends.create("sdpa"))
    host = Processor.from_pretrained(path)
    gpu = Processor.from_pretrained(path, preprocess_device=torch.device("cuda"))
    assert gpu.gpu_preprocessor is not None
    same, cosines = 0, []
    for data, mime in _prompts():
        msgs = (ChatMessage("user", (ImageInput(data, mime), "Describe the picture.")),)
        runs = []
        for proc in (host, gpu):
            p = proc.process(msgs)
            pv = torch.cat([im.pixel_values.to("cuda") for im in p.images])
            grid = torch.tensor([im.grid_thw for im in p.images])
            ids = torch.tensor(p.input_ids)
            runs.append((generate(model, ids, p.positions, p.mrope_delta, pv, grid, max_new_tokens=8,
                                  eos_token_ids=()), _last_logits(model, ids, p.positions, pv, grid)))
        same += runs[0][0] == runs[1][0]
        cosines.append(torch.nn.functional.cosine_similarity(runs[0][1], runs[1][1], dim=-1).item())
    assert same >= 6, (same, cosines)  # "most prompts": 6 of 8
    assert min(cosines) > 0.999, cosines


def _last_logits(model, ids, positions, pv, grid) -> torch.Tensor:
    from tests.models.reference_generate import DenseKVContext, multimodal_embeds

    ids, positions = ids.cuda(), positions.cuda()
    with torch.no_grad():
        ctx = DenseKVContext.for_model(model, ids.shape[0])
        hidden = model.forward(ids, positions, ctx, multimodal_embeds(model, ids, pv, grid))
        return model.compute_logits(hidden[-1:])[0].float().cpu()


def test_server_with_gpu_preprocessing(tmp_path_factory):
    """The real server (demo model, bf16, CUDA) with --preprocess-device cuda vs cpu: same greedy text on most
    requests, the device tensors go through the engine (vision cache, record_stream) without errors."""
    from tests.e2e.conftest import e2e_config
    from vlm_service.client import Client
    from vlm_service.config import ModelConfig, TLSConfig
    from tests.server_harness import running_server

    state = tmp_path_factory.mktemp("state")
    texts = {}
    for device in ("cpu", "cuda"):
        cfg = e2e_config(state, TLSConfig())
        cfg = dataclasses.replace(cfg, model=ModelConfig(model="demo", device="cuda", dtype="bfloat16",
                                                         preprocess_device=device))
        with running_server(cfg) as srv, Client(srv.target, channel_credentials=srv.credentials) as client:
            texts[device] = [client.generate_text("What is this?", images=[(d, m)], max_tokens=8, min_tokens=8)
                             for d, m in _prompts(6)]
            again = client.generate_text("What is this?", images=[_prompts(1)[0]], max_tokens=8, min_tokens=8)
        assert all(c.usage.completion_tokens == 8 for _, c in texts[device])
        assert again[1].usage.cached_tokens > 0  # the prefix cache still keys images by their bytes' hash
    same = sum(a == b for (a, _), (b, _) in zip(texts["cpu"], texts["cuda"]))
    assert same >= 4, [(a, b) for (a, _), (b, _) in zip(texts["cpu"], texts["cuda"])]
