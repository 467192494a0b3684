"""Incremental detokenization and finish rules (toy tokenizer: token 11 + 12 = 'é', 13 + 14 = '€', 15 = 'STOP')."""

from engine_helpers import EOS, ToyTokenizer

from vlm_service.engine.detokenizer import IncrementalDetokenizer, OutputState
from vlm_service.types import FinishReason, SamplingParams


def feed(state, tokens):
    steps = [state.append(t) for t in tokens]
    return "".join(s.text for s in steps), steps[-1]


def test_never_emits_a_partial_multibyte_char():
    d = IncrementalDetokenizer(ToyTokenizer())
    pieces = [d.push(t) for t in (3, 11, 12, 13, 14, 4)]
    assert pieces == ["d", "", "é", "", "€", "ee"]
    d.push(11)
    assert d.flush() == ""  # a dangling lead byte is dropped, never emitted


def test_stop_string_is_held_back_and_not_included():
    st = OutputState(ToyTokenizer(), SamplingParams(stop=("dSTO",)), (EOS,), 100)
    assert st.append(3).text == ""  # "d" could start "dSTO"
    text, last = feed(st, [15])  # "cSTOP": stop matched
    assert text == "" and last.finish == FinishReason.STOP_SEQUENCE and last.matched_stop == "dSTO"


def test_unresolved_stop_prefix_is_released():
    st = OutputState(ToyTokenizer(), SamplingParams(stop=("dSTO",)), (EOS,), 100)
    text, last = feed(st, [3, 4])
    assert text == "dee" and last.finish is None


def test_eos_min_tokens_ignore_eos_and_max_tokens():
    st = OutputState(ToyTokenizer(), SamplingParams(min_tokens=2), (EOS,), 10)
    assert st.banned_ids() == (EOS,)
    st.append(3)
    st.append(3)
    assert st.banned_ids() == ()
    assert st.append(EOS).finish == FinishReason.STOP
    st = OutputState(ToyTokenizer(), SamplingParams(ignore_eos=True, stop_token_ids=(16,)), (EOS,), 3)
    assert st.append(EOS).finish is None
    assert st.append(16).finish == FinishReason.STOP
    st = OutputState(ToyTokenizer(), SamplingParams(), (EOS,), 2)
    text, last = feed(st, [3, 11])
    assert last.finish == FinishReason.LENGTH and text == "d"


def test_stop_strings_wait_for_min_tokens():
    st = OutputState(ToyTokenizer(), SamplingParams(stop=("STOP",), min_tokens=3), (EOS,), 10)
    text, last = feed(st, [15, 3])
    assert last.finish is None and text == "STOPd"
    assert st.append(15).finish == FinishReason.STOP_SEQUENCE
