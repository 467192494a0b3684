"""Which FlashInfer decode kernel a model gets: tensor cores for GQA groups over 4 (and any group without a CUDA-core
kernel), CUDA cores otherwise; VLM_DECODE_TENSOR_CORES forces either where both exist."""

from types import SimpleNamespace

import pytest

from vlm_service.engine.attention import decode_uses_tensor_cores


def _spec(q: int, kv: int):
    return SimpleNamespace(num_heads=q, num_kv_heads=kv)


@pytest.mark.parametrize("q,kv,forced,expected", [
    (32, 8, "", False), (32, 4, "", True), (28, 4, "", True),  # 8B (group 4), 30B-A3B (8), 7B (7: no CUDA-core kernel)
    (32, 4, "0", False), (32, 8, "1", True), (28, 4, "0", True), (32, 4, "junk", True)])
def test_choice(monkeypatch, q, kv, forced, expected):
    monkeypatch.setenv("VLM_DECODE_TENSOR_CORES", forced)
    assert decode_uses_tensor_cores(_spec(q, kv)) is expected
