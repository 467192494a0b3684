"""auto: sdpa on CPU, one decision per shape bucket, the fastest measured candidate wins, failures are skipped."""

import logging

import pytest
import torch
from _vit_reference import random_qkv

import vit_backends.auto as auto_mod
from vit_backends import create
from vit_backends.auto import AutoAttention, shape_bucket
from vit_backends.base import ViTAttention
from vit_backends.sdpa import SdpaAttention


class Fake(ViTAttention):
    """A candidate that counts calls and returns a marker value."""

    def __init__(self, name, value, fail=False, dtypes=(torch.float32,)):
        self.name, self.value, self.fail, self.dtypes, self.calls = name, value, fail, dtypes, 0

    def supports(self, device, dtype, head_dim):
        return dtype in self.dtypes

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        self.calls += 1
        if self.fail:
            raise RuntimeError("no kernel for this shape")
        return torch.full_like(q, self.value)


def test_auto_on_cpu_is_sdpa_and_cached(monkeypatch, caplog):
    auto = create("auto")
    resolved = []
    real = auto._resolve
    monkeypatch.setattr(auto, "_resolve", lambda *a: resolved.append(a[0]) or real(*a))
    q, k, v, cu, max_len = random_qkv([64, 64, 7], 4, 80)
    with caplog.at_level(logging.INFO, logger="vit_backends.auto"):
        out = auto(q, k, v, cu, max_len)
        q2, k2, v2, cu2, max2 = random_qkv([60, 64, 5], 4, 80, seed=1)  # same bucket
        auto(q2, k2, v2, cu2, max2)
    torch.testing.assert_close(out, SdpaAttention()(q, k, v, cu, max_len))
    assert len(resolved) == 1 and list(auto.choices().values()) == ["sdpa"]
    assert sum("auto ViT attention" in r.message for r in caplog.records) == 1
    q3, k3, v3, cu3, max3 = random_qkv([600], 4, 80)  # another bucket
    auto(q3, k3, v3, cu3, max3)
    assert len(resolved) == 2 and len(auto.choices()) == 2


def test_bucket_rounds_tokens_seqlen_segments_to_powers_of_two():
    q = torch.empty(1000, 16, 80, dtype=torch.bfloat16)
    bucket = shape_bucket(q, torch.zeros(6, dtype=torch.int32), 300)
    assert bucket[1:] == ("bfloat16", 16, 80, 1024, 512, 8)
    assert str(bucket) == "cpu bfloat16 H=16 D=80 T<=1024 L<=512 S<=8"


def _measuring(monkeypatch, timings):
    """Make auto measure on CPU, with fake timings (each candidate still runs once, as in time_us)."""
    def fake_time_us(backend, args, reps):
        backend.forward(*args)
        return timings[backend.name]

    monkeypatch.setattr(AutoAttention, "_should_measure", staticmethod(lambda device, n: True))
    monkeypatch.setattr(auto_mod, "time_us", fake_time_us)


def test_fastest_candidate_wins_and_is_reused(monkeypatch):
    fast, slow = Fake("fast", 1.0), Fake("slow", 2.0)
    _measuring(monkeypatch, {"fast": 10.0, "slow": 30.0})
    auto = AutoAttention({"slow": lambda: slow, "fast": lambda: fast})
    q, k, v, cu, max_len = random_qkv([8, 8], 2, 64)
    assert torch.all(auto(q, k, v, cu, max_len) == 1.0)
    assert torch.all(auto(q, k, v, cu, max_len) == 1.0)
    assert (slow.calls, fast.calls) == (1, 3)  # measured once each, then only the winner runs
    assert list(auto.choices().values()) == ["fast"]
    assert list(auto.timings().values()) == [{"slow": 30.0, "fast": 10.0}]


def test_failing_or_unsupported_candidates_are_skipped(monkeypatch):
    broken, other_dtype, ok = Fake("broken", 1.0, fail=True), Fake("bf16_only", 2.0, dtypes=()), Fake("ok", 3.0)

    def missing():
        raise ImportError("fa3_fwd_interface missing")

    _measuring(monkeypatch, {"broken": 1.0, "bf16_only": 1.0, "ok": 5.0})
    auto = AutoAttention({"missing": missing, "broken": lambda: broken, "bf16_only": lambda: other_dtype,
                          "ok": lambda: ok})
    q, k, v, cu, max_len = random_qkv([8], 2, 64)
    assert torch.all(auto(q, k, v, cu, max_len) == 3.0)
    assert list(auto.choices().values()) == ["ok"] and other_dtype.calls == 0


def test_no_supporting_candidate_is_a_clear_error():
    auto = AutoAttention({"bf16_only": lambda: Fake("bf16_only", 1.0, dtypes=())})
    q, k, v, cu, max_len = random_qkv([8], 2, 64)
    with pytest.raises(RuntimeError, match="no ViT attention backend supports"):
        auto(q, k, v, cu, max_len)


class _Clock:
    """A virtual device clock standing in for CUDA events: each fake call advances it by its cost."""

    def __init__(self):
        self.now_us = 0.0
        clock = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = clock.now_us

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return (other.t - self.t) / 1e3  # ms, like torch.cuda.Event

        self.Event = Event


class Timed(Fake):
    """A candidate whose calls cost `costs_us[i]` on the virtual clock (the last cost repeats)."""

    def __init__(self, name, clock, costs_us):
        super().__init__(name, 0.0)
        self.clock, self.costs = clock, list(costs_us)

    def forward(self, q, k, v, cu_seqlens, max_seqlen):
        self.clock.now_us += self.costs[min(self.calls, len(self.costs) - 1)]
        return super().forward(q, k, v, cu_seqlens, max_seqlen)


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(torch.cuda, "Event", c.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    return c


@pytest.mark.parametrize("cost_us, inner", [(10.0, auto_mod.MAX_INNER), (1000.0, auto_mod.MIN_INNER), (50.0, 9)])
def test_time_us_loops_adapt_to_the_call_cost(clock, cost_us, inner):
    backend = Timed("b", clock, [5000.0, cost_us])  # a slow first call (graph build) is never timed
    args = random_qkv([8], 1, 64)
    assert auto_mod.time_us(backend, args, reps=3) == pytest.approx(cost_us)
    assert backend.calls == 1 + 1 + 3 * inner  # untimed, sizing call, 3 loops


def test_time_us_takes_the_best_loop(clock):
    # a jittery loop (one call 3x slower) must not decide: the best loop's per-call time is reported
    backend = Timed("b", clock, [100.0, 10.0] + [30.0] + [10.0] * 100)
    args = random_qkv([8], 1, 64)
    samples = auto_mod.loop_times_us(backend, args, reps=3, inner=5)
    assert samples[0] == pytest.approx(14.0) and min(samples) == pytest.approx(10.0)
    assert auto_mod.time_us(Timed("c", clock, [100.0, 10.0, 30.0] + [10.0] * 100), args, 3, 5) == pytest.approx(10.0)


def test_time_us_prefers_graph_replays_and_falls_back_to_loops(clock, monkeypatch):
    args = random_qkv([8], 1, 64)
    monkeypatch.setattr(auto_mod, "graph_times_us", lambda backend, a, reps: [7.0, 5.0, 6.0])
    backend = Timed("g", clock, [10.0])
    assert auto_mod.time_us(backend, args, reps=3) == 5.0 and backend.calls == 0  # device time, no eager loops

    def not_capturable(backend, a, reps):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(auto_mod, "graph_times_us", not_capturable)
    assert auto_mod.time_us(Timed("l", clock, [40.0]), args, reps=3) == pytest.approx(40.0)
