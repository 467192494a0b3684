"""Fault isolation (DESIGN.md reliability 13) inside LLMEngine: a request whose values would break the batched step
is refused up front (validate.py), and one whose step still raises fails alone while every other request gets the
exact tokens it gets when it runs by itself."""

import math

import pytest
from engine_helpers import VOCAB, ToyTokenizer, ToyVLM, build_input, image, oracle_greedy, run_to_completion, text
from hypothesis import given, settings
from hypothesis import strategies as st

import vlm_service.engine.engine as engine_module
from vlm_service.config import EngineConfig
from vlm_service.engine.engine import LLMEngine
from vlm_service.engine.isolation import GENERIC_MESSAGE, Failed
from vlm_service.errors import InternalError, InvalidInput
from vlm_service.types import FinishReason, SamplingParams

BYSTANDER = build_input(text(5, 6))
BYSTANDER_SP = SamplingParams(max_tokens=8, ignore_eos=True)
POISON_SEED = 4242
LEAK = "index 151936 is out of bounds for dimension 1 with size 151936"


@pytest.fixture(scope="module")
def model():
    return ToyVLM()


def engine(model, **kw):
    cfg = dict(block_size=4, num_blocks=64, max_num_seqs=16, max_batched_tokens=256, max_model_len=64)
    cfg.update(kw)
    return LLMEngine(model, ToyTokenizer(), EngineConfig(**cfg), "cpu")


def bystanders():
    """Greedy, seeded-random, with an image, and with logprobs + repetition penalty: what a step mixes."""
    return [("greedy", BYSTANDER, BYSTANDER_SP),
            ("seeded", build_input(text(6, 4)), SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=9,
                                                               ignore_eos=True)),
            ("image", build_input(text(7, 3), image(3, 4, 4), text(8, 2)), SamplingParams(max_tokens=7, min_tokens=7)),
            ("lp", build_input(text(9, 5)), SamplingParams(max_tokens=6, logprobs=True, top_logprobs=2,
                                                           repetition_penalty=1.3, ignore_eos=True))]


def alone(model, rid, inp, sp):
    return run_to_completion(engine(model), [(rid, inp, sp)])[rid]


# ---- first line: validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, values", [
    ("temperature", dict(temperature=1e-40)),  # a float32 subnormal: logits / t = inf, softmax nan
    ("temperature", dict(temperature=math.nan)),
    ("temperature", dict(temperature=math.inf)),
    ("top_p", dict(top_p=math.nan)),
    ("min_p", dict(min_p=math.nan)),
    ("top_k", dict(top_k=2 ** 70)),
    ("repetition_penalty", dict(repetition_penalty=math.inf)),
    ("repetition_penalty", dict(repetition_penalty=1e-30)),
    ("stop_token_ids[1]", dict(stop_token_ids=(3, VOCAB + 5), min_tokens=2)),
    ("stop_token_ids[0]", dict(stop_token_ids=(-1,))),
    ("seed", dict(seed=2 ** 64)),
    ("max_tokens", dict(max_tokens=0)),
    ("min_tokens", dict(min_tokens=-1)),
])
def test_values_the_step_cannot_take_are_refused_naming_the_field(model, field, values):
    with pytest.raises(InvalidInput) as err:
        engine(model).add("p", BYSTANDER, SamplingParams(**values))
    assert err.value.field == f"sampling.{field}" and str(err.value).startswith(f"sampling.{field} ")
    assert len(str(err.value)) < 120


def test_a_refused_value_is_quoted_short(model):
    with pytest.raises(InvalidInput) as err:
        engine(model).add("p", BYSTANDER, SamplingParams(top_k=10 ** 300))
    assert len(str(err.value)) < 120 and "..." in str(err.value)


_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_big = st.integers(-2 ** 70, 2 ** 70)
SAMPLING = st.fixed_dictionaries({
    "temperature": _float32 | st.sampled_from([0.0, 1e-45, 1e-38, 1e-6, 1e-5, 0.7, 3e38]),
    "top_p": _float32 | st.sampled_from([1.0, 0.5, 1e-45]),
    "top_k": _big | st.sampled_from([0, 1, 5, VOCAB - 1, VOCAB, VOCAB + 1]),
    "min_p": _float32 | st.sampled_from([0.0, 0.3, 1.0]),
    "repetition_penalty": _float32 | st.sampled_from([1.0, 1.3, 1e-2, 1e2]),
    "seed": st.none() | _big,
    "max_tokens": st.none() | st.integers(-3, 10) | st.just(2 ** 40),
    "min_tokens": st.integers(-3, 12) | st.just(2 ** 40),
    "stop_token_ids": st.lists(st.integers(-3, VOCAB + 3) | _big, max_size=4).map(tuple),
    "ignore_eos": st.booleans(),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(-2, 25),
})


