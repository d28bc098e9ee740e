"""Does continuous batching pay? 8 concurrent requests against 1, through tuneforge's HTTP server.

    PYTHONPATH=src python benchmarks/serving_batching.py --repeats 3

One provisioned throughput (1 model unit = 1 engine process) of a built-in model serves
``InvokeModelWithResponseStream`` requests from boto3 at concurrency 1 and 8. In the same run, and
interleaved with it, the baseline is in-process Hugging Face ``generate`` at batch 1 and 8 on the
same weights. Every request asks for the same number of new tokens from a prompt of similar length;
the token-counting rule is "generated tokens" on both sides (the server's output token count, the
baseline's new non-padding tokens). Reported: aggregate tokens/s (median [min, max] over repeats),
time to first token p50/p95 and time per output token for the server, the HTTP overhead ratio
(server at concurrency 1 / generate at batch 1), and memory-bandwidth utilisation of weight reads
against a copy bandwidth measured in this run. The last line is one JSON object; the check is
``concurrency8_over_1 >= 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import torch
import transformers
from botocore.config import Config

from tuneforge.catalog.builtin import ensure_builtin
from tuneforge.catalog.models import BUILTIN_CONTEXT
from tuneforge.demo import free_port, start_server
from tuneforge.recipes.components import encode_prompt
from tuneforge.serving.generation import load_for_inference
from tuneforge.settings import Settings

PROMPTS = [f"Request {i}: once upon a time, in a land far away" for i in range(8)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write), the memory limit decode runs against."""
    source = torch.empty(64 * 1024 * 1024, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)
    started = time.perf_counter()
    for _ in range(5):
        target.copy_(source)
    return 5 * 2 * source.numel() * 4 / (time.perf_counter() - started)


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


@torch.inference_mode()
def hf_generate(model: Any, tokenizer: Any, batch: int, tokens: int) -> float:
    encoded = [{"input_ids": encode_prompt(tokenizer, p)} for p in PROMPTS[:batch]]
    inputs = tokenizer.pad(encoded, padding_side="left", return_tensors="pt")
    started = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    wall = time.perf_counter() - started
    new = output[:, inputs["input_ids"].shape[1] :]
    return int((new != tokenizer.pad_token_id).sum()) / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="forge-small", choices=["forge-small", "forge-micro"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="torch threads for the engine and the baseline (default: half the cores, as the engine's default)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_id = f"tuneforge.{args.model}-v1:0:{BUILTIN_CONTEXT}"

    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as folder:
        root = Path(folder)
        model, tokenizer = load_for_inference(ensure_builtin(args.model, root / "models"), root / "models")
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bandwidth = copy_bandwidth()
        server = Server(root, model_id, args.threads)
        try:
            server.run(1, 8), server.run(8, 8), hf_generate(model, tokenizer, 1, 8), hf_generate(model, tokenizer, 8, 8)
            runs: dict[str, list[Any]] = {"hf_b1": [], "http_c1": [], "hf_b8": [], "http_c8": []}
            for _ in range(args.repeats):  # interleaved: A B A B
                runs["hf_b1"].append(hf_generate(model, tokenizer, 1, args.tokens))
                runs["http_c1"].append(server.run(1, args.tokens))
                runs["hf_b8"].append(hf_generate(model, tokenizer, 8, args.tokens))
                runs["http_c8"].append(server.run(8, args.tokens))
        finally:
            server.stop()

    c1 = [r["tokens_per_s"] for r in runs["http_c1"]]
    c8 = [r["tokens_per_s"] for r in runs["http_c8"]]
    ratios = [b / a for a, b in zip(c1, c8, strict=True)]
    hf_ratios = [b / a for a, b in zip(runs["hf_b1"], runs["hf_b8"], strict=True)]
    ttft1 = [t for r in runs["http_c1"] for t in r["ttft"]]
    ttft8 = [t for r in runs["http_c8"] for t in r["ttft"]]
    tpot8 = [t for r in runs["http_c8"] for t in r["tpot"]]
    results = {
        "tokens_per_s": {
            name: spread([r if isinstance(r, float) else r["tokens_per_s"] for r in values])
            for name, values in runs.items()
        },
        "concurrency8_over_1": spread(ratios),
        "hf_batch8_over_1": spread(hf_ratios),
        "http_overhead_c1_over_hf_b1": spread([a / b for a, b in zip(c1, runs["hf_b1"], strict=True)]),
        "ttft_s": {
            "c1_p50": percentile(ttft1, 0.5),
            "c8_p50": percentile(ttft8, 0.5),
            "c8_p95": percentile(ttft8, 0.95),
        },
        "time_per_output_token_s_c8_p50": percentile(tpot8, 0.5),
        "mbu": {
            "c1": statistics.median(c1) * weight_bytes / bandwidth,
            "c8": statistics.median(c8) / 8 * weight_bytes / bandwidth,
        },
    }
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "model": model_id,
        "parameters": sum(p.numel() for p in model.parameters()),
        "new_tokens_per_request": args.tokens,
        "repeats": args.repeats,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
    }
    median = results["concurrency8_over_1"]["median"]
    print(f"tuneforge serving, {model_id} ({env['parameters'] / 1e6:.1f}M params), {args.threads} threads")
    for name, label in (
        ("hf_b1", "HF generate, batch 1"),
        ("http_c1", "tuneforge HTTP, 1 request"),
        ("hf_b8", "HF generate, batch 8"),
        ("http_c8", "tuneforge HTTP, 8 concurrent"),
    ):
        s = results["tokens_per_s"][name]
        print(f"  {label:<30} {s['median']:8.0f} tokens/s  [{s['min']:.0f}, {s['max']:.0f}]")
    r = results["concurrency8_over_1"]
    print(f"  8 concurrent / 1 request       {median:8.2f}x  [{r['min']:.2f}, {r['max']:.2f}]  (need >= 3)")
    print(f"  HF batch 8 / batch 1           {results['hf_batch8_over_1']['median']:8.2f}x")
    print(f"  HTTP overhead (c1 / HF b1)     {results['http_overhead_c1_over_hf_b1']['median']:8.2f}")
    t = {k: v * 1000 for k, v in results["ttft_s"].items()}
    print(f"  TTFT p50 c1 {t['c1_p50']:.0f} ms, c8 p50 {t['c8_p50']:.0f} ms, p95 {t['c8_p95']:.0f} ms")
    print(f"  MBU (weights only) c1 {results['mbu']['c1']:.1%}, c8 {results['mbu']['c8']:.1%}")
    print(json.dumps({"benchmark": "serving_batching", "env": env, "results": results, "ok": median >= 3}))
    return 0 if median >= 3 else 1


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
