"""Item 5: TLS off loopback. `--host 0.0.0.0` with the dev certificate warns at start; `generate/info
--server-name` checks the certificate against another name; a plaintext client against the TLS port, or a name the
certificate lacks, gets a hint in its one error line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.first_contact.fc_helpers import cli, one_line
from tests.server.fakes import fake_runtime
from tests.server_harness import running_server
from vlm_service.config import Config, ServerConfig, TLSConfig
from vlm_service.server.app import Server, is_loopback
from vlm_service.server.pki import make_ca, make_leaf


def _start_and_stop(cfg: Config) -> None:
    async def go():
        server = Server(cfg, lambda c: None)
        await server.start()
        await server.drain()

    asyncio.run(go())


@pytest.mark.parametrize("host,warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_dev_certificate_off_loopback_warns_at_start(tmp_path, caplog, host, warned):
    caplog.set_level(logging.WARNING, logger="vlm_service.server.app")
    _start_and_stop(Config(server=ServerConfig(host=host, port=0, state_dir=tmp_path)))
    warnings = [r.getMessage() for r in caplog.records if "dev certificate" in r.getMessage()]
    assert bool(warnings) == warned
    if warned:
        assert "--server-name" in warnings[0] and "--tls-cert" in warnings[0]


def test_real_certificate_off_loopback_does_not_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="vlm_service.server.app")
    ca = make_ca(tmp_path / "ca")
    leaf = make_leaf(ca, tmp_path / "srv", "vlm.internal", ("vlm.internal",))
    tls = TLSConfig(cert=leaf.cert, key=leaf.key)
    _start_and_stop(Config(server=ServerConfig(host="0.0.0.0", port=0, state_dir=tmp_path, tls=tls)))
    assert not [r for r in caplog.records if "dev certificate" in r.getMessage()]


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("myhost")


def test_server_name_override(tmp_path):
    ca = make_ca(tmp_path / "ca")
    leaf = make_leaf(ca, tmp_path / "srv", "vlm.internal", ("vlm.internal",))  # does not name 127.0.0.1
    cfg = Config(server=ServerConfig(port=0, state_dir=tmp_path, tls=TLSConfig(cert=leaf.cert, key=leaf.key)))
    from vlm_service.server.tls import channel_credentials

    with running_server(cfg, load_runtime=lambda c: fake_runtime(), credentials=channel_credentials(ca.cert),
                        warmup=False) as srv:
        flags = ["--target", srv.target, "--ca", str(ca.cert)]
        ok = cli("info", *flags, "--server-name", "vlm.internal")
        assert ok.returncode == 0, ok.stderr
        wrong = cli("info", *flags)
        assert wrong.returncode == 1
        assert "hint:" in one_line(wrong.stderr) and "--server-name" in wrong.stderr


def test_plaintext_client_against_the_tls_port_gets_a_hint(served):
    run = cli("info", *served.client_flags, "--insecure")
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert line.startswith("error: UNAVAILABLE") and "hint: the server may speak TLS here: drop --insecure" in line
