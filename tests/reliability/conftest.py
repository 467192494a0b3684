"""The reliability suite (DESIGN.md, "Reliability"): the REAL server with the demo model on loopback.

One shared plaintext server per session (`server`) with a /metrics port; tests that need other limits, TLS or a
subprocess start their own. Helpers live in reliability_helpers.py (importing from a conftest breaks collection).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability_helpers import rel_config
from tests.server_harness import free_port, running_server


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rel-state")


@pytest.fixture(scope="session")
def server(state_dir):
    """Shared server: 2 images/request, 8 MiB receive cap, context 1024 tokens, 8 running, metrics on, the HTTP
    front door on a free port (server.server.http.url)."""
    cfg = rel_config(state_dir, metrics_port=free_port(), http_port=0)
    with running_server(cfg) as srv:
        yield srv


@pytest.fixture(scope="session")
def stub(server):
    from vlm_service._proto.vlm.v1 import vlm_pb2_grpc

    channel = server.channel()
    yield vlm_pb2_grpc.VisionLanguageServiceStub(channel)
    channel.close()
