"""FlashAttention-3 varlen forward (Hopper) from the `fa3-fwd` package, module `fa3_fwd_interface`.

The wheel (fa3-fwd 0.0.3) is built forward-only and with FLASHATTENTION_DISABLE_FP16, so it runs bf16 (and fp8,
unused here); fp16 is refused with a clear error rather than failing inside the kernel. Head dims that are
multiples of 8 up to 256 run (72 and 80 use the 96 kernels).
"""

from __future__ import annotations

import torch

from vit_backends.base import ViTAttention, import_optional

MODULE = "fa3_fwd_interface"


def _fp16_built() -> bool:
    """Whether this fa3-fwd build kept fp16 kernels (its fa3_fwd_config records the build flags)."""
    try:
        config = import_optional("fa3", "fa3_fwd_config").CONFIG
        return not config["build_flags"].get("FLASHATTENTION_DISABLE_FP16", False)
    except (ImportError, KeyError, AttributeError):
        return False


class Fa3Attention(ViTAttention):
    """Non-causal varlen attention through fa3_fwd_interface.flash_attn_varlen_func (CUDA sm90, bf16)."""

    name = "fa3"

    def __init__(self):
        self._fa3 = import_optional(self.name, MODULE)
        self._dtypes = (torch.bfloat16, torch.float16) if _fp16_built() else (torch.bfloat16,)

    def supports(self, device, dtype, head_dim):
        return (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
                and dtype in self._dtypes and head_dim % 8 == 0 and head_dim <= 256)

    def _check(self, q: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
        if q.dtype not in self._dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self._dtypes)
            raise ValueError(f"the fa3 ViT attention backend runs {names} only (this fa3-fwd build), got "
                             f"{str(q.dtype).removeprefix('torch.')}; choose another backend or dtype")
        if q.device.type != "cuda":
            raise ValueError(f"the fa3 ViT attention backend needs a CUDA (Hopper) device, got {q.device}")
        assert cu_seqlens.dtype == torch.int32, "cu_seqlens must be int32"

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        # q, k, v: [T, H, D] (last dim contiguous; token stride may be that of a fused qkv)
        self._check(q, cu_seqlens)
        # The raw op, not flash_attn_varlen_func: its autograd wrapper and custom-op shim cost ~60 us of host time
        # per call on the H200 (two torch.tensor([]) host->device copies among them), more than the kernel itself
        # for one 448 px image. Forward-only inference needs none of it.
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out = torch.ops.fa3_fwd.fwd(
            q, k, v, None, None, None, None,  # k_new, v_new, qv, out
            cu_seqlens, cu_seqlens, None, None, None,  # cu_seqlens_q/k/k_new, seqused_q/k
            max_seqlen, max_seqlen, None, None, None,  # page_table, kv_batch_idx, leftpad_k
            None, None, None, None, None, None,  # rotary cos/sin/seqlens, q/k/v descale
            q.shape[-1] ** -0.5, False, -1, -1, 0, 0.0, True, None, 1, None, 0)
        return out[0]
