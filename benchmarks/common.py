"""Shared benchmark harness: environment block, interleaved repeats in child processes, summaries.

Method (../shared/BENCHMARKING.md): baselines and tuneforge run in the same invocation, interleaved
(A B C A B C ...), each repeat in a fresh child process (so peak memory is per variant and no
variant warms caches for another), after in-process warm-up steps. We report median [min, max] of
the repeats and ratios of medians. Every script prints a human card and ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def environment(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def matmul_peak_flops(threads: int, seconds: float = 1.0, dtype_name: str = "") -> float:
    """Best matmul FLOP/s on this machine now: the limit MFU is measured against.

    ``dtype_name`` "bf16" or "fp32"; by default bf16 on a GPU and fp32 on the CPU. The measurement is
    the one training jobs use (:func:`tuneforge.recipes.performance.measured_peak_flops`), run longer.
    """
    import torch

    from tuneforge.recipes.performance import measured_peak_flops

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = dtype_name or ("bf16" if device == "cuda" else "fp32")
    return measured_peak_flops(device, "bf16" if precision == "bf16" else "fp32", seconds=seconds)


def memory_bandwidth(threads: int, megabytes: int = 512, runs: int = 5) -> float:
    """Best read bandwidth in bytes/s now: summing a buffer far larger than the CPU caches (4 GiB on a GPU).

    Decoding reads every weight (and the KV cache) once per step, so this is the limit MBU is measured
    against. Read-only, like decode's weight reads; the best of ``runs`` is the least disturbed.
    """
    import torch

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        megabytes = 4096
    buffer = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    buffer.sum()  # first touch and warm-up
    best = 0.0
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        buffer.sum()
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, buffer.numel() * 4 / (time.perf_counter() - start))
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: Path, args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run one repeat of one variant in a fresh process; it prints its result as the last JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    last: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return last


def interleave(
    variants: Sequence[str], repeats: int, run: Callable[[str, int], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(repeats):
        for variant in variants:
            outcome = run(variant, repeat)
            results[variant].append(outcome)
            print(f"  repeat {repeat + 1}/{repeats} {variant:<14} {summary_line(outcome)}", flush=True)
    return results


def summary_line(outcome: dict[str, Any]) -> str:
    keys = [k for k in ("tokens_per_s", "loss", "peak_rss_mb") if k in outcome]
    return "  ".join(f"{k}={outcome[k]:.4g}" for k in keys)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(stat: dict[str, float], unit: str = "", precision: int = 0) -> str:
    return f"{stat['median']:,.{precision}f}{unit} [{stat['min']:,.{precision}f}, {stat['max']:,.{precision}f}]"


def final_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, sort_keys=True, default=float))
