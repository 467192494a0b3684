"""Drives a benchmark: one target over a sweep of plans, an interleaved comparison of several servers, the peer."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from vlm_service.bench import launch as launcher
from vlm_service.bench.dataset import BenchRequest
from vlm_service.bench.loadgen import LoadPlan, RequestResult, Target, make_backend, run_load, warmup
from vlm_service.bench.openai_client import OPENAI_PREFIX
from vlm_service.bench.metrics import merge


@dataclass
class Run:
    """One measured configuration: its label, per-request results and wall time; extra goes to summary.json."""

    label: str
    results: list[RequestResult]
    duration_s: float
    extra: dict


def plan_label(plan: LoadPlan) -> str:
    rate = "inf" if math.isinf(plan.request_rate) else f"{plan.request_rate:g}"
    return f"rate={rate}" + (f",conc={plan.max_concurrency}" if plan.max_concurrency else "")


def _warm_ok(results: Sequence[RequestResult]) -> dict:
    return {"warmup_requests": len(results), "warmup_failed": sum(not r.ok for r in results)}


async def bench_target(target: Target, per_plan: Sequence[Sequence[BenchRequest]], warm: Sequence[BenchRequest],
                       plans: Sequence[LoadPlan], label_prefix: str = "") -> list[Run]:
    """Warm up once, then run each plan against one server, one after another; plan k sends per_plan[k] (its own
    images, so it meets no cache that an earlier plan warmed)."""
    backend = make_backend(target)
    try:
        info = await backend.info()
        backend.prepare([*(r for measured in per_plan for r in measured), *warm], plans[0])
        warm_results = await warmup(backend, warm, len(warm), plans[0])
        runs = []
        for plan, measured in zip(plans, per_plan, strict=True):
            results, duration = await run_load(backend, measured, plan)
            extra = {"target": target.address, "backend": target.backend, "server": info, "plan": vars(plan),
                     **_warm_ok(warm_results)}
            runs.append(Run(label_prefix + plan_label(plan), results, duration, extra))
        return runs
    finally:
        await backend.close()


async def bench_interleaved(entries: Sequence[tuple[str, Target]], measured: Sequence[BenchRequest],
                            warm: Sequence[BenchRequest], plan: LoadPlan, rounds: int) -> list[Run]:
    """Several servers, measured in alternation: round r gives every server the same r-th slice of the requests,
    in an order rotated by r, so drift (thermals, other tenants) falls on all of them alike. Entries may mix backends
    (a gRPC target and the same server's OpenAI-compatible port: the transports compared on one engine)."""
    stubs = [make_backend(t) for _, t in entries]
    try:
        infos = [await s.info() for s in stubs]
        for s in stubs:
            s.prepare([*measured, *warm], plan)
        warm_ok = [_warm_ok(await warmup(s, warm, len(warm), plan)) for s in stubs]
        parts: list[list] = [[] for _ in entries]
        for r in range(rounds):
            chunk = list(measured[r::rounds])
            if not chunk:
                continue
            sub = replace(plan, num_prompts=len(chunk) if plan.num_prompts is not None else None,
                          duration_s=plan.duration_s / rounds if plan.duration_s else None, seed=plan.seed + r)
            for k in _rotated(len(entries), r):
                parts[k].append(await run_load(stubs[k], chunk, sub))
        return [Run(label, *merge(parts[k]), {"target": t.address, "backend": t.backend, "server": infos[k],
                                                "rounds": rounds, "plan": vars(plan), **warm_ok[k]})
                for k, (label, t) in enumerate(entries)]
    finally:
        for s in stubs:
            await s.close()


def _rotated(n: int, r: int) -> list[int]:
    return [(r + k) % n for k in range(n)]


def compare_labels(specs: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(specs):
            raise ValueError("--compare-labels needs one label per --compare entry")
        return list(labels)
    return [s if len(s) <= 40 else s[:37] + "..." for s in specs]


async def compare(specs: Sequence[str], labels: Sequence[str], base: Target, measured, warm, plan: LoadPlan,
                  rounds: int, mode: str, log_dir: Path, ready_timeout_s: float) -> list[Run]:
    """--compare: targets (dialled with base's TLS settings) and/or launch specs ("serve:<flags>").

    mode "parallel": launch every spec, then interleave all; "sequential": one launched server at a time (each
    measured alone, its rounds back to back; already-running targets are interleaved among themselves first).
    """
    launched: list[launcher.Launched] = []
    try:
        if mode == "parallel" or not any(launcher.is_launch_spec(s) for s in specs):
            entries = [(lb, _target_for(s, base, launched, log_dir, ready_timeout_s)) for s, lb in zip(specs, labels)]
            return await bench_interleaved(entries, measured, warm, plan, rounds)
        return await _compare_sequential(specs, labels, base, measured, warm, plan, rounds, log_dir, ready_timeout_s)
    finally:
        for server in launched:
            server.stop()


async def _compare_sequential(specs, labels, base, measured, warm, plan, rounds, log_dir, ready_timeout_s):
    runs: dict[str, Run] = {}
    plain = [(lb, target_of(s, base)) for s, lb in zip(specs, labels) if not launcher.is_launch_spec(s)]
    if plain:
        runs.update((r.label, r) for r in await bench_interleaved(plain, measured, warm, plan, rounds))
    for spec, label in zip(specs, labels):
        if launcher.is_launch_spec(spec):
            server = launcher.launch(spec, log_dir, ready_timeout_s)
            try:
                target = Target(server.address, insecure=True)
                (run,) = await bench_interleaved([(label, target)], measured, warm, plan, rounds)
                run.extra["launch_spec"] = spec
                runs[label] = run
            finally:
                run_code = server.stop()
                runs.get(label, Run(label, [], 0.0, {})).extra["server_exit_code"] = run_code
    return [runs[lb] for lb in labels if lb in runs]


def target_of(spec: str, base: Target) -> Target:
    """A --compare entry that is a running server: host:port / unix:PATH (base's backend, gRPC by default), or
    "openai:URL" (an OpenAI-compatible server, e.g. ours with --http-port, vLLM, SGLang)."""
    if spec.startswith(OPENAI_PREFIX):
        return replace(base, address=spec[len(OPENAI_PREFIX):], backend="openai")
    return replace(base, address=spec)


def _target_for(spec: str, base: Target, launched: list, log_dir: Path, ready_timeout_s: float) -> Target:
    if not launcher.is_launch_spec(spec):
        return target_of(spec, base)
    server = launcher.launch(spec, log_dir, ready_timeout_s)
    launched.append(server)
    return Target(server.address, insecure=True)
