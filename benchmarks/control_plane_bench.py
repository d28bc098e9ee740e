"""Control-plane latency: GetModelCustomizationJob and ListModelCustomizationJobs under load.

    python benchmarks/control_plane_bench.py            # 2 load processes x 10 s
    python benchmarks/control_plane_bench.py --quick    # CI smoke: 1 process x 3 s

A real server runs as a subprocess with 50 jobs in its database (created through boto3 and stopped
while queued, so no training competes for the CPU). Load comes from separate processes on loopback
that use boto3 exactly as user code does, so client-side SigV4 signing and parsing are included in
each latency. Reports p50/p99 per operation and aggregate requests/s; no baseline applies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, final_json

JOBS = 50


def client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "bedrock",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 1}),
    )


def load(url: str, arns: list[str], seconds: float, queue: Any) -> None:
    bedrock = client(url)
    latencies: dict[str, list[float]] = {"get": [], "list": []}
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        if i % 2 == 0:
            bedrock.get_model_customization_job(jobIdentifier=arns[i % len(arns)])
            latencies["get"].append(time.perf_counter() - start)
        else:
            bedrock.list_model_customization_jobs(maxResults=20, sortOrder="Descending")
            latencies["list"].append(time.perf_counter() - start)
        i += 1
    queue.put(latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.processes, args.seconds = 1, 3.0

    from tuneforge.demo import free_port, start_server
    from tuneforge.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), port=free_port(), worker_concurrency=1)
        server = start_server(settings, Path(tmp) / "server.log")
        try:
            bedrock = client(settings.endpoint_url)
            arns = []
            for i in range(JOBS):
                arn = bedrock.create_model_customization_job(
                    jobName=f"bench-{i}",
                    customModelName=f"bench-{i}",
                    roleArn="arn:aws:iam::123456789012:role/bench",
                    baseModelIdentifier="tuneforge.forge-micro-v1:0:512",
                    trainingDataConfig={"s3Uri": "s3://bench/none.jsonl"},
                    outputDataConfig={"s3Uri": "s3://bench/out/"},
                )["jobArn"]
                bedrock.stop_model_customization_job(jobIdentifier=arn)
                arns.append(arn)
            bedrock.get_model_customization_job(jobIdentifier=arns[0])  # warm-up
            queue: Any = multiprocessing.get_context("spawn").Queue()
            procs = [
                multiprocessing.get_context("spawn").Process(
                    target=load, args=(settings.endpoint_url, arns, args.seconds, queue)
                )
                for _ in range(args.processes)
            ]
            for proc in procs:
                proc.start()
            merged: dict[str, list[float]] = {"get": [], "list": []}
            for _ in procs:
                part = queue.get(timeout=args.seconds + 120)
                for key in merged:
                    merged[key] += part[key]
            for proc in procs:
                proc.join()
        finally:
            server.terminate()
            server.wait(timeout=30)

    rows = {}
    print(f"control plane: {args.processes} load process(es) x {args.seconds:.0f} s, {JOBS} jobs in the database")
    for op, values in merged.items():
        rows[op] = {
            "count": len(values),
            "p50_ms": 1000 * statistics.median(values),
            "p99_ms": 1000 * percentile(values, 0.99),
        }
        p50, p99 = rows[op]["p50_ms"], rows[op]["p99_ms"]
        print(f"  {op:<5} {len(values):>6} requests  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
    total = sum(r["count"] for r in rows.values())
    print(f"  aggregate {total / args.seconds:.0f} requests/s")
    final_json(
        {
            "benchmark": "control_plane",
            "env": environment(threads=0),
            "processes": args.processes,
            "seconds": args.seconds,
            "rows": rows,
            "requests_per_s": total / args.seconds,
        }
    )


if __name__ == "__main__":
    main()
