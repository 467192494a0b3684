#!/usr/bin/env python
"""How long preprocessing holds the GIL at a time (issue 17: decode and preprocess must never block the event loop
or hold the GIL longer than a few ms).

A monitor thread sleeps 1 ms in a loop and records how late each wake-up is. A wake-up can only be late by more
than the scheduler's jitter when another thread holds the GIL (or every core is busy), so the monitor's worst
lateness bounds the longest GIL hold the event loop would see. Meanwhile the server's own preprocessing runs
(Processor.process on the preset's real processor settings, host path) on a thread, over inputs of each kind, one
after another; the baseline is the monitor with nothing else running.

    python benchmarks/gil_hold.py --preset qwen3_vl_8b --out gil_hold.json        # CPU host; no GPU needed

Per case: the monitor's wake-up lateness (median, p99, p99.9, max, ms) while that case ran, and the case's own
median time. The host has to have a core free for the monitor for the numbers to mean GIL holds (run it alone).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlm_service.demo.presets import ensure_preset_dir  # noqa: E402
from vlm_service.processor.processor import Processor  # noqa: E402
from vlm_service.types import ChatMessage, ImageInput, VideoInput  # noqa: E402


class Monitor(threading.Thread):
    """Sleeps `period` s in a loop; `lateness` holds how late each wake-up was (s)."""

    def __init__(self, period: float = 0.001):
        super().__init__(daemon=True)
        self.period, self.lateness, self.stop = period, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            time.sleep(self.period)
            self.lateness.append(time.perf_counter() - start - self.period)

    def take(self) -> list[float]:
        out, self.lateness = self.lateness, []
        return out


def _image(kind: str, side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    # noise compresses worst (the slowest PNGs); a smooth gradient + noise is photo-like for JPEG
    if kind == "png":
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    else:
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        pixels = (ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.3 + rng.normal(0, 12, (side, side, 3)))
        pixels = pixels.clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG" if kind == "png" else "JPEG", quality=90)
    return buf.getvalue()


def _cases(args) -> dict[str, list[ChatMessage]]:
    def chat(part) -> tuple[ChatMessage, ...]:
        return (ChatMessage(role="user", content=(part, "describe it")),)

    cases = {f"{kind}_{side}": [chat(ImageInput(data=_image(kind, side, s), mime_type=f"image/{kind}"))
                                for s in range(args.repeats)]
             for kind in ("jpeg", "png") for side in args.sides}
    if args.skip_video:
        return cases
    try:
        from vlm_service.bench.videos import synthetic_video

        clip = synthetic_video(10.0, "1280x720", 30.0, "mp4", seed=0)
        cases["video_10s_720p"] = [chat(VideoInput(data=clip.data, mime_type="video/mp4"))] * max(1, args.repeats // 3)
    except ImportError:  # no PyAV
        pass
    return cases


def _stats(lateness: list[float]) -> dict:
    ms = np.asarray(lateness) * 1e3
    if not len(ms):
        return {}
    return {"samples": int(len(ms)), "median_ms": round(float(np.median(ms)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "p999_ms": round(float(np.percentile(ms, 99.9)), 3),
            "max_ms": round(float(ms.max()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="qwen3_vl_8b")
    ap.add_argument("--state-dir", default=os.environ.get("VLM_STATE_DIR", "/tmp/vlm-state"))
    ap.add_argument("--sides", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--skip-video", action="store_true", help="images only (the video case needs PyAV)")
    args = ap.parse_args()
    processor = Processor.from_pretrained(ensure_preset_dir(args.state_dir, args.preset))
    cases = _cases(args)
    monitor = Monitor()
    monitor.start()
    time.sleep(1.0)
    result = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cores": os.cpu_count(),
              "python": platform.python_version(), "preset": args.preset, "baseline": _stats(monitor.take()),
              "cases": {}}
    for name, chats in cases.items():
        processor.process(chats[0])  # first sight (imports, tables) outside the measurement
        monitor.take()
        times = []
        for messages in chats:
            start = time.perf_counter()
            processor.process(messages)
            times.append((time.perf_counter() - start) * 1e3)
        result["cases"][name] = {"process_median_ms": round(statistics.median(times), 2),
                                 "monitor": _stats(monitor.take())}
        print(name, json.dumps(result["cases"][name]), flush=True)
    monitor.stop.set()
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
