"""ViT attention backends: a registry of lazy factories; `auto` is resolved in exactly one place (auto.py).

    create("sdpa" | "fa3" | "flashinfer_cudnn" | "auto") -> ViTAttention
    available() -> every registered name;  usable() -> the names that can run on this machine

Optional GPU packages are imported only when their backend is created; a missing one raises MissingBackendError
(an ImportError) naming the module and the extra: pip install 'vlm-service[gpu]'.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch

from vit_backends.base import MissingBackendError, ViTAttention

__all__ = ["MissingBackendError", "ViTAttention", "available", "create", "register", "usable"]

_REGISTRY: dict[str, Callable[[], ViTAttention]] = {}
AUTO_CANDIDATES = ("fa3", "flashinfer_cudnn", "sdpa")  # measured by auto, in order of preference on ties


def register(name: str):
    def deco(factory: Callable[[], ViTAttention]):
        _REGISTRY[name] = factory
        return factory
    return deco


@register("sdpa")
def _sdpa() -> ViTAttention:
    from vit_backends.sdpa import SdpaAttention
    return SdpaAttention()


@register("fa3")
def _fa3() -> ViTAttention:
    from vit_backends.fa3 import Fa3Attention
    return Fa3Attention()


@register("flashinfer_cudnn")
def _flashinfer_cudnn() -> ViTAttention:
    from vit_backends.flashinfer_cudnn import FlashinferCudnnAttention
    return FlashinferCudnnAttention()


@register("auto")
def _auto() -> ViTAttention:
    from vit_backends.auto import AutoAttention
    return AutoAttention({name: _REGISTRY[name] for name in AUTO_CANDIDATES if name in usable()})


def available() -> list[str]:
    """Every registered backend name."""
    return sorted(_REGISTRY)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def usable() -> list[str]:
    """Backends that can run here: sdpa and auto always; fa3 on Hopper with fa3-fwd; flashinfer_cudnn on CUDA with
    flashinfer-python and nvidia-cudnn-frontend. (Presence of the package is checked, not that it loads.)"""
    names = ["auto", "sdpa"]
    if _hopper() and _has("fa3_fwd_interface"):
        names.append("fa3")
    if torch.cuda.is_available() and _has("flashinfer") and _has("cudnn"):
        names.append("flashinfer_cudnn")
    return sorted(names)


def create(name: str) -> ViTAttention:
    """Build the backend called `name`; unknown names raise ValueError listing the known ones; a backend whose
    package is missing raises MissingBackendError (an ImportError) naming the extra to install."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown ViT attention backend {name!r}; choose one of {', '.join(available())}")
    return _REGISTRY[name]()
