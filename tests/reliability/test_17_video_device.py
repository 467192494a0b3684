"""17. Video on the device path: the real server (demo model on CPU, over TLS) with the video preprocessing device
forced onto the CPU, so the branch `--preprocess-device auto|cuda` takes on a CUDA model (gpu_video.py: no host
resize, frames into one buffer, resize / normalise / layout as torch ops on that device) runs end to end here.
It answers videos with the host path's prompt and visual token counts, serves concurrent videos, refuses what
cannot be resized naming the field, and images still take the host path."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
from grpc_status import rpc_status

pytest.importorskip("av")

from reliability_helpers import collect, png, rel_config  # noqa: E402
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc  # noqa: E402
from vlm_service.bench.clips import make_clip  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.processor import gpu_preprocess  # noqa: E402
from vlm_service.server import convert  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402

FIELD = "messages[0].content[1].video"


def _request(part: vlm_pb2.ContentPart, max_tokens: int = 2) -> vlm_pb2.GenerateRequest:
    parts = [vlm_pb2.ContentPart(text="What happens here?"), part]
    return vlm_pb2.GenerateRequest(messages=[vlm_pb2.Message(role="user", content=parts)],
                                   sampling=vlm_pb2.SamplingParams(max_tokens=max_tokens))


def _video(seed: int, **kw) -> vlm_pb2.ContentPart:
    clip = make_clip(**{"seconds": 2.0, "width": 66, "height": 46, "fps": 10.0, "seed": seed, "gop": 5, **kw})
    return vlm_pb2.ContentPart(video=vlm_pb2.Video(data=clip))


@pytest.fixture(scope="module")
def servers(state_dir, tmp_path_factory):
    """(device-path stub, host-path stub, the device-path server)."""
    pki = make_test_pki(tmp_path_factory.mktemp("video-device-pki"))
    cfg = rel_config(state_dir, tls=TLSConfig(cert=pki.server.cert, key=pki.server.key))
    creds = channel_credentials(pki.ca.cert)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_preprocess, "resolve_video_preprocess_device", lambda name, device: torch.device("cpu"))
        dev_ctx = running_server(cfg, credentials=creds, warmup=False)
        dev = dev_ctx.__enter__()
    try:
        with running_server(cfg, credentials=creds, warmup=False) as host:
            dev_ch, host_ch = dev.channel(), host.channel()
            yield (vlm_pb2_grpc.VisionLanguageServiceStub(dev_ch), vlm_pb2_grpc.VisionLanguageServiceStub(host_ch),
                   dev, host)
            dev_ch.close(), host_ch.close()
    finally:
        dev_ctx.__exit__(None, None, None)


def test_the_device_path_is_the_one_serving(servers):
    *_, dev, host = servers
    assert dev.server.runtime.processor.gpu_video is not None
    assert dev.server.runtime.processor.gpu_preprocessor is None  # images stay on the host
    assert host.server.runtime.processor.gpu_video is None


def test_videos_get_the_host_paths_token_counts(servers):
    dev_stub, host_stub, *_ = servers
    for kw in (dict(), dict(width=97, height=61, fps=12.0), dict(fmt="webm")):
        _, dev_done = collect(dev_stub.Generate(_request(_video(1, **kw))))
        _, host_done = collect(host_stub.Generate(_request(_video(1, **kw))))
        assert dev_done.usage.prompt_tokens == host_done.usage.prompt_tokens
        assert dev_done.usage.image_tokens == host_done.usage.image_tokens > 0


def test_concurrent_videos_and_an_image_are_served(servers):
    dev_stub, *_ = servers
    image = vlm_pb2.ContentPart(image=vlm_pb2.Image(data=png(40, 32, seed=4)))
    parts = [_video(10 + i) for i in range(4)] + [image]
    with ThreadPoolExecutor(len(parts)) as pool:
        results = list(pool.map(lambda p: collect(dev_stub.Generate(_request(p, max_tokens=3))), parts))
    assert all(len(tokens) >= 1 and done.usage.prompt_tokens > 0 for tokens, done in results)


def test_unresizable_video_is_refused_naming_the_field_then_next_succeeds(servers):
    dev_stub, *_ = servers
    with pytest.raises(grpc.RpcError) as err:
        collect(dev_stub.Generate(_request(_video(2, width=402, height=2))))  # aspect ratio 201
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resized" in err.value.details()
    assert convert.field_violations(rpc_status.from_call(err.value)) == [FIELD]
    assert len(collect(dev_stub.Generate(_request(_video(3))))[0]) >= 1
