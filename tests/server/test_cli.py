"""CLI flags, their VLM_* environment equivalents, and the redacted effective config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_service.cli import build_parser
from vlm_service.server.options import config_from_args, redacted


def _cfg(argv, monkeypatch=None, env=None):
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_flags_map_onto_config(tmp_path):
    cfg = _cfg(["--port", "0", "--uds", str(tmp_path / "s.sock"), "--max-num-seqs", "3", "--no-cuda-graphs",
                "--max-images-per-request", "1", "--dtype", "float32", "--state-dir", str(tmp_path)])
    assert cfg.server.port == 0 and cfg.server.uds == tmp_path / "s.sock" and cfg.server.tcp
    assert cfg.engine.max_num_seqs == 3 and cfg.engine.cuda_graphs is False
    assert cfg.server.limits.max_images_per_request == 1 and cfg.model.dtype == "float32"
    assert not cfg.server.tls.insecure


def test_env_equivalents_and_flag_wins(monkeypatch):
    env = {"VLM_PORT": "6000", "VLM_INSECURE": "true", "VLM_MAX_WAITING_REQUESTS": "7", "VLM_MODEL": "demo:qwen2_5_vl",
           "VLM_DRAIN_TIMEOUT_S": "2.5", "VLM_ENABLE_PREFIX_CACHE": "0"}
    cfg = _cfg(["--max-waiting-requests", "9"], monkeypatch, env)
    assert cfg.server.port == 6000 and cfg.server.tls.insecure and cfg.server.drain_timeout_s == 2.5
    assert cfg.server.limits.max_waiting_requests == 9  # the flag wins over the env
    assert cfg.model.model == "demo:qwen2_5_vl" and cfg.engine.enable_prefix_cache is False


def test_effective_config_hides_the_key_path(tmp_path):
    cfg = _cfg(["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "secret-key.pem")])
    text = json.dumps(redacted(cfg))
    assert "secret-key" not in text and "c.pem" in text


def test_client_commands_parse():
    args = build_parser().parse_args(["generate", "--image", "a.png", "--max-tokens", "4", "describe"])
    assert args.image == [Path("a.png")] and args.max_tokens == 4 and args.prompt == "describe"
    assert build_parser().parse_args(["health", "--service", "vlm.v1.VisionLanguageService"]).service


def test_bench_subcommand_reaches_the_harness(capsys):
    from vlm_service import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--max-concurrency" in capsys.readouterr().out


def test_http_and_api_key_flags(tmp_path, monkeypatch):
    cfg = _cfg(["--http-port", "0", "--http-metrics", "--allowed-media-domains", "a.example", "b.example",
                "--allowed-local-media-path", str(tmp_path), "--api-key", "alice:sk-1", "--api-key", "sk-2",
                "--served-model-name", "qwen", "--chat-template", str(tmp_path / "t.jinja")])
    h = cfg.server.http
    assert (h.port, h.metrics, h.allowed_media_domains, h.allowed_local_media_path) == \
        (0, True, ("a.example", "b.example"), tmp_path)
    assert cfg.server.api_keys == ("alice:sk-1", "sk-2")
    assert (cfg.model.served_model_name, cfg.model.chat_template) == ("qwen", str(tmp_path / "t.jinja"))
    assert "sk-1" not in json.dumps(redacted(cfg)), "keys never reach the start-up log"
    assert _cfg([]).server.http.port is None, "HTTP is off unless asked"
    env = _cfg([], monkeypatch, {"VLM_HTTP_PORT": "8000", "VLM_API_KEY": "k1,k2"})
    assert env.server.http.port == 8000 and env.server.api_keys == ("k1", "k2")
