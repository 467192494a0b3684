"""Start and stop the ranks of one tensor-parallel model.

Rank 0 is the server process. Its N-1 workers are either spawned here on this host (`python -m
vlm_service.engine.parallel.worker`, one per GPU, given the torchrun variables) or launched from outside with the
same `vlm-service serve` command (torchrun, a Kubernetes LeaderWorkerSet: RANK != 0 runs the worker loop).
Every rank loads its own shard, the ranks agree on the KV pool size, and the workers then follow rank 0's steps.

Failure: a spawned worker that exits is seen within 0.1 s, a failed collective at once; the failure handlers run
(the server turns health NOT_SERVING), the other workers are stopped and, after a short grace, the process exits
with status 1 (a step stuck in NCCL could not be unwound cleanly). SIGTERM drains on rank 0, then "stop" ends
every worker.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from typing import Callable

import torch

from vlm_service.config import Config
from vlm_service.engine.model_runner import model_dtype, pool_num_blocks
from vlm_service.engine.parallel.group import Channel, Endpoint, agree_min, init_group, leave_group, rank_device

log = logging.getLogger(__name__)

CONFIG_ENV = "VLM_TP_CONFIG"  # the spawned workers' Config (pickled, base64)


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def engine_config_for(cfg: Config, model, device: torch.device, header_group):
    """cfg.engine with num_blocks fixed to what every rank's memory holds (the ranks share block ids)."""
    local = pool_num_blocks(cfg.engine, model.spec, model_dtype(model), device)
    return dataclasses.replace(cfg.engine, num_blocks=agree_min(local, header_group))


def _spawn(cfg: Config, ep: Endpoint, rank: int) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(ep.size), "LOCAL_RANK": str(rank),
           "MASTER_ADDR": ep.addr, "MASTER_PORT": str(ep.port),
           CONFIG_ENV: base64.b64encode(pickle.dumps(cfg)).decode()}
    return subprocess.Popen([sys.executable, "-m", "vlm_service.engine.parallel.worker"], env=env)


class ParallelContext:
    """Rank 0's side: the group, the channel, the spawned workers and the watchdog over them."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.handlers: list[Callable[[str], None]] = []
        self.procs: list[subprocess.Popen] = []
        self._failed = threading.Event()
        self._stopping = False
        ep = Endpoint.from_env()
        if ep is None or ep.size == 1:
            port = cfg.parallel.master_port or free_port(cfg.parallel.master_addr)
            ep = Endpoint(0, cfg.parallel.tensor_parallel_size, cfg.parallel.master_addr, port)
            self.procs = [_spawn(cfg, ep, r) for r in range(1, ep.size)]
        elif ep.rank != 0 or ep.size != cfg.parallel.tensor_parallel_size:
            raise ValueError(f"launched as rank {ep.rank} of WORLD_SIZE {ep.size}: the server is rank 0 and "
                             f"--tensor-parallel-size must equal WORLD_SIZE "
                             f"({cfg.parallel.tensor_parallel_size})")
        self.device = rank_device(device, ep.local_rank)
        if self.procs:  # watching from the start: a worker that dies before it joins would leave init waiting
            threading.Thread(target=self._watch, name="vlm-tp-watchdog", daemon=True).start()
        try:
            self.tp, self.header = init_group(ep, self.device)
        except Exception:
            self._kill_workers()
            raise
        self.channel = Channel(self.tp, self.header, self.device)

    # ---- what the runtime needs --------------------------------------------------------------------------------
    def make_runner(self, model, cfg, device, num_blocks):
        """LLMEngine's make_runner: rank 0's ParallelModelRunner."""
        from vlm_service.engine.parallel.runner import ParallelModelRunner

        return ParallelModelRunner(model, cfg, device, num_blocks, self.channel, self.cfg.parallel.vision_parallel,
                                   on_error=self.fail)

    def engine_config(self, model):
        return engine_config_for(self.cfg, model, self.device, self.header)

    def on_failure(self, handler: Callable[[str], None]) -> None:
        """Call handler(reason) once, from a background thread, when a rank fails."""
        self.handlers.append(handler)

    # ---- failure -----------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._failed.is_set() and not self._stopping:
            for rank, proc in enumerate(self.procs, start=1):
                code = proc.poll()
                if code is not None and not self._stopping:
                    self.fail(f"tensor-parallel worker rank {rank} exited with status {code}")
                    return
            time.sleep(0.1)

    def fail(self, reason: str) -> None:
        """A rank is gone: run the handlers, stop the other workers, exit 1 after the grace (os._exit: a step
        blocked in a collective cannot be joined)."""
        if self._failed.is_set() or self._stopping:
            return
        self._failed.set()
        log.error("%s; failing health, exiting in %.1fs", reason, self.cfg.parallel.worker_exit_grace_s)
        for handler in self.handlers:
            try:
                handler(reason)
            except Exception:
                log.exception("failure handler raised")
        threading.Thread(target=self._exit_later, daemon=True).start()

    def _exit_later(self) -> None:
        time.sleep(self.cfg.parallel.worker_exit_grace_s)
        self._kill_workers()
        logging.shutdown()
        os._exit(1)

    # ---- stop --------------------------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        """After the engine stopped: tell every worker to stop, reap the spawned ones, leave the group."""
        if self._stopping or self._failed.is_set():
            return
        self._stopping = True
        try:
            self.channel.send("stop")
        except RuntimeError:
            log.warning("a worker was already gone at stop")
        end = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        leave_group()

    def _kill_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
