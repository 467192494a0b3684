"""Shared launcher helpers: input checks and the choice between the Triton path and the torch reference.

Every launcher takes `impl`: "auto" (CUDA tensors -> Triton, CPU tensors -> reference), "triton" (forced; on CPU
this only works under TRITON_INTERPRET=1, which is how the tests run the kernel bodies) or "reference".
The choice is an explicit argument, never ambient state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

IMPLS = ("auto", "triton", "reference")


def use_triton(impl: str, *tensors: torch.Tensor) -> bool:
    """True when the Triton kernel should run for these tensors."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    if impl == "auto":
        return all(t.is_cuda for t in tensors)
    return impl == "triton"


def check(cond: bool, msg: str | Callable[[], str]) -> None:
    """Raise ValueError(msg) when a caller's input is wrong. A message built from the inputs is passed as a
    lambda: the launchers check on every call, and formatting shapes into f-strings that are never shown cost a
    prefill step of an 8B model milliseconds of host time."""
    if not cond:
        raise ValueError(msg() if callable(msg) else msg)


def check_same_device(*named: tuple[str, torch.Tensor]) -> None:
    devices = {t.device for _, t in named}
    check(len(devices) == 1,
          lambda: "tensors must be on one device, got " + ", ".join(f"{n}={t.device}" for n, t in named))


def check_float(name: str, t: torch.Tensor) -> None:
    check(t.dtype in (torch.float32, torch.float16, torch.bfloat16),
          lambda: f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_last_contiguous(name: str, t: torch.Tensor) -> None:
    check(t.shape[-1] == 0 or t.stride(-1) == 1, lambda: f"{name} must be contiguous in its last dimension")


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