@settings(max_examples=150, deadline=None)
@given(values=SAMPLING)
def test_any_sampling_values_are_refused_or_harmless(model, values):
    """Property: whatever the sampling fields hold, the request is refused with InvalidInput naming a sampling
    field, or it runs (never a step failure: validation covers the kernels' ranges) and the bystander beside it gets
    its exact tokens."""
    eng = engine(model)
    try:
        eng.add("poison", build_input(text(11, 4)), SamplingParams(**values))
    except InvalidInput as exc:
        assert exc.field and exc.field.startswith("sampling.") and len(str(exc)) < 120, exc
    eng.add("bystander", BYSTANDER, BYSTANDER_SP)
    res = drain(eng)
    assert res["bystander"][0] == REFERENCE(model)
    assert not any(isinstance(f, Failed) for _, f in res.values()), res
    assert eng.block_manager.num_used_blocks == 0 and not eng.requests


def drain(eng) -> dict:
    """Step until idle: request id -> (token ids, its Finished or Failed), for every id the engine emitted."""
    out: dict = {}
    while eng.has_work():
        for o in eng.step():
            tokens, _ = out.setdefault(o.request_id, ([], None))
            if hasattr(o, "token_ids"):
                tokens += o.token_ids
            else:
                out[o.request_id] = (tokens, o)
    return out


_reference: dict = {}


def REFERENCE(model):  # noqa: N802 - the bystander's tokens when it runs alone, computed once
    if "tokens" not in _reference:
        _reference["tokens"] = alone(model, "bystander", BYSTANDER, BYSTANDER_SP)[0]
        assert _reference["tokens"] == oracle_greedy(model, BYSTANDER, 8)
    return _reference["tokens"]


# ---- second line: a step that still raises ---------------------------------------------------------------------

def _raise_for_poison_rows(real, after: int):
    """sample_async that raises (as an out-of-range index would) whenever the batch holds the poison request's row
    once it has generated `after` tokens, so the failure comes mid-decode with a token still in flight."""
    def sample_async(logits, rows):
        if any(r.params.seed == POISON_SEED and r.position >= after for r in rows):
            raise IndexError(LEAK)
        return real(logits, rows)
    return sample_async


@pytest.mark.parametrize("overlap", [True, False])
def test_a_row_whose_sampling_raises_fails_alone(model, monkeypatch, overlap):
    expected = {rid: alone(model, rid, inp, sp) for rid, inp, sp in bystanders()}
    poison = build_input(text(12, 5))
    monkeypatch.setattr(engine_module, "sample_async", _raise_for_poison_rows(engine_module.sample_async, 5 + 3))
    eng = engine(model, overlap_scheduling=overlap)
    sp = SamplingParams(temperature=0.5, seed=POISON_SEED, max_tokens=20, ignore_eos=True)
    res = run_to_completion(eng, bystanders() + [("poison", poison, sp)])
    failed = res["poison"][2]
    assert isinstance(failed, Failed) and isinstance(failed.error, InternalError)
    assert str(failed.error) == GENERIC_MESSAGE and "151936" not in str(failed.error)
    # it streamed the tokens read back before the failing step (overlapped: the one still in flight is dropped)
    assert len(res["poison"][0]) == (2 if overlap else 3)
    for rid, (tokens, txt, fin) in expected.items():
        assert res[rid][0] == tokens and res[rid][1] == txt, rid
        assert res[rid][2].finish_reason == fin.finish_reason and res[rid][2].usage == fin.usage, rid
    assert eng.block_manager.num_used_blocks == 0 and not eng.requests and not eng.has_work()


def test_a_chunk_whose_forward_raises_fails_alone(model):
    """A prompt holding an id past the embedding table (the model's own IndexError, no patching) breaks the
    forward of any batch it is in; the bystanders prefilled and decoded in the same steps are untouched."""
    expected = {rid: alone(model, rid, inp, sp) for rid, inp, sp in bystanders()}
    eng = engine(model)
    bad = build_input(text(13, 3) + [VOCAB + 1000] + text(14, 2))
    reqs = bystanders()
    res = run_to_completion(eng, reqs[:2] + [("bad", bad, SamplingParams(max_tokens=4))] + reqs[2:])
    assert isinstance(res["bad"][2], Failed) and str(res["bad"][2].error) == GENERIC_MESSAGE
    for rid, (tokens, _, fin) in expected.items():
        assert res[rid][0] == tokens and res[rid][2].finish_reason == fin.finish_reason, rid
    assert eng.block_manager.num_used_blocks == 0 and not eng.requests


