"""One real server (demo model, real runtime) per module on loopback: mTLS with certificates made here, plus a
plaintext UDS listener. The demo checkpoint is built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# certificates are made with `cryptography`, a dependency of every install; the GPU host's image lacks it, and there
# these tests are skipped rather than failing to collect
pytest.importorskip("cryptography")

from vlm_service.config import Config, EngineConfig, LimitsConfig, ModelConfig, ServerConfig, TLSConfig
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402


def _require_runtime():
    pytest.importorskip("vlm_service.demo.checkpoint")
    engine = pytest.importorskip("vlm_service.engine")
    if not hasattr(engine, "AsyncEngine"):
        pytest.skip("vlm_service.engine.AsyncEngine not there yet")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    pki = make_test_pki(folder)
    live = folder / "live"  # the files the server reads; tests rotate them in place
    live.mkdir()
    shutil.copy(pki.server.cert, live / "server.crt")
    shutil.copy(pki.server.key, live / "server.key")
    return pki, live


def e2e_config(state_dir: Path, tls: TLSConfig, uds: Path | None = None, **limits) -> Config:
    lim = LimitsConfig(max_images_per_request=2, max_request_bytes=8 << 20, **limits)
    return Config(model=ModelConfig(model="demo", device="cpu", dtype="float32", vit_attention_backend="sdpa"),
                  engine=EngineConfig(num_blocks=256, max_num_seqs=8, cuda_graphs=False),
                  server=ServerConfig(port=0, uds=uds, state_dir=state_dir, tls=tls, limits=lim,
                                      drain_timeout_s=10))


@pytest.fixture(scope="module")
def server(state_dir, pki, tmp_path_factory):
    _require_runtime()
    pki, live = pki
    tls = TLSConfig(cert=live / "server.crt", key=live / "server.key", client_ca=pki.ca.cert)
    uds = tmp_path_factory.mktemp("sock") / "vlm.sock"
    creds = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
    with running_server(e2e_config(state_dir, tls, uds, max_prompt_tokens=400), credentials=creds) as srv:
        yield srv
