"""Many LoRA adapters on one multi-adapter engine vs one merged engine per custom model.

    PYTHONPATH=src python benchmarks/adapters_bench.py --repeats 3
    PYTHONPATH=src python benchmarks/adapters_bench.py --quick       # CI smoke: 32 tokens, 1 repeat, 2 merged engines

Eight custom models of one built-in base (random LoRA adapters of rank 8 on every projection, saved
as a fine-tuning job saves them) are served two ways, by real engine processes
(``python -m tuneforge.engine.server``) driven over their sockets, as the engine manager drives them:

- **multi**: one ``--multi-adapter`` engine holding the base once and all eight adapters unmerged;
- **merged**: one engine per custom model, each with its adapter merged into a private copy of the
  base (what provisioned throughput runs).

Reported, in one run:

- **memory**: resident memory (VmRSS) of the multi-adapter engine after it served every adapter,
  against the sum over the eight merged engines after each served once. Target: >= 4x lower.
  ``--merged-engines N`` starts only N of them and counts each of the eight as their mean: every
  merged engine holds the same base with one same-sized adapter merged, so they differ by noise, and
  each costs seconds of CPU to start (``--quick`` starts 2).
- **throughput**: aggregate output tokens/s of 8 concurrent requests spread over the 8 adapters on
  the multi-adapter engine, against 8 concurrent requests to one merged engine (median [min, max]
  over interleaved repeats; every request decodes exactly ``--tokens`` tokens: end of sequence is
  biased away). Target: ratio >= 0.7.
- **cold start**: from spawning a multi-adapter engine to the first answer of a request naming an
  adapter it has never seen (model load, warm-up, adapter load, prefill, first tokens), p50 over
  ``--cold-starts`` fresh engines; and the adapter's own first-use cost on a warm engine.
- **mixed-batch step**: one decoding-sized forward of 8 rows over 8 adapters, in process: peft's
  mixed-adapter batches (``adapter_names=``), tuneforge's grouped low-rank matmuls
  (:mod:`tuneforge.engine.adapters`), and a merged model (no adapter work at all), in ms.

The last line is one JSON object; ``--check`` exits 1 when a ratio misses its floor (4x and 0.7x;
3x and 0.5x with ``--quick``) on a quiet machine, 3 when it missed while other processes held the
CPU (``common.CpuContention``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuContention, check_status, environment, final_json, percentile, stats
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.engine.adapters import load_adapter, wrap_for_adapters
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import load_for_inference, save_model
from tuneforge.model.loading import load_model_and_tokenizer, quiet_peft

ADAPTERS = 8
RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [f"Request {i}: once upon a time, in a land far away" for i in range(ADAPTERS)]
MEMORY_FLOOR = 4.0
THROUGHPUT_FLOOR = 0.7
QUICK_FLOORS = (3.0, 0.5)
"""``--quick``'s lenient floors (memory, throughput): one short repeat on a shared machine."""


def write_adapters(base_name: str, models_dir: Path, folders: list[Path]) -> None:
    """Random LoRA adapters (non-zero A and B) saved as a fine-tuning job saves them."""
    base = next(m for m in BUILTIN_MODELS if m.source == f"builtin:{base_name}")
    model, tokenizer = load_model_and_tokenizer(ensure_builtin(base_name, models_dir))
    with quiet_peft():
        peft_model: Any = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS))
    for seed, folder in enumerate(folders):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        save_model(peft_model, tokenizer, folder, base, full=False, save_merged=False)


class Engine:
    """One engine process, spoken to over its socket as the engine manager does."""

    def __init__(self, root: Path, source: str, *, multi_adapter: bool, threads: int) -> None:
        self.started = time.perf_counter()
        name = f"e{os.urandom(4).hex()}"
        self.socket = Path(tempfile.gettempdir()) / f"tf-bench-{name}.sock"
        self.status = root / f"{name}.json"
        env = {**os.environ, "TUNEFORGE_DATA_DIR": str(root), "TUNEFORGE_ENGINE_THREADS": str(threads)}
        command = [sys.executable, "-m", "tuneforge.engine.server", "--source", source]
        command += ["--socket", str(self.socket), "--status", str(self.status)]
        self.process = subprocess.Popen(
            [*command, *(["--multi-adapter"] if multi_adapter else [])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        while not self.status.is_file():
            if self.process.poll() is not None:
                raise RuntimeError(f"engine exited with {self.process.returncode}")
            time.sleep(0.02)
        status = json.loads(self.status.read_text())
        if status["state"] != "ready":
            raise RuntimeError(f"engine failed: {status}")

    def request(self, prompt: str, tokens: int, adapter: Path | None, eos: int) -> tuple[int, float]:
        """(output tokens, seconds) of one request; end of sequence is biased away so all decode ``tokens``."""
        body = {"prompt": prompt, "max_tokens": tokens, "logit_bias": {str(eos): -100.0}}
        if adapter is not None:
            body["adapter"] = str(adapter)
        started = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.socket))
            sock.sendall(json.dumps(body).encode() + b"\n")
            with sock.makefile("rb") as reader:
                for line in reader:
                    event = json.loads(line)
                    if event["event"] == "error":
                        raise RuntimeError(event["message"])
                    if event["event"] == "end":
                        return int(event["output_tokens"]), time.perf_counter() - started
        raise RuntimeError("the engine closed the connection")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.socket.unlink(missing_ok=True)