def test_a_failing_step_leaves_no_half_advanced_state(model, monkeypatch):
    """The poison fails in the very first step it shares with a bystander mid-decode; the bystander's sequence is
    advanced exactly once per step (no skipped or repeated token) and its KV blocks stay its own."""
    eng = engine(model)
    eng.add("greedy", BYSTANDER, SamplingParams(max_tokens=12, ignore_eos=True))
    for _ in range(3):
        eng.step()
    seq = eng.requests["greedy"].seq
    before = (len(seq.output_ids), seq.num_computed_tokens, list(seq.block_table))
    monkeypatch.setattr(engine_module, "sample_async", _raise_for_poison_rows(engine_module.sample_async, 0))
    eng.add("poison", build_input(text(15, 4)), SamplingParams(temperature=1.0, seed=POISON_SEED, max_tokens=5))
    outs = eng.step()
    assert [o.request_id for o in outs if isinstance(o, Failed)] == ["poison"]
    assert len(seq.output_ids) == before[0] + 1 and seq.num_computed_tokens == before[1] + 1
    assert seq.block_table[:len(before[2])] == before[2]
    drain(eng)
    assert eng.block_manager.num_used_blocks == 0 and not eng.requests
    assert seq.output_ids == alone(model, "g", BYSTANDER, SamplingParams(max_tokens=12, ignore_eos=True))[0]
    assert eng.abort("poison") is None


def test_a_batch_that_fails_whole_but_not_in_halves_serves_everyone(model, monkeypatch):
    """A failure of the batch as such (e.g. out of memory for its size) is not pinned on any request."""
    real = engine_module.sample_async

    def sample_async(logits, rows):
        if len(rows) >= 4:
            raise RuntimeError("out of memory")
        return real(logits, rows)

    expected = {rid: alone(model, rid, inp, sp)[0] for rid, inp, sp in bystanders()}
    monkeypatch.setattr(engine_module, "sample_async", sample_async)
    res = run_to_completion(engine(model), bystanders())
    assert {rid: r[0] for rid, r in res.items()} == expected
    assert all(r[2].finish_reason in (FinishReason.LENGTH, FinishReason.STOP) for r in res.values())


def test_a_failed_read_back_fails_that_launch_only_and_the_engine_serves_on(model, monkeypatch):
    """A read-back that raises (on CUDA: an asynchronous device fault, which no re-run can pin on one row) fails
    the rows of that launch; the engine keeps no trace of them and serves the next request exactly."""
    from vlm_service.engine.sampler import PendingSample

    real, calls = PendingSample.result, []

    def result(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self)

    monkeypatch.setattr(PendingSample, "result", result)
    eng = engine(model)
    eng.add("a", BYSTANDER, SamplingParams(max_tokens=8, ignore_eos=True))
    tokens, failed = drain(eng)["a"]
    assert isinstance(failed, Failed) and str(failed.error) == GENERIC_MESSAGE and len(tokens) == 2
    assert eng.block_manager.num_used_blocks == 0 and not eng.requests and not eng.has_work()
    monkeypatch.undo()
    eng.add("b", BYSTANDER, BYSTANDER_SP)
    assert drain(eng)["b"][0] == REFERENCE(model)


@pytest.mark.gpu
@pytest.mark.parametrize("overlap", [True, False])
def test_isolation_on_cuda_keeps_bystanders_exact(monkeypatch, overlap):
    """The same on the GPU: pinned read-back of the re-sampled groups (isolation.PendingGroups), CUDA events."""
    cuda_model = ToyVLM().to("cuda")

    def cuda_engine(**kw):
        return engine(cuda_model, overlap_scheduling=overlap, cuda_graphs=False, **kw)

    expected = {rid: run_to_completion(cuda_engine(), [(rid, inp, sp)])[rid][0] for rid, inp, sp in bystanders()}
    monkeypatch.setattr(engine_module, "sample_async", _raise_for_poison_rows(engine_module.sample_async, 5 + 3))
    eng = cuda_engine()
    sp = SamplingParams(temperature=0.5, seed=POISON_SEED, max_tokens=20, ignore_eos=True)
    res = run_to_completion(eng, bystanders() + [("poison", build_input(text(12, 5)), sp)])
    assert isinstance(res["poison"][2], Failed)
    assert {rid: res[rid][0] for rid in expected} == expected
    assert eng.block_manager.num_used_blocks == 0 and not eng.requests
