#!/usr/bin/env python
"""Per-step cost of getting a step's inputs to the tensor-parallel workers: the torch.distributed broadcast the
engine uses (engine/parallel/group.py Channel: pickled header over gloo + int64 tensor over the model group) against
a shared-memory queue per worker (multiprocessing.Queue of the same message with the ints on the host).

    python benchmarks/bench_tp_channel.py --size 2 --batch 64 --out $OUT/tp_channel.json            # CPU, gloo
    python benchmarks/bench_tp_channel.py --size 2 --batch 64 --device cuda --out $OUT/tp_channel.json  # NCCL

A step = rank 0 sends a decode step of `batch` sequences with `context`-token block tables, every worker receives
it and joins one all-reduce (the forward's first collective); the time is rank 0's, from send to that all-reduce.
The queue variant also pays the device->host copy of the token ids (a stream sync on CUDA), which the broadcast
never needs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.multiprocessing as mp


def _step(batch: int, context: int, block: int, device):
    from vlm_service.engine.attention import BatchLayout
    from vlm_service.engine.parallel.step import pack_step

    tables = [list(range(i * (context // block), (i + 1) * (context // block))) for i in range(batch)]
    layout = BatchLayout([1] * batch, [context] * batch, tables, torch.arange(batch, device=device))
    ids, pos = torch.arange(batch, device=device), torch.zeros(3, batch, dtype=torch.long, device=device)
    return pack_step(ids, pos, layout, torch.arange(batch, device=device), None, True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rank(rank: int, args, port: int, queues, result):
    import torch.distributed as dist

    from vlm_service.engine.parallel.group import Channel, Endpoint, init_group, rank_device

    device = rank_device(torch.device(args.device), rank)
    tp, header = init_group(Endpoint(rank, args.size, "127.0.0.1", port), device)
    channel, one = Channel(tp, header, device), torch.ones(1, device=device)
    meta, tensors = _step(args.batch, args.context, 16, device)
    times = {"broadcast": [], "shm_queue": []}
    for mode in times:
        for i in range(args.warmup + args.steps):
            _sync(device)
            t0 = time.perf_counter()
            if rank == 0 and mode == "broadcast":
                channel.send("step", meta, tensors)
            elif rank == 0:
                msg = (meta, [t.cpu() for t in tensors])  # the host copy a queue needs
                for q in queues:
                    q.put(msg)
            elif mode == "broadcast":
                channel.recv()
            else:
                m, ts = queues[rank - 1].get()
                [t.to(device) for t in ts]
            dist.all_reduce(one, group=tp.group)
            _sync(device)
            if i >= args.warmup:
                times[mode].append((time.perf_counter() - t0) * 1e6)
    if rank == 0:
        result.update({k: {"median_us": statistics.median(v), "p90_us": sorted(v)[int(0.9 * len(v))]}
                       for k, v in times.items()})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from vlm_service.engine.parallel.launch import free_port

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    result = manager.dict()
    queues = [ctx.Queue() for _ in range(args.size - 1)]
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=_rank, args=(r, args, port, queues, result)) for r in range(args.size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    out = {"config": vars(args), "torch": torch.__version__, "cpus": os.cpu_count(), **dict(result)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
