"""Host lists -> device tensors without waiting for the GPU.

A copy from pageable host memory may block the host until the stream is idle, which would undo overlapped
scheduling (the next step's inputs are built while the current step runs). Staging through pinned memory makes the
copy asynchronous; PyTorch's pinned allocator caches blocks, so the per-step cost is a small memcpy.
"""

from __future__ import annotations

import torch


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.tensor(values, dtype) on `device`; asynchronous for CUDA."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def tensor_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; asynchronous for CUDA (pinned first unless it already is)."""
    if device.type != "cuda":
        return host
    return (host if host.is_pinned() else host.pin_memory()).to(device, non_blocking=True)
