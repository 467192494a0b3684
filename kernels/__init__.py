"""The JIT kernel layer shared by the ViT and the LLM. Imports nothing from the rest of the project.

Each public op is a launcher: it checks inputs, allocates the output and dispatches
(CUDA -> Triton / JIT CUDA / FlashInfer; CPU -> kernels.reference). Every launcher also takes
impl="auto" | "triton" | "reference" (norms: | "flashinfer") so tests can force a path explicitly.
"""

from kernels.activation import gelu_tanh_and_mul, silu_and_mul
from kernels.kv_store import store_kv
from kernels.moe import fused_experts, fused_moe, moe_configs, moe_route, tune_fused_moe
from kernels.qk_norm import qk_norm_mrope, qk_norm_mrope_store
from kernels.norm_router import fused_add_rmsnorm_router
from kernels.norm import fused_add_rmsnorm, fused_add_rmsnorm_, layernorm, rmsnorm
from kernels.rotary import apply_mrope_, apply_rotary_
from kernels.sampling import gumbel_sample

__all__ = [
    "apply_mrope_", "apply_rotary_", "fused_add_rmsnorm", "fused_add_rmsnorm_", "fused_add_rmsnorm_router",
    "fused_experts", "fused_moe",
    "gelu_tanh_and_mul", "gumbel_sample", "layernorm", "moe_configs", "moe_route", "qk_norm_mrope",
    "qk_norm_mrope_store", "rmsnorm", "silu_and_mul", "store_kv", "tune_fused_moe",
]
