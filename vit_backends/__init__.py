"""ViT attention backends: a registry of lazy factories; `auto` is resolved in exactly one place (auto.py)."""

from __future__ import annotations

from typing import Callable

from vit_backends.base import ViTAttention

_REGISTRY: dict[str, Callable[[], ViTAttention]] = {}


def register(name: str):
    def deco(factory: Callable[[], ViTAttention]):
        _REGISTRY[name] = factory
        return factory
    return deco


@register("sdpa")
def _sdpa() -> ViTAttention:
    from vit_backends.sdpa import SdpaAttention
    return SdpaAttention()


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str) -> ViTAttention:
    """Build the backend called `name`; unknown names raise ValueError listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown ViT attention backend {name!r}; choose one of {', '.join(available())}")
    return _REGISTRY[name]()
