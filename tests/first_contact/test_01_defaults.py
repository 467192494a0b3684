"""Item 1: a request that sets no max_tokens gets a finite default (256) from the server, the Python client and the
CLI alike, and a default deadline; the README's Python snippet returns promptly on the demo model."""

from __future__ import annotations

import grpc

from tests.first_contact.fc_helpers import png
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.cli import build_parser
from vlm_service.client import Client, build_request
from vlm_service.config import DEFAULT_MAX_TOKENS, LimitsConfig
from vlm_service.server.options import config_from_args


def test_the_three_defaults_agree():
    serve = config_from_args(build_parser().parse_args(["serve"]))
    generate = build_parser().parse_args(["generate", "x"])
    assert DEFAULT_MAX_TOKENS == 256
    assert serve.server.limits.default_max_tokens == DEFAULT_MAX_TOKENS == generate.max_tokens
    assert build_request("x").sampling.max_tokens == DEFAULT_MAX_TOKENS
    assert serve.server.limits.default_deadline_s == LimitsConfig().default_deadline_s == generate.timeout > 0


def test_server_applies_its_default_when_the_request_sets_none(served):
    request = vlm_pb2.GenerateRequest(sampling=vlm_pb2.SamplingParams(ignore_eos=True))
    request.messages.add(role="user").content.add(text="count")
    assert not request.sampling.HasField("max_tokens")
    with grpc.secure_channel(served.target, served.credentials()) as channel:
        responses = list(vlm_pb2_grpc.VisionLanguageServiceStub(channel).Generate(request, timeout=120))
    complete = responses[-1].complete
    assert complete.usage.completion_tokens == DEFAULT_MAX_TOKENS
    assert complete.finish_reason == vlm_pb2.LENGTH


def test_readme_python_snippet_returns(served):
    with Client(served.target, state_dir=served.state_dir) as client:
        text, complete = client.generate_text("describe", images=[png(64, 48)], timeout=120)
    assert 0 < complete.usage.completion_tokens <= DEFAULT_MAX_TOKENS and complete.usage.image_tokens > 0
