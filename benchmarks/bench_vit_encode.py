#!/usr/bin/env python
"""Whole vision-tower encode per ViT attention backend, full-size presets, one 1024x1024 image (GPU host).

    python benchmarks/bench_vit_encode.py --out vit_encode.json                      # towers only, + kernel tables
    python benchmarks/bench_vit_encode.py --full-model --no-profile --out vit_encode.json   # the older whole-model path

Default (towers only): builds just the vision tower of each `random:` preset (bf16, random weights, the vision MLP
padded as loading a checkpoint pads it), feeds random pixels of the grid the processor gives a size x size image
(Qwen3-VL 64 x 64 = 4096 patches, Qwen2.5-VL 74 x 74 = 5476 at 1024²), and for each backend times with CUDA events
(median of --reps after 3 warm-ups): "ms" eager, "graph_ms" through VisionGraphRunner (the warm-ups are its eager
first sight, the capture and a replay, so every timed call is a replay; a key that fell back to eager is reported
as an error). With --profile (default on) each backend also gets a per-kernel table of the graph replays
(kernel_profile.kernel_table: name, total µs, count, share, kind) and, for Qwen3-VL, "graph_ms_gelu_split": the
same replay with the MLP's GELU as its own kernel instead of fc1's cuBLASLt epilogue (the A/B of that fusion).
Backends in --baseline-vit (default fa3) also get "unfused": graph_ms and kernel table of the op sequence before
issue 17's fusions (benchmarks/vit_unfused.py) on the same tower, the before/after of one run.
--full-model keeps the older measurement: the whole model built by presets.build_random_model, a real preprocessed
noise PNG and model.encode_images. Transformers 5.17 on the same host: 152.6 ms (Qwen2.5-VL-7B) and 25.1 ms
(Qwen3-VL-8B), from ../shared/GPU.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import vit_backends
from vit_backends.base import ViTAttention

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark modules
from kernel_profile import kernel_table  # noqa: E402
import vit_unfused  # noqa: E402

TRANSFORMERS_MS = {"qwen2_5_vl_7b": 152.6, "qwen3_vl_8b": 25.1}
BACKENDS = ("fa3", "flashinfer_cudnn", "sdpa", "auto")


def noise_png(size: int) -> bytes:
    from PIL import Image

    arr = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.numpy()).save(buf, format="PNG")
    return buf.getvalue()


def set_backend(model: torch.nn.Module, backend: ViTAttention) -> int:
    swapped = 0
    for module in model.modules():  # only vision blocks hold a ViTAttention backend
        if isinstance(getattr(module, "backend", None), ViTAttention):
            module.backend = backend
            swapped += 1
    return swapped


def set_gelu_epilogue(model: torch.nn.Module, on: bool) -> None:
    for module in model.modules():
        if hasattr(type(module), "gelu_epilogue"):
            module.gelu_epilogue = on


def time_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ---- towers only ---------------------------------------------------------------------------------------------------

class TowerRun:
    """One preset's vision tower and its input, encoded eagerly or through a VisionGraphRunner."""

    def __init__(self, name: str, size: int, device: str = "cuda"):
        from vit_backends.shapes import patch_grid
        from vlm_service.demo import presets
        from vlm_service.models.layers import init_random_, materialize
        from vlm_service.models.qwen2_5_vl_vision import Qwen2_5_VLVisionTower
        from vlm_service.models.qwen3_vl_vision import Qwen3VLVisionTower

        vc = presets.preset_config(name)["vision_config"]
        self.qwen25 = "window_size" in vc
        cls = Qwen2_5_VLVisionTower if self.qwen25 else Qwen3VLVisionTower
        with torch.device("meta"):
            tower = cls(vc, vit_backends.create("sdpa"))
        self.tower = materialize(tower, torch.bfloat16, torch.device(device)).eval()
        init_random_(self.tower, 0.02, 0)
        if self.qwen25:
            for block in self.tower.blocks:  # as Qwen2_5_VLForConditionalGeneration.weights_loaded does
                block.mlp.pad_intermediate_()
        else:
            self.tower.build_caches(torch.device(device))
        side = patch_grid(size, vc["patch_size"], vc.get("spatial_merge_size", 2))
        self.rows = [[1, side, side]]
        width = 3 * vc["temporal_patch_size"] * vc["patch_size"] ** 2
        self.pixels = torch.randn(side * side, width, device=device, dtype=torch.bfloat16)
        self.grid = torch.tensor(self.rows)
        self.runner = None
        self.unfused = False

    def new_runner(self, enabled: bool) -> None:
        from vlm_service.models.vision_graphs import VisionGraphRunner

        self.runner = VisionGraphRunner(enabled=enabled)

    def metadata(self):
        return self.tower.metadata(self.grid, self.pixels.device) if self.qwen25 else self.tower.metadata(self.grid)

    def encode(self) -> list[torch.Tensor]:
        return self.runner.run(self.pixels, self.rows, self.tower.backends(), self.metadata, self.compute)[1]

    def compute(self, pixels, meta) -> list[torch.Tensor]:
        if self.unfused:  # the op sequence before the fusions (benchmarks/vit_unfused.py)
            fn = vit_unfused.qwen25_compute if self.qwen25 else vit_unfused.qwen3_compute
            return fn(self.tower, pixels, meta)
        return self.tower.compute(pixels, meta)


