#!/usr/bin/env python
"""Codec thread allocations of the parallel segment decoder (video_frames.CodecThreads) on the TTFT harness's clip
(bench_video_decode.py's: 10 s 1280x720 30 fps H.264, keyframe every 2 s, sampled as the preset samples it), median
milliseconds of --repeats per allocation:

  decode_parallel  decode_segments alone (no RGB), the segments' codecs given the allocation
  video_gpu_path   decode_video as the GPU path calls it (decode + RGB into the pinned buffer)
  prepare_device   prepare_video with GpuVideoPreprocessor on --device: the host side of the server's TTFT

Each row also says which of the other host-side changes were on (video_frames.DRAIN_AFTER_TARGETS,
video.PREOPEN_WORKERS, visual_items.HASH_DURING_DECODE, gpu_video.STREAM_FRAMES): the first row, all off at
scale 1, is the code before them (the A/B baseline); the next rows add them one at a time; the rest vary the
allocation with all on; the last two: scale 2 with all off, and the baseline again (drift over the run).
And, once: the tail after the decode (gpu_call: GpuVideoPreprocessor on decoded frames, split into upload and
device_ops; hash: the cache key's sha256; after_last_frame: from the streaming path's last frame to the end of
prepare_video) and longest_alone (the longest segment decoded alone on one container
with 1..cores codec threads: how far frame threads scale on this clip). "best" names the row with the lowest
prepare_device median; set its scale with $VLM_VIDEO_DECODE_THREADS_SCALE or as video_frames.CodecThreads' default.

    python benchmarks/sweep_video_threads.py --out $OUT/sweep_video_threads.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from bench_video_decode import FIELD, _clip, _limits, _packets, _time  # noqa: E402

# (scale, thread_type, longest, (drain, preopen, hash during decode, stream frames)); longest -1: all cores for
# the longest segment
ON, OFF = (True, True, True, True), (False, False, False, False)
ALLOCATIONS = [(1.0, "AUTO", 0, OFF), (1.0, "AUTO", 0, (True, False, False, False)),
               (1.0, "AUTO", 0, (True, True, False, False)), (1.0, "AUTO", 0, (True, True, True, False)),
               (1.0, "AUTO", 0, ON), (1.5, "AUTO", 0, ON),
               (2.0, "AUTO", 0, ON), (3.0, "AUTO", 0, ON), (1.0, "FRAME", 0, ON), (2.0, "FRAME", 0, ON),
               (1.0, "SLICE", 0, ON), (1.0, "AUTO", -1, ON), (1.5, "AUTO", -1, ON), (0.7, "AUTO", 0, ON),
               (2.0, "AUTO", 0, OFF), (1.0, "AUTO", 0, OFF)]  # the baseline again: drift over the run


def _allocations(cores: int):
    from vlm_service.processor.video_frames import CodecThreads

    return [(CodecThreads(scale, kind, cores if longest < 0 else longest), toggles)
            for scale, kind, longest, toggles in ALLOCATIONS]


@contextlib.contextmanager
def _variant(threads, toggles):
    """prepare_video's decode with these CodecThreads and these changes on / off (module switches)."""
    from vlm_service.processor import gpu_video, video, video_frames, visual_items

    saved = (video_frames.default_threads, video_frames.DRAIN_AFTER_TARGETS, video.PREOPEN_WORKERS,
             visual_items.HASH_DURING_DECODE, gpu_video.STREAM_FRAMES)
    video_frames.default_threads = lambda: threads
    (video_frames.DRAIN_AFTER_TARGETS, video.PREOPEN_WORKERS, visual_items.HASH_DURING_DECODE,
     gpu_video.STREAM_FRAMES) = toggles
    try:
        yield
    finally:
        (video_frames.default_threads, video_frames.DRAIN_AFTER_TARGETS, video.PREOPEN_WORKERS,
         visual_items.HASH_DURING_DECODE, gpu_video.STREAM_FRAMES) = saved


