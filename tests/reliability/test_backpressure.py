"""Backpressure: a client that stops reading its stream pauses its request (no generation, no KV blocks) instead of
generating into memory; when it reads again it gets exactly the greedy tokens it would have got.

The client's HTTP/2 window is made small (1 KiB, no BDP growth) so gRPC's own buffers fill after a few dozen
chunks; the server runs with --max-buffered-outputs 8.
"""

from __future__ import annotations

import pytest

from reliability_helpers import collect, rel_config, wait_idle, wait_until
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from tests.server_harness import running_server

SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
N = 200


@pytest.fixture(scope="module")
def bp_server(tmp_path_factory):
    with running_server(rel_config(tmp_path_factory.mktemp("bp"), max_buffered_outputs=8), warmup=False) as srv:
        yield srv


def _request(rid: str, prompt: str = "a reader that falls asleep"):
    return build_request(prompt, request_id=rid, max_tokens=N, min_tokens=N)


def test_a_client_that_stops_reading_pauses_and_resumes_with_exact_tokens(bp_server):
    runtime = bp_server.server.runtime
    with bp_server.channel() as ch:
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
        expected, _ = collect(stub.Generate(_request("reference")))
        with bp_server.channel(options=SMALL_WINDOW) as slow_ch:
            stream = vlm_pb2_grpc.VisionLanguageServiceStub(slow_ch).Generate(_request("asleep"), timeout=300)
            first = next(stream)
            assert wait_until(lambda: runtime.engine.stats().paused == 1, 60), runtime.engine.stats()
            seq = runtime.engine.engine.requests["asleep"].seq
            held = None
            for rid in ("other", "other2"):  # the server keeps stepping for others meanwhile
                tokens, _ = collect(stub.Generate(build_request("busy", request_id=rid, max_tokens=12,
                                                                min_tokens=12)))
                assert len(tokens) == 12
                stats = runtime.engine.stats()
                assert stats.paused == 1 and stats.kv_blocks_used == 0 and seq.block_table == []
                if held is None:  # (the token in flight when it paused has landed by now)
                    held = len(seq.output_ids)
                assert len(seq.output_ids) == held < N, "a paused request generates nothing"
            rest, complete = collect(stream)
    assert list(first.chunk.token_ids) + rest == expected
    assert complete.finish_reason == vlm_pb2.LENGTH and complete.usage.completion_tokens == N
    assert wait_idle(runtime) is not None and runtime.engine.stats().paused == 0
