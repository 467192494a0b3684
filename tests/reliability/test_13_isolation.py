"""13. Isolation: a request whose values would break a batched step fails alone (INVALID_ARGUMENT naming the field,
or INTERNAL with a generic message); every bystander gets its exact greedy tokens; internal exception texts never
reach a client. The real server on loopback over real TLS (a throwaway CA made here)."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("cryptography")  # makes the throwaway PKI

import vlm_service.engine.engine as engine_module  # noqa: E402
from reliability_helpers import rel_config, wait_idle, wait_until  # noqa: E402
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc  # noqa: E402
from vlm_service.client import build_request  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.server.convert import field_violations  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402

LEAK = "index 151936 is out of bounds for dimension 1 with size 151936"
INTERNAL_WORDS = ("Error", "Traceback", "151936", "exception")
POISON_SEED = 987654321


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    pki = make_test_pki(tmp_path_factory.mktemp("pki13"))
    cfg = rel_config(tmp_path_factory.mktemp("state13"), tls=TLSConfig(cert=pki.server.cert, key=pki.server.key))
    with running_server(cfg, credentials=channel_credentials(pki.ca.cert), warmup=False) as srv:
        channel = srv.channel()
        yield srv, vlm_pb2_grpc.VisionLanguageServiceStub(channel)
        channel.close()


@pytest.fixture(scope="module")
def vocab(tls_server) -> int:
    return tls_server[0].server.runtime.engine.engine.model.spec.vocab_size


class Bystander(threading.Thread):
    """A greedy stream of exactly n tokens read on its own thread; `running` is set once its first chunk came."""

    def __init__(self, stub, rid: str, n: int):
        super().__init__(daemon=True)
        self.stub, self.request = stub, build_request("a bystander counts sheep", request_id=rid, max_tokens=n,
                                                      min_tokens=n)
        self.running, self.done = threading.Event(), threading.Event()
        self.tokens: list[int] = []
        self.complete = self.error = None

    def run(self):
        try:
            for resp in self.stub.Generate(self.request, timeout=120):
                if resp.HasField("chunk"):
                    self.tokens += resp.chunk.token_ids
                    self.running.set()
                else:
                    self.complete = resp.complete
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()
            self.running.set()


def alone_tokens(stub, n: int, cache={}) -> list[int]:  # noqa: B006 - a per-run cache of references
    if n not in cache:
        ref = Bystander(stub, f"alone-{n}", n)
        ref.run()
        assert ref.error is None and len(ref.tokens) == n
        cache[n] = ref.tokens
    return cache[n]


def send_poison(stub, sampling: vlm_pb2.SamplingParams, bystander: Bystander, rid: str):
    """Send a request with these sampling values; read it while the bystander runs, then leave. Returns
    (status name, details, violated fields, whether the bystander was still running when the poison's answer came)."""
    request = build_request("poison", request_id=rid)
    request.sampling.CopyFrom(sampling)
    stream = stub.Generate(request, timeout=60)
    try:
        for _ in stream:
            if bystander.done.is_set():
                stream.cancel()
        return "OK", "", [], None
    except grpc.RpcError as exc:
        overlapped = not bystander.done.is_set()
        if exc.code() == grpc.StatusCode.CANCELLED:
            return "OK", "", [], None
        from grpc_status import rpc_status
        return exc.code().name, exc.details() or "", field_violations(rpc_status.from_call(exc)), overlapped


def run_beside(stub, sampling: vlm_pb2.SamplingParams, tag: str, n: int = 16):
    """The poison sent while a bystander of n tokens streams; returns the poison's outcome after the bystander
    was checked against its tokens alone."""
    expected = alone_tokens(stub, n)
    bystander = Bystander(stub, f"by-{tag}", n)
    bystander.start()
    assert bystander.running.wait(60)
    outcome = send_poison(stub, sampling, bystander, f"poison-{tag}")
    bystander.join(120)
    assert bystander.error is None, f"the bystander failed: {bystander.error}"
    assert bystander.tokens == expected and bystander.complete.finish_reason == vlm_pb2.LENGTH
    return outcome


def assert_safe_refusal(outcome):
    code, details, fields, _ = outcome
    if code == "OK":
        return
    assert code == "INVALID_ARGUMENT", (code, details)
    assert fields and all(f.startswith("sampling.") for f in fields), fields
    assert len(details) < 160 and not any(w in details for w in INTERNAL_WORDS), details


# ---- named poisons: each broke the batched step of everyone before --------------------------------------------

POISONS = {
    "subnormal_temperature": lambda v: vlm_pb2.SamplingParams(temperature=1e-40, max_tokens=4),
    "tiny_temperature_seeded": lambda v: vlm_pb2.SamplingParams(temperature=1e-30, seed=3, max_tokens=4),
    "stop_id_past_vocab_with_min_tokens": lambda v: vlm_pb2.SamplingParams(stop_token_ids=[v + 7], min_tokens=3,
                                                                           max_tokens=4),
    "huge_repetition_penalty": lambda v: vlm_pb2.SamplingParams(repetition_penalty=3e38, temperature=1.0,
                                                                max_tokens=4),
    "tiny_repetition_penalty": lambda v: vlm_pb2.SamplingParams(repetition_penalty=1e-38, temperature=1.0,
                                                                max_tokens=4),
}


@pytest.mark.parametrize("name", sorted(POISONS))
def test_named_poison_is_refused_naming_its_field_and_the_bystander_is_exact(tls_server, vocab, name):
    _, stub = tls_server
    code, details, fields, _ = outcome = run_beside(stub, POISONS[name](vocab), name)
    assert code == "INVALID_ARGUMENT", outcome
    assert_safe_refusal(outcome)


_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_i32 = st.integers(-(2 ** 31), 2 ** 31 - 1)


def _poisons(vocab: int) -> dict:
    """Per field: values of every kind (in range or not); nasty float32s (nan, inf, subnormals) come often."""
    return {
        "temperature": _f32 | st.sampled_from([1e-45, 1e-40, 1e-30, 1e-6, 1e-5, 3e38]),
        "top_p": _f32, "min_p": _f32, "repetition_penalty": _f32 | st.sampled_from([1e-38, 1e-3, 1e3, 3e38]),
        "top_k": _i32 | st.sampled_from([vocab - 1, vocab, vocab + 1]),
        "seed": st.integers(0, 2 ** 64 - 1), "max_tokens": _i32, "min_tokens": _i32, "top_logprobs": _i32,
        "stop_token_ids": st.lists(_i32 | st.integers(vocab - 2, vocab + 2), min_size=1, max_size=3),
    }


_SANE = {"temperature": st.sampled_from([0.0, 0.7, 1.0]), "top_p": st.sampled_from([1.0, 0.9]),
         "min_p": st.sampled_from([0.0, 0.05]), "repetition_penalty": st.sampled_from([1.0, 1.2]),
         "top_k": st.sampled_from([0, 5, 50]), "max_tokens": st.integers(3, 6), "min_tokens": st.integers(1, 3),
         "top_logprobs": st.integers(0, 3)}
# the fields whose bad values broke everyone's step before (subnormal temperatures; stop ids past the vocab while
# min_tokens bans them) are drawn more often
_FIELDS = ["temperature"] * 3 + ["stop_token_ids"] * 3 + ["top_p", "min_p", "repetition_penalty", "top_k", "seed",
                                                           "max_tokens", "min_tokens", "top_logprobs"]


@st.composite
def poison_sampling(draw, vocab: int) -> vlm_pb2.SamplingParams:
    """One field drawn from anything (the poison), the others from sane values, so the poison is what decides."""
    target = draw(st.sampled_from(_FIELDS))
    values = {name: draw(strategy) for name, strategy in _SANE.items()}
    values[target] = draw(_poisons(vocab)[target])
    stop_ids = values.pop("stop_token_ids", [])
    sp = vlm_pb2.SamplingParams(**values, logprobs=draw(st.booleans()), ignore_eos=draw(st.booleans()))
    sp.stop_token_ids.extend(stop_ids)
    return sp


_example = iter(range(10 ** 6))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_sampling_values_fail_alone_property(tls_server, vocab, data):
    """Property over the sampling fields: the poison is refused (INVALID_ARGUMENT naming a sampling field, short,
    no internal text) or runs; the bystander streaming beside it gets exactly its tokens alone."""
    _, stub = tls_server
    sampling = data.draw(poison_sampling(vocab))
    assert_safe_refusal(run_beside(stub, sampling, f"h{next(_example)}"))


# ---- the second line: a step that still raises --------------------------------------------------------------

def test_a_row_that_breaks_the_step_fails_alone_with_a_generic_internal(tls_server, monkeypatch, caplog):
    """A kernel raising for one request's row (patched in; the server runs in this process): only that request
    fails, with INTERNAL and a generic message (the IndexError text stays in the log); the bystander batched with
    it gets its exact tokens."""
    srv, stub = tls_server
    expected = alone_tokens(stub, 48)
    real = engine_module.sample_async

    def sample_async(logits, rows):
        if any(r.params.seed == POISON_SEED for r in rows):
            raise IndexError(LEAK)
        return real(logits, rows)

    monkeypatch.setattr(engine_module, "sample_async", sample_async)
    caplog.set_level(logging.INFO, logger="vlm_service.requests")
    bystander = Bystander(stub, "by-kernel", 48)
    bystander.start()
    assert bystander.running.wait(60)
    code, details, _, overlapped = send_poison(
        stub, vlm_pb2.SamplingParams(temperature=0.7, seed=POISON_SEED, max_tokens=8), bystander, "kernel-poison")
    bystander.join(120)
    assert code == "INTERNAL" and overlapped, (code, details, overlapped)
    assert not any(w in details for w in INTERNAL_WORDS), details
    assert bystander.error is None and bystander.tokens == expected
    assert LEAK in caplog.text, "the detail is in the server log"
    assert wait_until(lambda: _status_logged(caplog, "kernel-poison") == "INTERNAL", 2.0)
    assert wait_idle(srv.server.runtime) is not None


def _status_logged(caplog, request_id: str) -> str | None:
    for r in caplog.records:
        if r.name == "vlm_service.requests" and r.fields["request_id"] == request_id:
            return r.fields["status"]
    return None


def test_an_unexpected_server_error_is_internal_for_client_and_log(tls_server, monkeypatch, caplog):
    """Any exception no check foresaw: the client gets INTERNAL (not UNKNOWN) with a generic message, the request
    log says INTERNAL too, and the next request is served."""
    srv, stub = tls_server
    processor = srv.server.runtime.processor
    real = processor.process

    def process(messages):
        if any("boom" in str(p) for m in messages for p in m.content):
            raise RuntimeError(f"secret internal state {LEAK}")
        return real(messages)

    monkeypatch.setattr(processor, "process", process)
    caplog.set_level(logging.INFO, logger="vlm_service.requests")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(build_request("boom", request_id="unexpected", max_tokens=2), timeout=30))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details() and not any(w in err.value.details() for w in INTERNAL_WORDS)
    assert wait_until(lambda: _status_logged(caplog, "unexpected") == "INTERNAL", 2.0)
    assert len(list(stub.Generate(build_request("fine", max_tokens=2, min_tokens=2), timeout=30))) == 3
