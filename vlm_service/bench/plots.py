"""PNG plots (matplotlib, Agg backend, imported lazily): TTFT CDF, TTFT vs image pixels, latency vs throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vlm_service.bench.records import RequestResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, path: Path) -> Path:
    """Grid and legend on `ax`, then write the figure to `path` and free it."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def ttft_cdf(runs: Sequence[tuple[str, list[RequestResult]]], path: Path) -> Path:
    """One CDF curve of TTFT per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, results in runs:
        x = np.sort([r.ttft_ms for r in results if r.ok])
        if x.size:
            ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=label)
    ax.set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT CDF")
    return _save(fig, ax, path)


def ttft_vs_pixels(runs: Sequence[tuple[str, list[RequestResult]]], path: Path) -> Path:
    """Scatter of TTFT against the total image pixels of each request."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, results in runs:
        ok = [r for r in results if r.ok]
        ax.scatter([r.pixels / 1e6 for r in ok], [r.ttft_ms for r in ok], s=10, alpha=0.6, label=label)
    ax.set(xlabel="image pixels per request (MP)", ylabel="TTFT (ms)", title="TTFT vs image size")
    return _save(fig, ax, path)


def latency_vs_throughput(points: Sequence[tuple[str, dict]], path: Path) -> Path:
    """Median / p99 TTFT and median E2E against request throughput, one point per request rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [m["request_throughput"] for _, m in points]
    for key, stat, style in (("ttft_ms", "median", "o-"), ("ttft_ms", "p99", "s--"), ("e2e_ms", "median", "^-")):
        ax.plot(xs, [m[key][stat] for _, m in points], style, label=f"{key[:-3].upper()} {stat}")
    for (label, m), x in zip(points, xs):
        ax.annotate(label, (x, m["ttft_ms"]["median"] or 0), fontsize=6)
    ax.set(xlabel="request throughput (req/s)", ylabel="latency (ms)", title="latency vs throughput")
    return _save(fig, ax, path)


def write_all(result_dir: Path, runs: Sequence[tuple[str, list[RequestResult], dict]]) -> list[Path]:
    """The standard plots of a bench invocation; the sweep plot only when there are several runs."""
    result_dir = Path(result_dir)
    pairs = [(label, res) for label, res, _ in runs]
    paths = [ttft_cdf(pairs, result_dir / "ttft_cdf.png"), ttft_vs_pixels(pairs, result_dir / "ttft_vs_pixels.png")]
    if len(runs) > 1:
        paths.append(latency_vs_throughput([(l, m) for l, _, m in runs], result_dir / "latency_vs_throughput.png"))
    return paths
