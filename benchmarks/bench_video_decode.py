#!/usr/bin/env python
"""Host work of one video, stage by stage: the TTFT harness's clip (10 s, 1280x720, 30 fps source, H.264 in MP4,
a keyframe every 2 s; bench/videos.synthetic_video, made in process) sampled as the preset's video processor
samples it (2 fps -> 20 frames), median milliseconds of --repeats:

  demux             open the container, read every packet's pts / keyframe flag (no decoding)
  decode_seq        decode the sampled keyframe segments on this thread, FFmpeg's threads, nothing skipped, no RGB
  decode_seq_skip   the same, unsampled non-reference frames skipped (skip_frame NONREF per packet)
  decode_parallel   video_frames.decode_segments: segments on worker threads, skipping, no RGB
  rgb               to_ndarray("rgb24") of the kept frames, one after another
  resize            the CPU path's per-frame uint8 resize of the kept frames to the preset's size
  video_cpu_path    decode_video as the CPU path calls it (host resize per frame), --workers
  video_gpu_path    decode_video as the GPU path calls it (decoded size, one buffer), --workers
  prepare_cpu       visual_items.prepare_video on the host (decode + resize + bf16 patch layout), what the server
                    runs with --preprocess-device cpu
  prepare_device    prepare_video with gpu_video.GpuVideoPreprocessor on --device (cuda: the H200 path; on a CPU
                    host it runs the same torch ops on the CPU)

    python benchmarks/bench_video_decode.py --preset qwen3_vl_8b --out $OUT/video_decode.json
    python benchmarks/bench_video_decode.py --stages prepare_cpu --clip /tmp/clip.mp4   # one stage (A/B runs)
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH first (A/B runs of another tree)

import torch  # noqa: E402

FIELD = "video"
STAGES = ("demux", "decode_seq", "decode_seq_skip", "decode_parallel", "rgb", "resize", "video_cpu_path",
          "video_gpu_path", "prepare_cpu", "prepare_device")


def _clip(path: str | None) -> bytes:
    from vlm_service.bench.videos import synthetic_video

    if path and Path(path).is_file():
        return Path(path).read_bytes()
    data = synthetic_video(10.0, "1280x720", 30.0).data
    if path:
        Path(path).write_bytes(data)
    return data


def _packets(data: bytes):
    """(sorted pts, sorted keyframe pts, average fps) from the packets alone."""
    import av

    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in c.demux(stream) if p.pts is not None and p.size]
        fps = float(stream.average_rate)
    return sorted(p for p, _ in packets), sorted(p for p, k in packets if k), fps


def _decode_seq(data: bytes, segments, skip: bool, keep: bool = False) -> list:
    """Decode each segment after a seek on one container, FFmpeg's threads; the kept frames if `keep`."""
    import av

    kept = []
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        for key, targets in segments:
            wanted = set(targets)
            c.seek(key, stream=stream, backward=True, any_frame=False)
            for packet in c.demux(stream):
                if skip:
                    stream.codec_context.skip_frame = "DEFAULT" if packet.pts in wanted or packet.pts is None \
                        else "NONREF"
                done = False
                for frame in stream.codec_context.decode(packet):
                    if frame.pts in wanted and keep:
                        kept.append(frame)
                    done = frame.pts is None or frame.pts >= targets[-1]
                    if done:
                        break
                if done:
                    break
    return kept


def _stage_fns(data: bytes, cfg, device: str, workers: int) -> dict:
    """stage name -> a no-argument function doing that stage once."""
    import av

    from vlm_service.processor.video_config import resize_size, sample_indices
    from vlm_service.processor.visual_items import prepare_video
    from vlm_service.types import VideoInput

    pts, keys, fps = _packets(data)
    indices = sample_indices(cfg, len(pts), fps, cfg.fps, cfg.max_frames)
    size = resize_size(cfg, len(indices), 720, 1280)
    from vlm_service.processor.video import decode_video

    sampler = lambda *a: indices  # noqa: E731
    fns = {"demux": lambda: _packets(data),
           "prepare_cpu": lambda: prepare_video(VideoInput(data=data), cfg, _limits(), FIELD, torch.bfloat16),
           "video_cpu_path": lambda: decode_video(data, "video/mp4", _limits(), sampler, FIELD, lambda *a: size,
                                                  **({"workers": workers} if workers else {}))}
    try:
        from vlm_service.processor.video_frames import decode_segments, plan_segments
    except ImportError:  # an older tree (A/B runs): its stages only
        return fns
    from vlm_service.processor.gpu_video import GpuVideoPreprocessor
    from vlm_service.processor.video import resize_frame

    segments = plan_segments([pts[i] for i in indices], keys)
    frames = _decode_seq(data, segments, skip=True, keep=True)
    rgbs = [f.to_ndarray(format="rgb24") for f in frames]

    def parallel():
        with av.open(io.BytesIO(data)) as c:
            decode_segments(data, c, c.streams.video[0], segments, lambda *a: None, lambda *a: None,
                            time.monotonic() + 60, FIELD, workers)

    gpu = GpuVideoPreprocessor(cfg, device, torch.bfloat16)
    fns.update({
        "decode_seq": lambda: _decode_seq(data, segments, skip=False),
        "decode_seq_skip": lambda: _decode_seq(data, segments, skip=True),
        "decode_parallel": parallel,
        "rgb": lambda: [f.to_ndarray(format="rgb24") for f in frames],
        "resize": lambda: [resize_frame(x, size) for x in rgbs],
        "video_gpu_path": lambda: decode_video(data, "video/mp4", _limits(), sampler, FIELD, lambda *a: None,
                                               gpu.host_buffer, workers=workers),
        "prepare_device": lambda: prepare_video(VideoInput(data=data), cfg, _limits(), FIELD, gpu=gpu),
    })
    return fns


def _limits():
    from vlm_service.processor.video import VideoLimits

    return VideoLimits()


def _time(fn, repeats: int) -> dict:
    fn()  # warm-up (codec, thread pools, CUDA kernels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2),
            "max_ms": round(max(times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="qwen3_vl_8b", help="a random:<preset> whose video processor config is used")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of: " + ", ".join(STAGES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="decode threads (0 = one per segment up to the cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clip", default="", help="cache the clip in this file (made when missing)")
    ap.add_argument("--out", default="", help="JSON file (default: print only)")
    args = ap.parse_args()
    from vlm_service.demo.presets import ensure_preset_dir
    from vlm_service.processor.video_config import VideoConfig

    cfg = VideoConfig.from_pretrained(ensure_preset_dir(tempfile.gettempdir() + "/vlm-bench-state", args.preset))
    fns = _stage_fns(_clip(args.clip or None), cfg, args.device, args.workers)
    result = {"preset": args.preset, "clip": "10 s 1280x720 30 fps H.264, keyframe every 2 s", "sample_fps": cfg.fps,
              "device": args.device, "workers": args.workers, "torch_threads": torch.get_num_threads(),
              "cores": _cores(), "stages": {}}
    for name in args.stages.split(","):
        if name in fns:
            result["stages"][name] = _time(fns[name], args.repeats)
            print(f"{name:16s} {result['stages'][name]}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def _cores() -> int:
    try:
        from vlm_service.processor.video_frames import cpu_count
    except ImportError:
        import os
        return os.cpu_count() or 1
    return cpu_count()


if __name__ == "__main__":
    main()