def _profile(run: TowerRun) -> dict:
    """kernel_table of run.encode; an error is reported in the table's place (the timings stay)."""
    try:
        return kernel_table(run.encode, reps=5)
    except Exception as exc:  # e.g. a CUPTI failure on this host
        return {"error": f"{exc.__class__.__name__}: {exc}"[:300], "kernels": []}


def _graph_ms(run: TowerRun, reps: int) -> float | str:
    run.new_runner(enabled=True)
    ms = time_ms(run.encode, reps)
    counts = run.runner.counts()
    return ms if counts["replays"] >= reps else f"error: no graph replay (capture failed, eager fallback: {counts})"


def bench_unfused(run: TowerRun, reps: int, profile: bool) -> dict:
    """graph_ms (and the kernel table) of the pre-fusion op sequence on the same tower and backend."""
    run.unfused = True
    try:
        with torch.inference_mode():
            out = {"graph_ms": _graph_ms(run, reps)}
            if profile and isinstance(out["graph_ms"], float):
                out["profile"] = _profile(run)
        return out
    finally:
        run.unfused = False


def bench_tower_backend(run: TowerRun, backend: str, reps: int, profile: bool, baseline: bool = False) -> dict:
    set_backend(run.tower, vit_backends.create(backend))
    out = {}
    if baseline:
        out["unfused"] = bench_unfused(run, reps, profile)
    with torch.inference_mode():
        run.new_runner(enabled=False)
        out["ms"] = time_ms(run.encode, reps)
        out["graph_ms"] = _graph_ms(run, reps)
        if profile and isinstance(out["graph_ms"], float):
            out["profile"] = _profile(run)  # replays of the graph just timed
            if not out["profile"]["kernels"]:  # a profiler that does not see graph-launched kernels
                run.new_runner(enabled=False)
                out["profile"] = {**_profile(run), "note": "eager: replays showed no kernels"}
            if not run.qwen25:
                set_gelu_epilogue(run.tower, False)
                try:
                    out["graph_ms_gelu_split"] = _graph_ms(run, reps)
                finally:
                    set_gelu_epilogue(run.tower, True)
    return out


def bench_tower(name: str, size: int, reps: int, backends, profile: bool, device: str = "cuda",
                baseline=()) -> dict:
    """One preset's row; backends in `baseline` also time the pre-fusion op sequence ("unfused")."""
    run = TowerRun(name, size, device)
    row = {"preset": name, "mode": "tower", "image": f"{size}x{size}", "grid": run.rows[0],
           "patches": int(run.pixels.shape[0]), "vision_mlp_padded": run.qwen25,
           "transformers_ms": TRANSFORMERS_MS.get(name), "ms": {}, "graph_ms": {}, "graph_ms_gelu_split": {},
           "profile": {}, "unfused": {}}
    for backend in backends:
        try:
            res = bench_tower_backend(run, backend, reps, profile, backend in baseline)
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            row["ms"][backend] = f"error: {exc.__class__.__name__}: {exc}"[:300]
            continue
        for key in ("ms", "graph_ms", "graph_ms_gelu_split", "profile", "unfused"):
            if key in res:
                row[key][backend] = res[key]
    del run
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