def _sweep(data: bytes, cfg, device: str, repeats: int, rows_limit: int = 0) -> dict:
    import av

    from vlm_service.processor import video_frames
    from vlm_service.processor.gpu_video import GpuVideoPreprocessor
    from vlm_service.processor.video import decode_video
    from vlm_service.processor.video_config import sample_indices
    from vlm_service.processor.visual_items import prepare_video, video_hash
    from vlm_service.types import VideoInput

    pts, keys, fps = _packets(data)
    indices = sample_indices(cfg, len(pts), fps, cfg.fps, cfg.max_frames)
    segments = video_frames.plan_segments([pts[i] for i in indices], keys)
    gpu = GpuVideoPreprocessor(cfg, device, torch.bfloat16)
    sampler = lambda *a: indices  # noqa: E731
    cores = video_frames.cpu_count()
    rows = []
    for threads, toggles in _allocations(cores)[:rows_limit or None]:
        def parallel(threads=threads):
            with av.open(io.BytesIO(data)) as c:
                video_frames.decode_segments(data, c, c.streams.video[0], segments, lambda *a: None,
                                             lambda *a: None, time.monotonic() + 60, FIELD, 0, threads)

        with _variant(threads, toggles):
            row = {"scale": threads.scale, "thread_type": threads.thread_type, "longest": threads.longest,
                   "drain": toggles[0], "preopen": toggles[1], "hash_during_decode": toggles[2],
                   "stream_frames": toggles[3],
                   "decode_parallel": _time(parallel, repeats),
                   "video_gpu_path": _time(lambda: decode_video(data, "video/mp4", _limits(), sampler, FIELD,
                                                                lambda *a: None, gpu.host_buffer), repeats),
                   "prepare_device": _time(lambda: prepare_video(VideoInput(data=data), cfg, _limits(), FIELD,
                                                                 gpu=gpu), repeats)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    decoded = decode_video(data, "video/mp4", _limits(), sampler, FIELD, lambda *a: None, gpu.host_buffer)
    part = VideoInput(data=data)
    tail = {"gpu_call": _time(lambda: gpu(decoded.frames), repeats),
            "hash": _time(lambda: video_hash(part, cfg.fps, cfg.max_frames), repeats),
            **_gpu_parts(gpu, decoded.frames, repeats),
            "after_last_frame": _after_last_frame(lambda: prepare_video(part, cfg, _limits(), FIELD, gpu=gpu),
                                                  repeats)}
    best = min(rows, key=lambda r: r["prepare_device"]["median_ms"])
    gain = rows[0]["prepare_device"]["median_ms"] - best["prepare_device"]["median_ms"]
    return {"segments": [[k, len(t), video_frames._span((k, t))] for k, t in segments], "allocations": rows,
            "best": {**{k: best[k] for k in ("scale", "thread_type", "longest", "drain", "preopen",
                                             "hash_during_decode", "stream_frames")},
                     "prepare_device_ms": best["prepare_device"]["median_ms"], "gain_vs_baseline_ms": round(gain, 2)},
            "tail": tail,
            "longest_alone": _longest_alone(data, max(segments, key=video_frames._span), cores, repeats)}


def _after_last_frame(prepare, repeats: int) -> dict:
    """ms from the last frame the decoder hands to the streaming GPU path (FramesJob.ready) to prepare_video's
    return, with the default allocation and every change on: what is left on the critical path after the decode."""
    from vlm_service.processor import gpu_video

    real, last, tails = gpu_video.FramesJob.ready, [0.0], []

    def ready(self, k):
        real(self, k)
        last[0] = time.perf_counter()

    gpu_video.FramesJob.ready = ready
    try:
        for _ in range(repeats + 1):  # the first: warm-up
            prepare()
            tails.append((time.perf_counter() - last[0]) * 1000.0)
    finally:
        gpu_video.FramesJob.ready = real
    tails = sorted(tails[1:])
    return {"median_ms": round(tails[len(tails) // 2], 2), "min_ms": round(tails[0], 2),
            "max_ms": round(tails[-1], 2)}


def _gpu_parts(gpu, frames, repeats: int) -> dict:
    """gpu_call split: upload (the pinned [n, H, W, 3] buffer to the device, synchronised) and device_ops (resize +
    normalise + patchify of the uploaded frames, synchronised)."""
    from vlm_service.processor.gpu_video import preprocess_video_frames

    host = torch.from_numpy(frames)

    def sync():
        if gpu.cuda:
            torch.cuda.synchronize(gpu.device)

    def upload():
        out = host.to(gpu.device, non_blocking=gpu.cuda)
        sync()
        return out

    video = upload().permute(0, 3, 1, 2)
    return {"upload": _time(upload, repeats),
            "device_ops": _time(lambda: (preprocess_video_frames(video, gpu.cfg, gpu.table), sync()), repeats),
            "frames_mb": round(frames.nbytes / 2**20, 1)}


def _longest_alone(data: bytes, segment, cores: int, repeats: int) -> dict:
    """ms of the longest segment decoded alone (seek + decode to its last target, no RGB) per codec thread count."""
    import av

    from vlm_service.processor import video_frames

    def run(count: int):
        with av.open(io.BytesIO(data)) as c:
            stream = c.streams.video[0]
            video_frames._set_threads(stream, count)
            video_frames._decode_segment(c, stream, *segment, lambda *a: None, lambda *a: None,
                                         time.monotonic() + 60, FIELD, 1)

    counts = sorted({1, 2, 3, 4, 6, 8, 12, cores})
    return {str(n): _time(lambda n=n: run(n), max(3, repeats // 2)) for n in counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="qwen3_vl_8b", help="a random:<preset> whose video processor config is used")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clip", default="", help="cache the clip in this file (made when missing)")
    ap.add_argument("--out", default="", help="JSON file (default: print only)")
    ap.add_argument("--rows", type=int, default=0, help="only the first ROWS allocations (0 = all; smoke tests)")
    ap.add_argument("--state-dir", default=tempfile.gettempdir() + "/vlm-bench-state")
    args = ap.parse_args()
    from vlm_service.demo.presets import ensure_preset_dir
    from vlm_service.processor.video_config import VideoConfig
    from vlm_service.processor.video_frames import cpu_count

    cfg = VideoConfig.from_pretrained(ensure_preset_dir(args.state_dir, args.preset))
    result = {"preset": args.preset, "clip": "10 s 1280x720 30 fps H.264, keyframe every 2 s", "device": args.device,
              "cores": cpu_count(), "repeats": args.repeats}
    result.update(_sweep(_clip(args.clip or None), cfg, args.device, args.repeats, args.rows))
    print(json.dumps({k: result[k] for k in ("best", "tail", "longest_alone")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
