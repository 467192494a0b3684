"""A tensor-parallel worker: `python -m vlm_service.engine.parallel.worker` (spawned by rank 0, Config in
VLM_TP_CONFIG) or `vlm-service serve` with RANK != 0 (torchrun / LeaderWorkerSet). It loads its shard, builds a
ModelRunner with its own KV pool and follows rank 0's steps until told to stop (exit 0) or rank 0 goes away
(exit 1). SIGTERM and SIGINT are ignored: rank 0 drains first and then stops every worker."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import signal
import sys
import threading
import time

from vlm_service.config import Config

log = logging.getLogger("vlm_service.worker")


def _exit_with_parent(parent: int) -> None:
    """A spawned worker whose rank 0 died (even by SIGKILL) exits too."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def run_worker(cfg: Config) -> int:
    """Join the group from the torchrun variables, load this rank's shard, serve steps; the exit status."""
    import torch

    import vit_backends
    from vlm_service.engine.model_runner import ModelRunner
    from vlm_service.engine.parallel.group import Channel, Endpoint, init_group, leave_group, rank_device
    from vlm_service.engine.parallel.launch import engine_config_for
    from vlm_service.engine.parallel.runner import worker_loop
    from vlm_service.models.loader import load_model
    from vlm_service.runtime import resolve_device, resolve_dtype, resolve_model_path

    ep = Endpoint.from_env()
    device = rank_device(resolve_device(cfg.model.device), ep.local_rank)
    dtype = resolve_dtype(cfg.model.dtype, device)
    if device.type == "cpu":  # the ranks share this host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ep.size))
    tp, header = init_group(ep, device)
    _, weights, _ = resolve_model_path(cfg)
    model = load_model(weights, dtype=dtype, device=device, vit_attention=vit_backends.create(
        cfg.model.vit_attention_backend), tp=tp)
    engine_cfg = engine_config_for(cfg, model, device, header)
    runner = ModelRunner(model, engine_cfg, device, engine_cfg.num_blocks)
    log.info("rank %d/%d ready on %s (%d KV blocks)", ep.rank, ep.size, device, engine_cfg.num_blocks)
    worker_loop(runner, Channel(tp, header, device))
    leave_group()
    return 0


def serve_rank(cfg: Config) -> int:
    """A worker's whole life (signals ignored, exits with its parent); the exit status."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        return run_worker(cfg)
    except Exception:
        log.exception("worker failed")
        return 1


def main() -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s rank" + os.environ.get("RANK", "?")
                        + " %(name)s: %(message)s")
    return serve_rank(pickle.loads(base64.b64decode(os.environ["VLM_TP_CONFIG"])))


if __name__ == "__main__":
    sys.exit(main())