# ---- the whole model (older path) ---------------------------------------------------------------------------------

def time_graph_ms(model, pixels: torch.Tensor, grid: torch.Tensor, reps: int) -> float | str:
    """time_ms of encode_images with the ViT CUDA graphs on; an error string when the calls were not replays."""
    before = model.vision_graphs.counts()["replays"]
    ms = time_ms(lambda: model.encode_images(pixels, grid), reps)
    if model.vision_graphs.counts()["replays"] - before < reps:
        return f"error: no graph replay (capture failed, eager fallback: {model.vision_graphs.counts()})"
    return ms


def bench_preset(name: str, size: int, reps: int, state_dir: str, backends=BACKENDS) -> dict:
    from vlm_service.demo import presets
    from vlm_service.processor.processor import Processor
    from vlm_service.types import ChatMessage, ImageInput

    model = presets.build_random_model(name, torch.bfloat16, "cuda", vit_backends.create("sdpa"))
    model.weights_loaded()  # build_random_model skips this hook: the Qwen2.5-VL vision MLP padding (idempotent)
    processor = Processor.from_pretrained(presets.ensure_preset_dir(state_dir, name))
    img = processor.process((ChatMessage("user", (ImageInput(noise_png(size), "image/png"), "x")),)).images[0]
    pixels = img.pixel_values.to("cuda", torch.bfloat16)
    grid = torch.tensor([img.grid_thw], device="cuda")
    row = {"preset": name, "mode": "model", "image": f"{size}x{size}", "patches": int(pixels.shape[0]),
           "image_tokens": img.num_tokens, "transformers_ms": TRANSFORMERS_MS.get(name), "ms": {}, "graph_ms": {}}
    with torch.inference_mode():
        for backend in backends:
            try:
                set_backend(model, vit_backends.create(backend))
                model.vision_graphs.enabled = False
                row["ms"][backend] = time_ms(lambda: model.encode_images(pixels, grid), reps)
                model.vision_graphs.enabled = True
                row["graph_ms"][backend] = time_graph_ms(model, pixels, grid, reps)
            except Exception as exc:  # a backend that cannot run here is reported, not fatal
                row["graph_ms" if backend in row["ms"] else "ms"][backend] = \
                    f"error: {exc.__class__.__name__}: {exc}"[:300]
    del model
    torch.cuda.empty_cache()
    return row


def _brief(row: dict) -> None:
    for column in ("ms", "graph_ms", "graph_ms_gelu_split"):
        if row.get(column):
            print(row["preset"], row["patches"], "patches", column,
                  {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row[column].items()})
    for backend, prof in (row.get("profile") or {}).items():
        print(row["preset"], backend, "graph replay GPU busy", prof.get("gpu_busy_us"), "us; by kind",
              prof.get("us_per_rep_by_kind"), prof.get("error", ""))
    for backend, res in (row.get("unfused") or {}).items():
        print(row["preset"], backend, "UNFUSED (before issue 17) graph_ms", res.get("graph_ms"),
              "by kind", (res.get("profile") or {}).get("us_per_rep_by_kind"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", nargs="+", default=["qwen3_vl_8b", "qwen2_5_vl_7b"])
    ap.add_argument("--vit", nargs="+", default=list(BACKENDS), help="backends to time")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--full-model", action="store_true", help="whole model + processor + encode_images")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-kernel tables (towers only)")
    ap.add_argument("--baseline-vit", nargs="*", default=["fa3"],
                    help="backends that also time the pre-fusion op sequence (towers only)")
    args = ap.parse_args()
    if args.full_model:
        state_dir = tempfile.mkdtemp()
        rows = [bench_preset(p, args.size, args.reps, state_dir, args.vit) for p in args.presets]
    else:
        rows = [bench_tower(p, args.size, args.reps, args.vit, not args.no_profile, baseline=args.baseline_vit)
                for p in args.presets]
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "dtype": "bfloat16", "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for r in rows:
        _brief(r)


if __name__ == "__main__":
    main()
