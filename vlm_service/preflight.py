"""Checks `serve` runs before it binds anything, so the usual mistakes end in one line and exit code 2 rather than a
traceback or a message from deep inside the loader ("tokenizer has no <|image_pad|> token").

Each check raises ValueError with a message that names the flag and says what to do.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from vlm_service.config import Config

# what a checkpoint directory needs (DESIGN.md, Models and checkpoints); weights are *.safetensors (one or sharded)
_CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
_IMAGE_CONFIGS = ("preprocessor_config.json", "processor_config.json")


def check_checkpoint_dir(path: Path, flag: str = "--model") -> None:
    """A HF-format checkpoint folder: config, tokenizer, image processor config and safetensors weights."""
    if not path.is_dir():
        raise ValueError(f"{flag} {path}: not a directory, 'demo', 'demo:qwen2_5_vl' or 'random:<preset>'")
    missing = [name for name in _CHECKPOINT_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in _IMAGE_CONFIGS):
        missing.append(" or ".join(_IMAGE_CONFIGS))
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{flag} {path}: not a complete checkpoint, missing {', '.join(missing)} "
                         "(copy them from the model's hub repository)")


def _has_cuda(device: str) -> bool:
    import torch

    return device != "cpu" and torch.cuda.is_available()


def check_random_preset(name: str, device: str) -> None:
    """random:<preset> builds a full-size model (7-8 B parameters, ~30 GB in float32) with random weights: meant for
    performance work on a GPU; on a CPU-only machine it would grind for minutes and then fill the memory."""
    from vlm_service.demo.presets import preset_name

    try:
        preset_name(name)
    except Exception as exc:  # ModelLoadError: the message lists the presets
        raise ValueError(f"--model {exc}") from None
    if not _has_cuda(device):
        raise ValueError(f"--model {name}: a full-size model with random weights (~30 GB in float32) needs a CUDA "
                         "device, and there is none here; on CPU use --model demo")


def check_port(host: str, port: int) -> None:
    """Bind host:port once (as gRPC will, with SO_REUSEADDR) and let go: a port in use is found here, in one line,
    rather than by gRPC's bind error and traceback. (The window until gRPC binds is tiny; the server still turns
    a failed bind into the same message.)"""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"--port {port}: {host}:{port} is in use by another process (another vlm-service?); "
                             "stop it, or pick another --port (0 = any free port)") from None
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def check_serve(cfg: Config) -> None:
    """Everything `serve` can find wrong before it starts (raises ValueError naming the flag)."""
    name = cfg.model.model
    if name.startswith("random:"):
        check_random_preset(name, cfg.model.device)
    elif not (name == "demo" or name.startswith("demo:")):
        check_checkpoint_dir(Path(name).expanduser())
    elif name not in ("demo", "demo:qwen3_vl", "demo:qwen2_5_vl"):
        raise ValueError(f"--model {name}: the demo models are demo (Qwen3-VL) and demo:qwen2_5_vl")
    if cfg.server.tcp:
        check_port(cfg.server.host, cfg.server.port)
