"""FlashInfer's JIT kernels behind one on-disk cache directory (compiled on first use).

Cache directory: $VLM_KERNEL_CACHE, else $XDG_CACHE_HOME/vlm-service/kernels (~/.cache/... by default), i.e. under
the service's default state dir. A first build costs tens of seconds (FlashInfer's rmsnorm took 31 s on the H200);
later processes load the cached .so. Every import here is lazy: CPU installs never need nvcc or flashinfer.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    """The on-disk cache for compiled kernels (created on demand)."""
    explicit = os.environ.get("VLM_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlm-service" / "kernels"


def _missing(package: str, exc: ImportError) -> RuntimeError:
    return RuntimeError(f"{package} is not installed; install the GPU extra: pip install 'vlm-service[gpu]' "
                        f"({exc})")


@functools.cache
def flashinfer_norm() -> ModuleType:
    """flashinfer.norm (rmsnorm, fused_add_rmsnorm), its JIT cache pointed at cache_dir()/flashinfer.

    The cache location only takes effect if flashinfer was not imported before this call; an explicit
    FLASHINFER_WORKSPACE_BASE in the environment wins.
    """
    os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", str(cache_dir() / "flashinfer"))
    try:
        import flashinfer.norm
    except ImportError as exc:
        raise _missing("flashinfer-python", exc) from exc
    return flashinfer.norm


def warm_up_flashinfer_norm(hidden: int, dtype=None) -> None:
    """Compile/load FlashInfer's norms for `hidden` once (call at startup, never inside a timed region)."""
    import torch

    norm = flashinfer_norm()
    x = torch.zeros(1, hidden, dtype=dtype or torch.bfloat16, device="cuda")
    w = torch.ones(hidden, dtype=x.dtype, device="cuda")
    norm.rmsnorm(x, w, 1e-6)
    norm.fused_add_rmsnorm(x, x.clone(), w, 1e-6)
    torch.cuda.synchronize()
