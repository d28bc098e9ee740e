"""Do batch inference jobs pay? 200 prompts as one batch job against the same prompts one at a time.

    PYTHONPATH=src python benchmarks/batch_inference.py             # 200 prompts, 32 tokens, 1 repeat
    PYTHONPATH=src python benchmarks/batch_inference.py --quick     # smoke: 40 prompts, 16 tokens, floor 0.5x

One real server (``tuneforge serve``) with the built-in ``forge-small`` on demand. The baseline
sends each prompt to Converse through boto3, one request at a time, after one warm-up call has
started the model's engine and its compiled lone-sequence step is ready: what a user's loop over a
file does. tuneforge submits the same prompts
as one CreateModelInvocationJob (``modelInvocationType: Converse``, the same bodies) and waits for
it to end; its time runs from the create call to the status Completed, so the worker's start and
model load are included. Both sides use ``--threads`` torch threads (default half the cores, the
engines' default: on a shared 2-core machine a 2-thread decoder loses its OpenMP threads to others'
slices). Both sides answer greedily, so they write the same tokens: the output records must equal
the Converse answers (else the run is broken). Reported: output tokens/s of each (output tokens from
the answers' ``usage``, over wall time) and their ratio; target >= 3x (``--check`` exits 1 below it
on a quiet machine, 3 when other processes held the CPU: ``common.CpuContention``). With ``--repeats
N`` the two sides alternate N times (baseline first) and medians are compared. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuContention, check_status, environment, final_json, stats
from tuneforge.demo import free_port, start_server
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore

MODEL = "tuneforge.forge-small-v1:0:512"
ROLE = "arn:aws:iam::123456789012:role/bench"


def bodies(count: int, tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [{"role": "user", "content": [{"text": f"Ticket {i}: my order number {i * 7} never came"}]}],
            "inferenceConfig": {"maxTokens": tokens},
        }
        for i in range(count)
    ]


def one_at_a_time(runtime: Any, requests: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """(output tokens/s, answers) of the requests sent to Converse one after the other."""
    started = time.perf_counter()
    answers = [runtime.converse(modelId=MODEL, **body) for body in requests]
    wall = time.perf_counter() - started
    return sum(a["usage"]["outputTokens"] for a in answers) / wall, answers


def batch_job(bedrock: Any, store: ObjectStore, requests: list[dict[str, Any]], run: int) -> tuple[float, list[Any]]:
    """(output tokens/s, output records in input order) of one batch inference job over the requests."""
    prefix = f"s3://bench/batch-{run}"
    lines = "".join(json.dumps({"recordId": f"{i:05d}", "modelInput": b}) + "\n" for i, b in enumerate(requests))
    store.write_bytes(f"{prefix}/in.jsonl", lines.encode())
    started = time.perf_counter()
    arn = bedrock.create_model_invocation_job(
        jobName=f"bench-{run}",
        roleArn=ROLE,
        modelId=MODEL,
        modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"{prefix}/in.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"{prefix}/out"}},
    )["jobArn"]
    while (job := bedrock.get_model_invocation_job(jobIdentifier=arn))["status"] not in (
        "Completed",
        "PartiallyCompleted",
        "Failed",
        "Stopped",
    ):
        time.sleep(0.1)
    wall = time.perf_counter() - started
    if job["status"] != "Completed":
        raise RuntimeError(f"batch job ended {job['status']}: {job.get('message')}")
    job_id = arn.rsplit("/", 1)[-1]
    records = [json.loads(line) for line in store.read_bytes(f"{prefix}/out/{job_id}/in.jsonl.out").splitlines()]
    manifest = json.loads(store.read_bytes(f"{prefix}/out/{job_id}/manifest.json.out"))
    return manifest["outputTokenCount"] / wall, records


def wait_for_compiled_step(logs: Path, timeout: float = 300.0) -> None:
    """Until the engine's compiled lone-sequence step is ready: it compiles in the background once the
    engine serves, and the baseline must neither share the CPU with that compile nor miss the faster step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("decoding step ready" in log.read_text(errors="replace") for log in logs.glob("engine-*.log")):
            return
        time.sleep(0.5)
    print(f"the engine's compiled step was not ready within {timeout:.0f} s; timing goes on", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=32, help="maxTokens per request")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="torch threads, both sides"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke: 40 prompts, 16 tokens, floor 0.5x (the worker's ~5 s start outweighs 640 tokens' work)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the ratio misses its floor")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.tokens = 40, 16
    floor = 0.5 if args.quick else 3.0
    requests = bodies(args.prompts, args.tokens)

    root = Path(tempfile.mkdtemp(prefix="tuneforge-batch-bench-"))
    settings = Settings(data_dir=root, port=free_port(), engine_threads=args.threads, worker_threads=args.threads)
    server = start_server(settings, root / "server.log")
    options: dict[str, Any] = dict(
        endpoint_url=settings.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 1}, read_timeout=600),
    )
    bedrock, runtime = boto3.client("bedrock", **options), boto3.client("bedrock-runtime", **options)
    store = ObjectStore.from_settings(settings)
    broken: list[str] = []
    sequential: list[float] = []
    batched: list[float] = []
    try:
        runtime.converse(modelId=MODEL, **requests[0])  # starts the on-demand engine: not timed
        wait_for_compiled_step(root / "logs")
        with CpuContention(args.threads) as contention:
            for run in range(args.repeats):
                rate, answers = one_at_a_time(runtime, requests)
                sequential.append(rate)
                rate, records = batch_job(bedrock, store, requests, run)
                batched.append(rate)
                differ = [
                    r["recordId"]
                    for r, a in zip(records, answers, strict=True)
                    if r["modelOutput"]["output"] != a["output"]
                ]
                if differ:
                    broken.append(f"run {run}: {len(differ)} batch answers differ from Converse's ({differ[:3]})")
    finally:
        server.terminate()
        server.wait(timeout=30)

    one, many = stats(sequential), stats(batched)
    ratio = many["median"] / one["median"]
    slow = [] if ratio >= floor else [f"batch job / one at a time = {ratio:.2f}x < {floor}x"]
    print(f"batch inference: {args.prompts} prompts x up to {args.tokens} tokens, forge-small, {args.threads} threads")
    print(f"  Converse one at a time  {one['median']:8.1f} tokens/s  [{one['min']:.1f}, {one['max']:.1f}]")
    print(f"  batch inference job     {many['median']:8.1f} tokens/s  [{many['min']:.1f}, {many['max']:.1f}]")
    print(f"  ratio {ratio:.2f}x (target >= {floor}x); {contention.describe()}")
    final_json(
        {
            "benchmark": "batch_inference",
            "env": environment(threads=args.threads),
            "prompts": args.prompts,
            "tokens": args.tokens,
            "repeats": args.repeats,
            "converse_one_at_a_time_tokens_per_s": one,
            "batch_job_tokens_per_s": many,
            "batch_over_one_at_a_time": ratio,
            "floor": floor,
            "broken": broken,
            "cpu": contention.report(),
        }
    )
    if args.check:
        sys.exit(check_status(broken, slow, contention))


if __name__ == "__main__":
    main()
