"""The process group of one tensor-parallel model and the channel that carries step inputs to the workers.

Two groups over the same ranks: the model's group (NCCL on GPU, gloo on CPU) for the forward's collectives and
the step tensors, and a gloo group for the small pickled header of each message. Workers wait on that header
between steps, possibly for hours, so it has no practical timeout; a rank that dies closes its sockets and the
others' pending calls fail at once instead of waiting.

Why a torch.distributed broadcast and not a shared-memory queue: the same code runs when the ranks live on other
hosts (torchrun, a LeaderWorkerSet), and the step's token ids can stay on the GPU - with overlap scheduling some of
them were sampled by the previous step and are not on the host yet; NCCL moves them device to device, where a
host queue would first have to wait for them. The price is per step: benchmarks/bench_tp_channel.py measured, on
this project's shared 2-core CPU machine (TP=2, 64 decode rows with 2048-token block tables, gloo), 7.6 ms median
for the broadcast against 2.3 ms for a multiprocessing queue - gloo needs both processes on a core three times per
step. The GPU host's numbers (NCCL for the tensors, gloo only for the header) are still to be measured.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from vlm_service.models.parallel import TensorParallel

_IDLE_TIMEOUT = datetime.timedelta(days=365)  # the header group: workers idle between requests
_STEP_TIMEOUT = datetime.timedelta(minutes=10)  # the model group: a collective that long means a rank is gone


@dataclass(frozen=True)
class Endpoint:
    """Where the ranks meet (MASTER_ADDR / MASTER_PORT) and who this process is."""

    rank: int
    size: int
    addr: str
    port: int
    local_rank: int = 0

    @staticmethod
    def from_env() -> "Endpoint | None":
        """The torchrun-style environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK), when set."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        return Endpoint(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                        os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500")),
                        int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """cuda:<local rank> for a CUDA model (each rank its own GPU), else the device as given."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def init_group(ep: Endpoint, device: torch.device) -> tuple[TensorParallel, object]:
    """Join the ranks; returns (TensorParallel over the model group, the gloo header group)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://{ep.addr}:{ep.port}", rank=ep.rank, world_size=ep.size,
                            timeout=_STEP_TIMEOUT)
    header = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT)
    return TensorParallel(ep.rank, ep.size, dist.group.WORLD), header


def agree_min(value: int, header_group) -> int:
    """The smallest `value` over the ranks (e.g. the KV blocks every rank can hold)."""
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=header_group)
    return int(t.item())


class Channel:
    """Rank 0 -> every worker: (kind, meta, tensors). The header (kind, meta, tensor shapes/dtypes) is pickled
    over the gloo group; the tensors are broadcast over the model group from wherever they are (the GPU)."""

    def __init__(self, tp: TensorParallel, header_group, device: torch.device):
        self.tp, self.header_group, self.device = tp, header_group, device

    def send(self, kind: str, meta: dict | None = None, tensors: tuple[torch.Tensor, ...] = ()) -> None:
        specs = [(tuple(t.shape), t.dtype) for t in tensors]
        dist.broadcast_object_list([(kind, meta or {}, specs)], src=0, group=self.header_group)
        for t in tensors:
            dist.broadcast(t.contiguous(), src=0, group=self.tp.group)

    def recv(self) -> tuple[str, dict, list[torch.Tensor]]:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.header_group)
        kind, meta, specs = box[0]
        tensors = [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in specs]
        for t in tensors:
            dist.broadcast(t, src=0, group=self.tp.group)
        return kind, meta, tensors


def leave_group() -> None:
    """Tear the process group down (idempotent)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def fatal_to_group(on_error: Callable[[str], None] | None, what: str):
    """Once rank 0 has sent a message, the workers are inside its collectives: an exception on rank 0 from there
    on (a rank gone, or any failure of its own forward) leaves the ranks out of step, so it fails the whole group
    (health NOT_SERVING, exit 1: an orchestrator restarts the server) rather than one request."""
    try:
        yield
    except Exception as exc:
        if on_error is not None:
            on_error(f"tensor-parallel {what} failed on rank 0: {type(exc).__name__}: {exc}")
        raise
