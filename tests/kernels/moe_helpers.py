"""Shared by the fused-MoE kernel tests (test_moe_kernels.py, test_moe_small_batch.py): tolerances, seeded
weights and inputs, and the (T, E, k, hot) cases."""

import torch

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
       torch.float16: dict(rtol=1e-2, atol=1e-2)}


def moe_weights(e, h, i, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(e, 2 * i, h, generator=g) / h ** 0.5).to(dtype).to(device)
    w2 = (torch.randn(e, h, i, generator=g) / i ** 0.5).to(dtype).to(device)
    return w13, w2


def moe_inputs(t, e, h, dtype, seed=1, device="cpu", hot=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype).to(device)
    logits = torch.randn(t, e, generator=g) * 2
    if hot is not None:
        logits[:, hot] += 30.0  # every token's first pick
    return x, logits.to(device)


CASES = [  # (T, E, k, hot expert or None): T not multiples of BLOCK_M, experts without tokens, top-k 1 and 8
    (5, 8, 1, None), (37, 8, 2, None), (3, 16, 8, None), (20, 8, 1, 3), (17, 4, 2, 0), (1, 8, 8, None)]
