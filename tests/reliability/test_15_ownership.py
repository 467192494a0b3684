"""15. Ownership under mTLS: only the identity (client certificate) that started a request can abort it or learn that
it is in flight; an operator identity (--operator-identity) can abort anyone's. Two client certificates and an
operator certificate are made by the test, all signed by the server's client CA."""

from __future__ import annotations

import threading

import grpc
import pytest

pytest.importorskip("cryptography")  # makes the throwaway PKI

from reliability_helpers import collect, rel_config, wait_idle  # noqa: E402
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc  # noqa: E402
from vlm_service.client import build_request  # noqa: E402
from vlm_service.config import TLSConfig  # noqa: E402
from vlm_service.server.pki import make_leaf  # noqa: E402
from tests.server_harness import make_test_pki, running_server  # noqa: E402
from vlm_service.server.tls import channel_credentials  # noqa: E402

LONG = {"max_tokens": 900, "min_tokens": 900, "ignore_eos": True}


@pytest.fixture(scope="module")
def mtls(state_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki-own")
    pki = make_test_pki(folder)
    certs = {who: make_leaf(pki.ca, folder / who, who, client=True) for who in ("alice", "bob", "ops")}
    creds = {who: channel_credentials(pki.ca.cert, kp.cert, kp.key) for who, kp in certs.items()}
    tls = TLSConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)
    cfg = rel_config(state_dir, tls=tls, operator_identity="someone-else, ops")
    with running_server(cfg, credentials=creds["alice"], warmup=False) as srv:
        stubs = {}
        channels = [srv.channel(c) for c in creds.values()]
        for who, ch in zip(creds, channels):
            stubs[who] = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
        yield srv, stubs
        for ch in channels:
            ch.close()


class _Stream:
    """A long Generate read on a thread; `first` is set at the first chunk."""

    def __init__(self, stub, request_id: str):
        self.first, self.finish, self.error = threading.Event(), None, None
        self._call = stub.Generate(build_request("go on", request_id=request_id, **LONG), timeout=120)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.first.wait(60), self.error

    def _read(self):
        try:
            for resp in self._call:
                self.first.set()
                if resp.HasField("complete"):
                    self.finish = resp.complete.finish_reason
        except grpc.RpcError as exc:
            self.error = exc
            self.first.set()

    def wait(self):
        self._thread.join(120)
        return self.finish


def _abort(stub, request_id: str) -> bool:
    return stub.Abort(vlm_pb2.AbortRequest(request_id=request_id), timeout=10).found


def test_another_identity_cannot_abort_or_see_a_request(mtls):
    srv, stubs = mtls
    stream = _Stream(stubs["alice"], "shared-id")
    assert _abort(stubs["bob"], "shared-id") is False  # someone else's id: "not found"
    tokens, complete = collect(stubs["bob"].Generate(build_request("mine", request_id="shared-id", max_tokens=2)))
    assert tokens and complete.finish_reason == vlm_pb2.LENGTH  # bob's own "shared-id" simply works
    with pytest.raises(grpc.RpcError) as dup:  # alice still learns about her own duplicate
        collect(stubs["alice"].Generate(build_request("again", request_id="shared-id", max_tokens=1)))
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _abort(stubs["alice"], "shared-id") is True
    assert stream.wait() == vlm_pb2.ABORT and stream.error is None
    assert wait_idle(srv.server.runtime, 5.0) is not None
    assert srv.server.servicer.owners.in_flight() == 0


def test_operator_identity_can_abort_anyones_request(mtls):
    srv, stubs = mtls
    stream = _Stream(stubs["alice"], "ops-target")
    assert _abort(stubs["bob"], "ops-target") is False
    assert _abort(stubs["ops"], "ops-target") is True
    assert stream.wait() == vlm_pb2.ABORT
    assert _abort(stubs["ops"], "ops-target") is False  # gone now
    assert wait_idle(srv.server.runtime, 5.0) is not None


def test_the_echoed_id_is_the_clients_own(mtls):
    _, stubs = mtls
    responses = list(stubs["bob"].Generate(build_request("hi", request_id="echo-me", max_tokens=2)))
    assert responses and {r.request_id for r in responses} == {"echo-me"}
