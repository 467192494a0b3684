"""The ViT attention interface: packed varlen, non-causal."""

from __future__ import annotations

import abc

import torch


class ViTAttention(abc.ABC):
    """Attention over packed segments (one per image, frame, or Qwen2.5-VL window).

    q, k, v: [T, H, D] (same head count: ViT attention is MHA); cu_seqlens: int32 [S+1], cu_seqlens[0] == 0,
    cu_seqlens[-1] == T; max_seqlen: the longest segment. Returns [T, H, D]; tokens attend only within their segment.
    The softmax scale is 1/sqrt(D).
    """

    name: str = "base"

    @abc.abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        ...

    def supports(self, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
        """Whether this backend can run inputs of this device / dtype / head_dim (auto skips those it cannot)."""
        return True

    def __call__(self, q, k, v, cu_seqlens, max_seqlen):
        return self.forward(q, k, v, cu_seqlens, max_seqlen)


class MissingBackendError(ImportError):
    """A backend whose optional package is absent or fails to load; the message names the extra to install."""

    def __init__(self, backend: str, module: str, cause: BaseException | None = None):
        reason = "is not installed" if isinstance(cause, ModuleNotFoundError) or cause is None \
            else f"failed to load ({type(cause).__name__}: {cause})"
        super().__init__(f"ViT attention backend {backend!r} needs the module {module!r}, which {reason}; "
                         f"install the GPU extra: pip install 'vlm-service[gpu]'", name=module)
        self.backend = backend
        self.module = module


def import_optional(backend: str, module: str):
    """Import `module` for `backend`, turning any load failure into a MissingBackendError."""
    import importlib
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:
        raise MissingBackendError(backend, module, e) from e
