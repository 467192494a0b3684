"""17. Video: bad video input (truncated or corrupt file, audio only, an image sent as video, a declared 10-hour
duration, 8K frames, over the byte limit, a decode over the time limit, bad sampling fields) gets INVALID_ARGUMENT
(RESOURCE_EXHAUSTED for size) naming the field, and the next valid request succeeds; a soak of unique short videos
leaves RSS, fds, KV blocks and the vision cache within budget. The real server on loopback, over TLS."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

pytest.importorskip("av")

from reliability_helpers import collect, png, rel_config, wait_idle  # noqa: E402
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc  # noqa: E402
from vlm_service.bench.clips import make_audio_only, make_clip  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.server import convert  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402

MAX_VIDEO_BYTES = 1 << 20
VISION_CACHE = 2 << 20
FIELD = "messages[0].content[1].video"


def _clip(seed: int = 0, **kw) -> bytes:
    return make_clip(**{"seconds": 2.0, "width": 64, "height": 48, "fps": 10.0, "seed": seed, **kw})


def _bad_cases() -> dict:
    whole = _clip(9)
    return {
        "truncated": (vlm_pb2.Video(data=_clip(8, faststart=True)[:1500]), "INVALID_ARGUMENT", FIELD),
        "corrupt": (vlm_pb2.Video(data=whole[: len(whole) // 2]), "INVALID_ARGUMENT", FIELD),
        "zero_bytes": (vlm_pb2.Video(data=b"", mime_type="video/mp4"), "INVALID_ARGUMENT", FIELD),
        "audio_only": (vlm_pb2.Video(data=make_audio_only()), "INVALID_ARGUMENT", FIELD),
        "image_as_video": (vlm_pb2.Video(data=png(32, 32, seed=1)), "INVALID_ARGUMENT", FIELD),
        "ten_hours": (vlm_pb2.Video(data=make_clip(width=64, height=48, vfr_ms=[0, 18_000_000, 36_000_000])),
                      "INVALID_ARGUMENT", FIELD),
        "8k_frames": (vlm_pb2.Video(data=make_clip(0.2, 7680, 4320, 5.0, codec="mjpeg", seed=-1)),
                      "INVALID_ARGUMENT", FIELD),
        "over_byte_limit": (vlm_pb2.Video(data=whole + bytes(MAX_VIDEO_BYTES)), "RESOURCE_EXHAUSTED", FIELD),
        "wrong_mime": (vlm_pb2.Video(data=whole, mime_type="video/webm"), "INVALID_ARGUMENT", FIELD),
        "negative_fps": (vlm_pb2.Video(data=whole, fps=-1.0), "INVALID_ARGUMENT", FIELD + ".fps"),
        "data_and_frames": (vlm_pb2.Video(data=whole, frames=vlm_pb2.VideoFrames(
            frames=[vlm_pb2.Image(data=png(32, 32, seed=2))], fps=2.0)), "INVALID_ARGUMENT", FIELD),
    }


@pytest.fixture(scope="module")
def tls_server(state_dir, tmp_path_factory):
    pki = make_test_pki(tmp_path_factory.mktemp("video-pki"))
    tls = TLSConfig(cert=pki.server.cert, key=pki.server.key)
    cfg = rel_config(state_dir, tls=tls, max_video_bytes=MAX_VIDEO_BYTES, engine={"vision_cache_bytes": VISION_CACHE})
    with running_server(cfg, credentials=channel_credentials(pki.ca.cert), warmup=False) as srv:
        channel = srv.channel()
        yield srv, vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        channel.close()


def _request(video: vlm_pb2.Video, max_tokens: int = 2) -> vlm_pb2.GenerateRequest:
    parts = [vlm_pb2.ContentPart(text="What happens here?"), vlm_pb2.ContentPart(video=video)]
    return vlm_pb2.GenerateRequest(messages=[vlm_pb2.Message(role="user", content=parts)],
                                   sampling=vlm_pb2.SamplingParams(max_tokens=max_tokens))


@pytest.fixture(scope="module")
def bad_cases():
    return _bad_cases()


CASES = ["truncated", "corrupt", "zero_bytes", "audio_only", "image_as_video", "ten_hours", "8k_frames",
         "over_byte_limit", "wrong_mime", "negative_fps", "data_and_frames"]


def test_cases_cover_the_fixture(bad_cases):
    assert sorted(bad_cases) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_video_gets_the_named_status_then_next_succeeds(tls_server, bad_cases, case):
    srv, stub = tls_server
    video, code, field = bad_cases[case]
    with pytest.raises(grpc.RpcError) as err:
        collect(stub.Generate(_request(video)))
    assert err.value.code().name == code, err.value.details()
    assert convert.field_violations(rpc_status.from_call(err.value)) == [field]
    assert field in err.value.details()
    tokens, complete = collect(stub.Generate(_request(vlm_pb2.Video(data=_clip(CASES.index(case) + 10)))))
    assert len(tokens) >= 1 and complete.usage.image_tokens > 0
    assert wait_idle(srv.server.runtime) is not None


def test_model_info_reports_video_limits(tls_server):
    _, stub = tls_server
    info = stub.GetModelInfo(vlm_pb2.GetModelInfoRequest())
    assert info.max_video_bytes == MAX_VIDEO_BYTES and info.max_video_frames > 0
    assert set(info.accepted_video_mime_types) == {"video/mp4", "video/webm", "video/quicktime"}
    assert info.max_video_duration_s > 0 and info.max_videos > 0


def test_decode_over_the_time_limit_is_invalid_argument(state_dir):
    with running_server(rel_config(state_dir, video_decode_timeout_s=0.0), warmup=False) as srv:
        channel = srv.channel()
        stub = vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            collect(stub.Generate(_request(vlm_pb2.Video(data=_clip(3)))))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "too long" in err.value.details()
        assert convert.field_violations(rpc_status.from_call(err.value)) == [FIELD]
        image = vlm_pb2.ContentPart(image=vlm_pb2.Image(data=png(32, 32, seed=3)))
        req = vlm_pb2.GenerateRequest(messages=[vlm_pb2.Message(role="user", content=[image])],
                                      sampling=vlm_pb2.SamplingParams(max_tokens=2))
        assert len(collect(stub.Generate(req))[0]) >= 1
        channel.close()


def _soak(tls_server, n: int) -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("vlm_soak", Path(__file__).parents[2] / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    srv, stub = tls_server
    clips = [_clip(1000 + i, width=48 + 2 * (i % 9), height=40 + 2 * (i % 5), seconds=1.0 + (i % 3) * 0.5)
             for i in range(n + 10)]
    for data in clips[:10]:  # warm-up: caches, pools and allocator reach their steady size
        collect(stub.Generate(_request(vlm_pb2.Video(data=data), max_tokens=3)))
    base = soak._settle(srv)
    for data in clips[10:]:
        collect(stub.Generate(_request(vlm_pb2.Video(data=data), max_tokens=3)))
    after = soak._settle(srv)
    cache = srv.server.runtime.engine.engine.runner.vision_cache
    assert after["kv_blocks_used"] == after["tracked_requests"] == after["streams_in_flight"] == 0, after
    assert cache.bytes <= VISION_CACHE
    assert after["rss_mb"] <= base["rss_mb"] * 1.05 + 32, (base, after)  # +32 MiB: allocator slack on small runs
    assert after["open_fds"] <= base["open_fds"] + 2, (base, after)


def test_soak_unique_videos_stays_within_budget(tls_server):
    _soak(tls_server, 50)


@pytest.mark.slow
def test_soak_200_unique_videos_stays_within_budget(tls_server):
    _soak(tls_server, 200)


def test_video_and_image_in_one_request(tls_server):
    _, stub = tls_server
    parts = [vlm_pb2.ContentPart(image=vlm_pb2.Image(data=png(40, 30, seed=5))),
             vlm_pb2.ContentPart(video=vlm_pb2.Video(data=_clip(4, fmt="webm"), mime_type="video/webm", fps=4.0,
                                                     max_frames=6)),
             vlm_pb2.ContentPart(text="compare them")]
    req = vlm_pb2.GenerateRequest(messages=[vlm_pb2.Message(role="user", content=parts)],
                                  sampling=vlm_pb2.SamplingParams(max_tokens=3))
    tokens, complete = collect(stub.Generate(req))
    assert len(tokens) == 3 and complete.usage.image_tokens > 0


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # "overly large repr" of clip bytes
def test_fuzzed_video_parts_get_documented_statuses(tls_server):
    """Random bytes, cut and flipped clips, odd mime types and wild sampling values as video parts: every answer is
    a success or INVALID_ARGUMENT / RESOURCE_EXHAUSTED, and the server stays idle and serving afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    srv, stub = tls_server
    good = [_clip(s, fmt=f) for s, f in ((40, "mp4"), (41, "webm"))]

    def damaged(data: bytes, cut: float, flip: int) -> bytes:
        out = bytearray(data[: max(1, int(len(data) * cut))])
        out[flip % len(out)] ^= 0xFF
        return bytes(out)

    data = st.one_of(st.binary(max_size=256), st.sampled_from(good),
                     st.builds(damaged, st.sampled_from(good), st.floats(0.05, 1.0), st.integers(0, 1 << 20)))
    video = st.builds(lambda d, mime, fps, mf: vlm_pb2.Video(data=d, mime_type=mime, **fps, **mf), data,
                      st.sampled_from(["", "video/mp4", "video/webm", "video/quicktime", "video/x-\u2603", "image/png"]),
                      st.one_of(st.just({}), st.builds(lambda f: {"fps": f}, st.floats(allow_nan=True, width=32))),
                      st.one_of(st.just({}), st.builds(lambda n: {"max_frames": n}, st.integers(-2, 1 << 20))))
    seen = {}

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(video)
    def run(v):
        try:
            collect(stub.Generate(_request(v, max_tokens=1)))
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        seen[code] = seen.get(code, 0) + 1
        assert code in {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, code

    run()
    assert seen.get("INVALID_ARGUMENT", 0) > 0
    assert wait_idle(srv.server.runtime, 5.0) is not None
    assert collect(stub.Generate(_request(vlm_pb2.Video(data=good[0]))))[0]
