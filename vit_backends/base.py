"""The ViT attention interface: packed varlen, non-causal."""

from __future__ import annotations

import abc
import weakref

import torch


class ViTAttention(abc.ABC):
    """Attention over packed segments (one per image, frame, or Qwen2.5-VL window).

    q, k, v: [T, H, D] (same head count: ViT attention is MHA; last dim contiguous, other strides free); cu_seqlens: int32 [S+1], cu_seqlens[0] == 0,
    cu_seqlens[-1] == T; max_seqlen: the longest segment. Returns [T, H, D]; tokens attend only within their segment.
    The softmax scale is 1/sqrt(D).
    """

    name: str = "base"
    # q, k, v may arrive as strided views of one fused qkv projection (token stride 3*H*D, unit stride along D).
    # needs_contiguous: this backend can only read packed [T, H, D] inputs, so the towers ask the qkv rotary to
    # write them packed (kernels.rotary_qkv(contiguous=True), the copy fused into that pass); every backend still
    # copies a strided input it cannot read itself, so a wrong hint costs time, never correctness.
    needs_contiguous: bool = False

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


class PerTensorCache:
    """Values derived from a cu_seqlens tensor, kept for exactly as long as that tensor lives.

    A ViT passes one cu_seqlens object to all its layers, so per-layer host syncs and small kernels are paid once.
    An entry is dropped when its tensor is freed (a weak reference), never earlier: a CUDA graph captured with a
    cu_seqlens reads the cached device tensors (sdpa's gather indices, cuDNN's offsets) on every replay, so they must
    live as long as the graph's owner keeps that cu_seqlens (vlm_service/models/vision_graphs.py). Keyed by object
    identity and `extra`; outside inference mode the version counter is checked too, so an in-place edit rebuilds the
    entry; inference tensors have no version counter and must not be edited in place once passed to a backend.
    """

    def __init__(self):
        self._entries: dict[tuple[int, object], tuple[weakref.ref, int, object]] = {}

    def get(self, tensor: torch.Tensor, extra, build):
        """The cached value for (tensor, extra), or build() stored under it."""
        key, version = (id(tensor), extra), -1 if tensor.is_inference() else tensor._version
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is tensor and hit[1] == version:
            return hit[2]
        value = build()
        # replacing an entry drops its old weak reference, whose callback then never fires
        self._entries[key] = (weakref.ref(tensor, lambda _, key=key: self._entries.pop(key, None)), version, value)
        return value
