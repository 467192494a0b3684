"""Backends on q, k, v given as strided views of one fused [T, 3, H, D] qkv buffer (how the towers now pass them,
issue 17): the same output as on packed copies, against the float64 oracle; and which backends ask for packed
inputs (needs_contiguous)."""

import pytest
import torch
from _vit_reference import reference_attention

import vit_backends
from vit_backends.shapes import cu_seqlens

LENGTHS = [64, 64, 37, 1, 100]  # windows, a ragged edge window, a single token, a longer segment


def strided_qkv(lengths, heads, dim, dtype, device, seed=0):
    """q, k, v [T, H, D] as views of one [T, 3*H*D] buffer: token stride 3*H*D, unit stride along D."""
    gen = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    fused = torch.randn(t, 3 * heads * dim, generator=gen).to(device, dtype).view(t, 3, heads, dim)
    q, k, v = fused[:, 0], fused[:, 1], fused[:, 2]
    assert not q.is_contiguous() and q.stride(-1) == 1
    return q, k, v, cu_seqlens(lengths, device), max(lengths)


def _check(backend, dtype, device, dim=72, tol=1e-5):
    q, k, v, cu, longest = strided_qkv(LENGTHS, 3, dim, dtype, device)
    got = backend(q, k, v, cu, longest)
    packed = backend(q.contiguous(), k.contiguous(), v.contiguous(), cu, longest)
    want = reference_attention(q, k, v, cu)
    assert got.shape == q.shape
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(got, packed, rtol=tol, atol=tol)


def test_sdpa_takes_strided_views():
    _check(vit_backends.create("sdpa"), torch.float32, "cpu")


def test_only_cudnn_asks_for_packed_inputs():
    assert vit_backends.create("sdpa").needs_contiguous is False
    assert vit_backends.create("auto").needs_contiguous is False  # its pick copies for itself if it must
    from vit_backends.fa3 import Fa3Attention
    from vit_backends.flashinfer_cudnn import FlashinferCudnnAttention
    assert Fa3Attention.needs_contiguous is False and FlashinferCudnnAttention.needs_contiguous is True


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [72, 80])
@pytest.mark.parametrize("name", ["sdpa", "fa3", "flashinfer_cudnn", "auto"])
def test_cuda_backends_take_strided_views(name, dim):
    if name not in vit_backends.usable():
        pytest.skip(f"{name} not usable here")
    _check(vit_backends.create(name), torch.bfloat16, "cuda", dim, tol=2e-2)