def concurrent(engine: Engine, tokens: int, adapters: list[Path | None], eos: int) -> float:
    """Aggregate output tokens/s of one request per entry of ``adapters``, all at once."""
    with ThreadPoolExecutor(len(adapters)) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda i: engine.request(PROMPTS[i], tokens, adapters[i], eos), range(len(adapters))))
        wall = time.perf_counter() - started
    return sum(r[0] for r in results) / wall


def step_times(base_name: str, models_dir: Path, folders: list[Path], threads: int) -> dict[str, float]:
    """ms per decoding-sized forward (8 rows, 8 adapters, no cache) in process: peft, ours, merged."""
    torch.set_num_threads(threads)
    base_dir = ensure_builtin(base_name, models_dir)
    ids = torch.randint(0, 250, (ADAPTERS, 1))

    def best_ms(forward: Any, calls: int = 30) -> float:
        forward()
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                forward()
            best = min(best, (time.perf_counter() - started) / calls)
        return best * 1e3

    with torch.inference_mode():
        base, _ = load_model_and_tokenizer(base_dir)
        with quiet_peft():
            peft_model: Any = PeftModel.from_pretrained(base, str(folders[0] / "adapter"), adapter_name="a0")
            for i, folder in enumerate(folders[1:], 1):
                peft_model.load_adapter(str(folder / "adapter"), adapter_name=f"a{i}")
        names = [f"a{i}" for i in range(ADAPTERS)]
        peft_ms = best_ms(lambda: peft_model(input_ids=ids, adapter_names=names))
        ours, _ = load_model_and_tokenizer(base_dir)
        router, shapes = wrap_for_adapters(ours)
        weights = [
            load_adapter(
                f, base_source=f"builtin:{base_name}", shapes=shapes, dtype=torch.float32, device=torch.device("cpu")
            )
            for f in folders
        ]
        router.route(list(weights), torch.device("cpu"))
        ours_ms = best_ms(lambda: ours(input_ids=ids))
        merged, _ = load_for_inference(folders[0], models_dir)
        merged_ms = best_ms(lambda: merged(input_ids=ids))
    return {"peft_mixed_ms": peft_ms, "tuneforge_mixed_ms": ours_ms, "merged_ms": merged_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="forge-small", choices=["forge-small", "forge-micro"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold-starts", type=int, default=5, help="fresh engines timed for the cold start")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    parser.add_argument(
        "--merged-engines",
        type=int,
        default=ADAPTERS,
        choices=range(1, ADAPTERS + 1),
        metavar=f"1..{ADAPTERS}",
        help=f"merged engines started for the memory comparison; their mean stands for each of the {ADAPTERS}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: 32 tokens, 1 repeat, 2 cold starts, 2 merged engines, floors 3x and 0.5x",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its floor")
    args = parser.parse_args()
    memory_floor, throughput_floor = MEMORY_FLOOR, THROUGHPUT_FLOOR
    if args.quick:
        args.tokens, args.repeats, args.cold_starts, args.merged_engines = 32, 1, 2, 2
        memory_floor, throughput_floor = QUICK_FLOORS
    source = f"builtin:{args.model}"

    with tempfile.TemporaryDirectory(prefix="tuneforge-adapters-bench-") as tmp, CpuContention(args.threads) as cpu:
        root = Path(tmp)
        models_dir = root / "models"
        folders = [root / f"custom-{i}" for i in range(ADAPTERS + args.cold_starts + 1)]
        write_adapters(args.model, models_dir, folders)
        served, fresh = folders[:ADAPTERS], folders[ADAPTERS:]
        eos = int(load_model_and_tokenizer(ensure_builtin(args.model, models_dir))[1].eos_token_id)
        steps = step_times(args.model, models_dir, served, args.threads)
        print(f"  mixed-batch step (8 rows, 8 adapters): {steps}", flush=True)

        multi = Engine(root, source, multi_adapter=True, threads=args.threads)
        multi.wait_ready()
        for i, folder in enumerate(served):
            multi.request(PROMPTS[i], 4, folder, eos)
        multi_rss = multi.rss_mb()
        merged: list[Engine] = []
        for folder in served[: args.merged_engines]:  # one at a time: loading them at once measures nothing useful
            engine = Engine(root, str(folder), multi_adapter=False, threads=args.threads)
            engine.wait_ready()
            engine.request(PROMPTS[0], 4, None, eos)
            merged.append(engine)
        merged_rss = [e.rss_mb() for e in merged]
        for engine in merged[1:]:
            engine.stop()
        merged_sum = statistics.mean(merged_rss) * ADAPTERS
        print(
            f"  RSS: multi-adapter {multi_rss:.0f} MB; {ADAPTERS} merged engines {merged_sum:.0f} MB "
            f"({len(merged_rss)} measured)",
            flush=True,
        )

        runs: dict[str, list[float]] = {"multi_8_adapters": [], "merged_1_model": []}
        for repeat in range(args.repeats):
            runs["multi_8_adapters"].append(concurrent(multi, args.tokens, list(served), eos))
            runs["merged_1_model"].append(concurrent(merged[0], args.tokens, [None] * ADAPTERS, eos))
            print(
                f"  repeat {repeat + 1}/{args.repeats}: multi {runs['multi_8_adapters'][-1]:.0f} tok/s, "
                f"merged {runs['merged_1_model'][-1]:.0f} tok/s",
                flush=True,
            )
        first_use = [multi.request(PROMPTS[0], 4, fresh[-1], eos)[1], multi.request(PROMPTS[0], 4, fresh[-1], eos)[1]]
        multi.stop()
        merged[0].stop()

        cold: list[float] = []
        for folder in fresh[:-1]:
            engine = Engine(root, source, multi_adapter=True, threads=args.threads)
            engine.wait_ready()
            engine.request(PROMPTS[0], 1, folder, eos)
            cold.append(time.perf_counter() - engine.started)
            engine.stop()
            print(f"  cold start with a new adapter: {cold[-1]:.2f} s", flush=True)

    memory_ratio = merged_sum / multi_rss
    throughput = [m / r for m, r in zip(runs["multi_8_adapters"], runs["merged_1_model"], strict=True)]
    results: dict[str, Any] = {
        "rss_mb": {"multi_adapter_engine": multi_rss, "merged_engines_sum": merged_sum, "merged_each": merged_rss},
        "memory_merged_over_multi": memory_ratio,
        "tokens_per_s": {name: stats(values) for name, values in runs.items()},
        "throughput_multi_over_merged": stats(throughput),
        "cold_start_s": {"p50": percentile(cold, 0.5), "samples": cold},
        "adapter_first_use_s": first_use[0],
        "adapter_warm_request_s": first_use[1],
        "mixed_batch_step_ms": steps,
    }
    ratio = statistics.median(throughput)
    print(
        f"tuneforge multi-adapter serving, {args.model}, {ADAPTERS} adapters of rank {RANK}, {args.threads} thread(s)"
    )
    print(f"  memory: 8 merged engines / 1 multi-adapter engine  {memory_ratio:6.2f}x  (need >= {memory_floor:g})")
    t = results["throughput_multi_over_merged"]
    print(
        f"  tokens/s: 8 adapters / 1 merged model at 8 concurrent {ratio:6.2f}x  [{t['min']:.2f}, {t['max']:.2f}]"
        f"  (need >= {throughput_floor:g})"
    )
    print(f"  cold start p50 {results['cold_start_s']['p50']:.2f} s; adapter first use {first_use[0] * 1e3:.0f} ms")
    print(f"  CPU: {cpu.describe()}")
    slow = []
    if memory_ratio < memory_floor:
        slow.append(f"memory ratio {memory_ratio:.2f} < {memory_floor:g}")
    if ratio < throughput_floor:
        slow.append(f"throughput ratio {ratio:.2f} < {throughput_floor:g}")
    env = {
        **environment(args.threads),
        "model": args.model,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "merged_engines": args.merged_engines,
    }
    final_json(
        {
            "benchmark": "adapters",
            "env": env,
            "results": results,
            "ok": not slow,
            "check_failures": slow,
            "cpu_contention": cpu.report(),
        }
    )
    return check_status([], slow, cpu) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
