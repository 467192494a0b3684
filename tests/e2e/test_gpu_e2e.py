"""The real server on CUDA (demo model, bf16): run on the GPU host with `pytest tests/e2e/test_gpu_e2e.py`."""

from __future__ import annotations

import dataclasses

import pytest

from tests.e2e.conftest import e2e_config
from vlm_service.client import Client
from vlm_service.config import ModelConfig, TLSConfig
from tests.server_harness import running_server


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["demo", "demo:qwen2_5_vl"])
def test_server_streams_on_cuda(state_dir, model):
    cfg = e2e_config(state_dir, TLSConfig())
    cfg = dataclasses.replace(cfg, model=ModelConfig(model=model, device="cuda", dtype="bfloat16"),
                              engine=dataclasses.replace(cfg.engine, cuda_graphs=True))
    with running_server(cfg) as srv, Client(srv.target, channel_credentials=srv.credentials) as client:
        assert client.info().device.startswith("cuda")
        text, complete = client.generate_text("hello", max_tokens=8, min_tokens=8)
        assert complete.usage.completion_tokens == 8 and complete.timings.ttft_ms > 0
