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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

EXIT_TOO_NOISY = 3
"""``--check``'s exit status when a ratio missed its floor while other processes held the CPU
(:class:`CpuContention`): the run cannot tell a regression from a busy machine. CI's smoke test skips
on it. A wrong answer or a broken variant still exits 1, however busy the machine."""
NOISE_LIMIT = 0.2
"""A run is too noisy to judge when processes outside the benchmark took more than this share of the
CPU time its threads needed."""


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


class CpuContention:
    """How much CPU processes outside this benchmark took from it while it ran (Linux; elsewhere, from
    the load average).

    Samples every ``interval`` seconds: the machine's busy CPU time from ``/proc/stat`` (steal time
    included, so a noisy virtual-machine neighbour counts) and the CPU time of this process and all its
    descendants (the variants' child processes, a server and its engines). What the machine spent
    beyond the benchmark's own processes went to others. Only the part that could not fit on the cores
    the benchmark leaves idle competes with it: ``contention`` is that part over the ``threads`` cores
    the benchmark wants. Two busy loops beside a 2-thread benchmark on 2 cores give about 0.5; a quiet
    machine under 0.05.
    """

    def __init__(self, threads: int, interval: float = 0.25) -> None:
        self.threads = max(1, threads)
        self.cores = os.cpu_count() or 1
        self.interval = interval
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.baseline: dict[int, float] = {}
        self.own: dict[int, float] = {}
        """CPU seconds last seen per process of ours: a process that ends keeps its last reading."""
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self._sample, name="cpu-contention", daemon=True)
        self.started = self.busy_start = 0.0
        self.wall = self.others_cores = 0.0

    def __enter__(self) -> CpuContention:
        self.started, self.busy_start = time.monotonic(), self._busy_seconds()
        self.baseline = _tree_cpu_seconds(os.getpid(), self.tick)
        self.own = dict(self.baseline)
        self.sampler.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop.set()
        self.sampler.join()
        self._read_own()
        self.wall = time.monotonic() - self.started
        busy = self._busy_seconds() - self.busy_start
        if self.busy_start < 0:  # no /proc/stat: the load average is all there is
            self.others_cores = max(0.0, os.getloadavg()[0] - self.threads)
        else:
            own = sum(self.own.values()) - sum(self.baseline.values())
            self.others_cores = max(0.0, busy - own) / max(self.wall, 1e-9)

    @property
    def contention(self) -> float:
        """Others' CPU use that had to come out of the benchmark's ``threads`` cores, as a share of them."""
        idle_cores = max(0, self.cores - self.threads)
        return max(0.0, self.others_cores - idle_cores) / self.threads

    @property
    def noisy(self) -> bool:
        return self.contention > NOISE_LIMIT

    def report(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall,
            "cores": self.cores,
            "threads": self.threads,
            "others_cores": self.others_cores,
            "contention": self.contention,
            "noise_limit": NOISE_LIMIT,
            "noisy": self.noisy,
            "load_average_1min": os.getloadavg()[0],
        }

    def describe(self) -> str:
        return (
            f"other processes used {self.others_cores:.2f} of {self.cores} cores on average over "
            f"{self.wall:.0f} s, {self.contention:.0%} of the {self.threads} the benchmark needs "
            f"(too noisy to judge above {NOISE_LIMIT:.0%})"
        )

    def _sample(self) -> None:
        while not self.stop.wait(self.interval):
            self._read_own()

    def _read_own(self) -> None:
        for pid, seconds in _tree_cpu_seconds(os.getpid(), self.tick).items():
            self.own[pid] = max(seconds, self.own.get(pid, 0.0))

    def _busy_seconds(self) -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return -1.0
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return (user + nice + system + irq + softirq + steal) / self.tick


def _tree_cpu_seconds(root: int, tick: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and every live descendant, by pid."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        parents[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: seconds[pid] for pid in tree if pid in seconds}


def check_status(broken: Sequence[str], slow: Sequence[str], contention: CpuContention) -> int:
    """``--check``'s exit status: 1 for a broken run (``broken``: wrong answers, a loss that differs) or a
    ratio under its floor (``slow``) on a quiet machine; :data:`EXIT_TOO_NOISY` when only ratios missed
    while other processes held the CPU; else 0. Says why on stderr."""
    if broken or (slow and not contention.noisy):
        print("benchmark check failed: " + "; ".join([*broken, *slow]), file=sys.stderr)
        return 1
    if slow:
        print(f"too noisy to judge ({'; '.join(slow)}): {contention.describe()}", file=sys.stderr)
        return EXIT_TOO_NOISY
    return 0
