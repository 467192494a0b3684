"""Item 14: the README's AsyncClient against the real server: streaming generate, generate_text, info, abort,
cancel, and a user error as grpc.aio.AioRpcError."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.first_contact.fc_helpers import png
from vlm_service.client import AsyncClient, build_request
from vlm_service.config import DEFAULT_MAX_TOKENS


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def test_generate_text_and_info(served):
    async def go():
        async with AsyncClient(served.target, state_dir=served.state_dir) as client:
            info = await client.info()
            text, complete = await client.generate_text("describe", images=[png(64, 48)], max_tokens=5)
            return info, text, complete

    info, text, complete = _run(go())
    assert info.model_id == "demo" and info.max_context > 0
    assert complete.usage.completion_tokens <= 5 and complete.usage.image_tokens > 0
    assert isinstance(text, str)


def test_streaming_ends_with_one_complete_and_default_max_tokens(served):
    async def go():
        async with AsyncClient(served.target, state_dir=served.state_dir) as client:
            request = build_request("count", ignore_eos=True)
            return [r async for r in client.generate(request)]

    responses = _run(go())
    assert [r.HasField("complete") for r in responses].count(True) == 1 and responses[-1].HasField("complete")
    assert responses[-1].complete.usage.completion_tokens == DEFAULT_MAX_TOKENS


def test_abort_and_cancel(served):
    async def go():
        async with AsyncClient(served.target, state_dir=served.state_dir) as client:
            call = client.generate(build_request("go", request_id="async-abort", max_tokens=5000, ignore_eos=True))
            first = await call.read()
            found = await client.abort("async-abort")
            rest = []
            while (resp := await call.read()) is not grpc.aio.EOF:
                rest.append(resp)
            missing = await client.abort("async-never-started")
            second = client.generate(build_request("go", max_tokens=5000, ignore_eos=True))
            await second.read()
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second.read()
            return first, found, rest, missing

    first, found, rest, missing = _run(go())
    assert first.HasField("chunk") and found and not missing
    assert rest[-1].HasField("complete")


def test_user_error_is_an_aio_rpc_error(served):
    async def go():
        async with AsyncClient(served.target, state_dir=served.state_dir) as client:
            await client.generate_text("x", max_tokens=2, temperature=-1.0)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampling.temperature" in err.value.details()
