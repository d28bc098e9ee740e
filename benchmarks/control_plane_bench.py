"""Control-plane latency: GetModelCustomizationJob and ListModelCustomizationJobs under load,
on SQLite (the embedded default) and PostgreSQL in the same run.

    python benchmarks/control_plane_bench.py            # both backends, 10,000 jobs, 2 load processes x 10 s
    python benchmarks/control_plane_bench.py --quick    # CI smoke: 1,000 jobs, 1 process x 3 s
    python benchmarks/control_plane_bench.py --backend sqlite

A real server runs as a subprocess per backend. 50 jobs are created through boto3 and stopped while
queued (so no training competes for the CPU); the rest of the table is filled with copies of them
written straight to the database, with distinct names and creation times. PostgreSQL is a throwaway
local server (tests/postgres.py: Debian's postgresql package, fsync off like the test suite's), its
schema made by the migrations. Load comes from separate processes on loopback that use boto3 exactly
as user code does, so client-side SigV4 signing and parsing are included in each latency. Reports
p50/p99 per operation, aggregate requests/s, and PostgreSQL/SQLite ratios; no baseline applies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.postgres

from common import environment, final_json

CREATED = 50
"""Jobs created through the API; the rest up to ``--jobs`` are copies of them."""


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


def fill(url: str, total: int) -> None:
    """Copy the API-created jobs until the table holds ``total``, one second apart, older than them."""
    from sqlalchemy import create_engine, insert, select
    from sqlalchemy.orm import Session

    from tuneforge.db.tables import Job

    engine = create_engine(url)
    try:
        with Session(engine) as session:
            templates = list(session.scalars(select(Job)))
            oldest = min(job.created_at for job in templates)
            rows = []
            for i in range(total - len(templates)):
                row = {c.key: getattr(templates[i % len(templates)], c.key) for c in Job.__table__.columns}
                job_id = f"f{i:011d}"
                row.update(
                    id=job_id,
                    arn=row["arn"].rsplit("/", 1)[0] + "/" + job_id,
                    name=f"filler-{i}",
                    custom_model_name=f"filler-{i}",
                    client_request_token=None,
                    created_at=oldest - timedelta(seconds=i + 1),
                )
                rows.append(row)
            for start in range(0, len(rows), 1000):
                session.execute(insert(Job), rows[start : start + 1000])
            session.commit()
    finally:
        engine.dispose()


def measure(database_url: str | None, jobs: int, processes: int, seconds: float) -> dict[str, dict[str, float]]:
    from tuneforge.demo import free_port, start_server
    from tuneforge.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), port=free_port(), worker_concurrency=1, database_url=database_url)
        server = start_server(settings, Path(tmp) / "server.log")
        try:
            bedrock = client(settings.endpoint_url)
            arns = []
            for i in range(CREATED):
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
            fill(settings.db_url, jobs)
            bedrock.get_model_customization_job(jobIdentifier=arns[0])  # warm-up
            queue: Any = multiprocessing.get_context("spawn").Queue()
            procs = [
                multiprocessing.get_context("spawn").Process(
                    target=load, args=(settings.endpoint_url, arns, seconds, queue)
                )
                for _ in range(processes)
            ]
            for proc in procs:
                proc.start()
            merged: dict[str, list[float]] = {"get": [], "list": []}
            for _ in procs:
                part = queue.get(timeout=seconds + 120)
                for key in merged:
                    merged[key] += part[key]
            for proc in procs:
                proc.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
    rows = {}
    for op, values in merged.items():
        rows[op] = {
            "count": len(values),
            "p50_ms": 1000 * statistics.median(values),
            "p99_ms": 1000 * percentile(values, 0.99),
            "requests_per_s": len(values) / seconds,
        }
    return rows


def postgresql_database() -> tuple[Any, str]:
    """A throwaway local PostgreSQL server and a database in it at the schema's head."""
    from tests.postgres import PostgresServer, find_bin_dir

    from tuneforge.db import migrate
    from tuneforge.db.session import connect
    from tuneforge.settings import Settings

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    url = server.create_database()
    engine = connect(Settings(database_url=url))
    migrate.upgrade(engine)
    engine.dispose()
    return server, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.processes, args.seconds, args.jobs = 1, 3.0, 1_000
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]

    results: dict[str, dict[str, dict[str, float]]] = {}
    for backend in backends:
        if backend == "sqlite":
            results[backend] = measure(None, args.jobs, args.processes, args.seconds)
            continue
        pg, url = postgresql_database()
        try:
            results[backend] = measure(url, args.jobs, args.processes, args.seconds)
        finally:
            pg.close()

    print(
        f"control plane: {args.processes} load process(es) x {args.seconds:.0f} s, {args.jobs:,} jobs in the database"
    )
    for backend, rows in results.items():
        for op, row in rows.items():
            print(
                f"  {backend:<10} {op:<5} {row['count']:>6} requests  "
                f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms"
            )
        total = sum(row["count"] for row in rows.values())
        print(f"  {backend:<10} aggregate {total / args.seconds:.0f} requests/s")
    ratios = {}
    if len(results) == 2:
        for op in ("get", "list"):
            ratios[op] = {q: results["postgresql"][op][q] / results["sqlite"][op][q] for q in ("p50_ms", "p99_ms")}
            print(f"  postgresql/sqlite {op:<5} p50 {ratios[op]['p50_ms']:.2f}x  p99 {ratios[op]['p99_ms']:.2f}x")
    final_json(
        {
            "benchmark": "control_plane",
            "env": environment(threads=0),
            "processes": args.processes,
            "seconds": args.seconds,
            "jobs": args.jobs,
            "backends": results,
            "ratios": ratios,
        }
    )


if __name__ == "__main__":
    main()
