"""The decode-memory budget (processor/budget.py) as pure bookkeeping: FIFO grants, waits that time out or are
cancelled give their bytes back, a request that could never fit is refused at once."""

from __future__ import annotations

import asyncio

import pytest

from vlm_service.config import LimitsConfig
from vlm_service.errors import InvalidInput, Overloaded
from vlm_service.processor.budget import DecodeBudget, RequestCost, decode_bytes


def _run(coro):
    return asyncio.run(coro)


def test_holders_never_exceed_capacity_and_are_served_in_order():
    budget, order, peak = DecodeBudget(100), [], [0]

    async def job(name, nbytes):
        async with budget.hold(nbytes):
            peak[0] = max(peak[0], budget.used)
            order.append(name)
            await asyncio.sleep(0.01)

    async def main():
        await asyncio.gather(*(job(n, b) for n, b in [("a", 60), ("b", 60), ("c", 30), ("d", 100), ("e", 10)]))

    _run(main())
    assert peak[0] <= 100 and budget.used == 0
    assert order == ["a", "b", "c", "d", "e"]  # c fits beside b, but never overtakes it; e waits behind d


def test_never_fits_is_resource_exhausted_at_once():
    async def main():
        async with DecodeBudget(100).hold(101):
            pass

    with pytest.raises(Overloaded) as err:
        _run(main())
    assert err.value.field == "messages" and "decode budget" in str(err.value)


def test_a_wait_that_times_out_gives_way_and_leaves_no_bytes():
    budget = DecodeBudget(100, max_wait_s=0.05)

    async def main():
        async with budget.hold(80):
            with pytest.raises(Overloaded) as err:
                async with budget.hold(50):
                    pass
            assert err.value.field == "messages" and budget.used == 80
            async with budget.hold(20):  # the timed-out waiter no longer blocks the queue
                assert budget.used == 100
        assert budget.used == 0

    _run(main())


def test_a_cancelled_waiter_leaves_the_queue():
    budget = DecodeBudget(100)

    async def main():
        async with budget.hold(100):
            waiter = asyncio.ensure_future(budget.hold(10).__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        assert budget.used == 0
        async with budget.hold(100):
            assert budget.used == 100

    _run(main())


def test_unlimited_budget_and_estimates():
    async def main():
        async with DecodeBudget(0).hold(1 << 40):
            pass

    _run(main())
    assert decode_bytes(6000, 6000, 3, 1 << 20) > 6000 * 6000 * 9  # at least the frame, its copy and the RGB one
    biggest = decode_bytes(40_000_000 // 5000, 5000, 4, 16_777_216)  # default max_image_pixels, RGBA, Qwen3-VL max
    assert biggest < LimitsConfig().max_decode_memory_bytes  # any image the defaults accept can be decoded
    with pytest.raises(InvalidInput) as err:
        RequestCost(images=8, pixels=8 * 36_000_000).check_pixels(80_000_000)
    assert err.value.field == "messages"
    RequestCost(images=2, pixels=72_000_000).check_pixels(80_000_000)
