"""Smaller hardening items of issue 12: undecodable protobuf bytes / invalid UTF-8 -> INVALID_ARGUMENT (not
UNKNOWN); a second server on a live --uds path refuses to start with one error line (the first keeps its socket);
under umask 000 the state and TLS folders are 0700, certificates 0644, keys 0600."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap

import grpc
import pytest

from reliability_helpers import collect, rel_config
from vlm_service._proto.vlm.v1 import vlm_pb2, vlm_pb2_grpc
from vlm_service.client import build_request
from vlm_service.server.app import _prepare_socket
from tests.server_harness import running_server

GENERATE = "/vlm.v1.VisionLanguageService/Generate"
ABORT = "/vlm.v1.VisionLanguageService/Abort"
BAD_BYTES = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated": b"\x12\x10\x0a\x04user",  # messages: length 16, only 6 bytes follow
    "invalid_utf8_request_id": b"\x0a\x02\xc3\x28",
    "invalid_utf8_role": b"\x12\x04\x0a\x02\xff\xfe",
}


@pytest.mark.parametrize("name", list(BAD_BYTES))
def test_undecodable_generate_is_invalid_argument(server, name):
    with server.channel() as ch:
        call = ch.unary_stream(GENERATE)(BAD_BYTES[name], timeout=10)  # no serializers: raw bytes both ways
        with pytest.raises(grpc.RpcError) as err:
            list(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "not a valid vlm.v1.GenerateRequest" in err.value.details()


def test_undecodable_abort_is_invalid_argument_and_raw_valid_bytes_work(server):
    with server.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(ABORT)(b"\x0a\x01\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = list(ch.unary_stream(GENERATE)(build_request("hi", max_tokens=2).SerializeToString(), timeout=30))
    tokens, _ = collect(vlm_pb2.GenerateResponse.FromString(r) for r in raw)
    assert tokens


def test_second_server_on_a_live_socket_refuses_to_start(state_dir, tmp_path):
    sock = tmp_path / "vlm.sock"
    with running_server(rel_config(state_dir, uds=sock, tcp=False), warmup=False) as first:
        cmd = [sys.executable, "-m", "vlm_service.cli", "serve", "--uds", str(sock), "--no-tcp", "--insecure",
               "--state-dir", str(state_dir), "--device", "cpu"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "live server" in line]
        assert len(errors) == 1 and str(sock) in errors[0] and "Traceback" not in proc.stderr
        assert sock.is_socket()
        with first.channel() as ch:  # the first server still owns and serves its socket
            stub = vlm_pb2_grpc.VisionLanguageServiceStub(ch)
            assert collect(stub.Generate(build_request("still mine", max_tokens=1)))[0]


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays; nothing listens
    _prepare_socket(path)
    assert not path.exists()


_UMASK_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    from pathlib import Path
    os.umask(0)
    from vlm_service.config import Config, ServerConfig
    from vlm_service.server.app import Server
    async def main():
        server = Server(Config(server=ServerConfig(port=0, state_dir=Path(sys.argv[1]))), lambda cfg: None)
        await server.start()
        await server._server.stop(None)
    asyncio.run(main())
""")


def test_files_and_folders_keep_their_modes_under_umask_000(tmp_path):
    state = tmp_path / "new" / "state"
    subprocess.run([sys.executable, "-c", _UMASK_SCRIPT, str(state)], check=True, timeout=120)

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(state) == 0o700 and mode(state.parent) == 0o700 and mode(state / "tls") == 0o700
    for name in ("ca.crt", "server.crt"):
        assert mode(state / "tls" / name) == 0o644, name
    for name in ("ca.key", "server.key"):
        assert mode(state / "tls" / name) == 0o600, name
