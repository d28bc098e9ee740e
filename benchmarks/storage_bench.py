"""Object store throughput: a model folder uploaded and downloaded through the S3 backend vs the local root.

    python benchmarks/storage_bench.py            # a 200 MB model folder, 3 rounds
    python benchmarks/storage_bench.py --quick    # CI smoke: 8 MB, 1 round

The folder is shaped like a model's: one big safetensors-like file (random bytes, so nothing
compresses) beside a tokenizer, configs and a second, smaller weight shard. Each round uploads it
with ``ObjectStore.upload_tree`` and downloads it with ``ObjectStore.download_tree`` (the worker's
and the catalog's staging paths), through the local object root and through the S3 backend talking
to moto's S3 server, started here as a separate process on 127.0.0.1. Files past the multipart
threshold go in parts through boto3's transfer manager, as they would to AWS. Reports MB/s (median of
the rounds) and the S3/local ratio of the same run; every download is compared byte for byte.

moto is an in-process Python server keeping objects in memory, not AWS: the figure is what the
backend's own path (signing, HTTP on loopback, multipart, checksums) costs beside a local copy, and
says nothing about a real S3 endpoint's bandwidth or latency.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import final_json

MB = 1024 * 1024
SMALL_FILES = {"config.json": 2_000, "generation_config.json": 200, "tokenizer_config.json": 4_000}


def make_model_folder(root: Path, total_mb: int) -> int:
    """A model-shaped folder of ``total_mb`` MB: 90% one big weight file, 7% a second shard, the rest a
    tokenizer and configs (no file exactly at the multipart threshold: see the note in main)."""
    root.mkdir(parents=True)
    big, shard = int(total_mb * MB * 0.9), int(total_mb * MB * 0.07)
    tokenizer = total_mb * MB - big - shard - sum(SMALL_FILES.values())
    sizes = {"model-00001-of-00002.safetensors": big, "model-00002-of-00002.safetensors": shard}
    sizes |= {"tokenizer.json": tokenizer, **SMALL_FILES}
    for name, size in sizes.items():
        with (root / name).open("wb") as out:
            for start in range(0, size, 4 * MB):
                out.write(os.urandom(min(4 * MB, size - start)))
    return sum(sizes.values())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_moto(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto_server did not start")


def same_tree(left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(left / name, right / name, shallow=False) for name in names)


def measure(store: Any, folder: Path, prefix: str, scratch: Path, size: int, rounds: int) -> dict[str, Any]:
    up, down, identical = [], [], True
    for round_number in range(rounds):
        uri = f"{prefix}/round-{round_number}"
        start = time.perf_counter()
        store.upload_tree(folder, uri)
        up.append(size / MB / (time.perf_counter() - start))
        target = scratch / f"down-{round_number}"
        start = time.perf_counter()
        store.download_tree(uri, target)
        down.append(size / MB / (time.perf_counter() - start))
        identical = identical and same_tree(folder, target)
        shutil.rmtree(target)
        store.delete_prefix(uri)
    return {"upload_mb_s": statistics.median(up), "download_mb_s": statistics.median(down), "identical": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every download matched byte for byte")
    args = parser.parse_args()
    if args.quick:
        args.megabytes, args.rounds = 8, 1

    from tuneforge.settings import Settings
    from tuneforge.storage import LocalObjectBackend, ObjectStore
    from tuneforge.storage.s3 import S3ObjectBackend

    port = free_port()
    moto = start_moto(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            size = make_model_folder(root / "model", args.megabytes)
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
            settings = Settings(data_dir=root / "data", object_store="s3")
            local = LocalObjectBackend(root / "objects", [root])
            # moto answers a one-part multipart upload (a file exactly at the threshold) with a composite
            # checksum botocore then checks as a whole-object one and refuses; AWS marks it "-1".
            s3 = S3ObjectBackend(settings)
            s3.client.create_bucket(Bucket="bench")
            rows = {
                "local": measure(ObjectStore(local), root / "model", "s3://bench/models", root, size, args.rounds),
                "s3": measure(ObjectStore(local, s3), root / "model", "s3://bench/models", root, size, args.rounds),
            }
    finally:
        moto.terminate()
        moto.wait(timeout=30)

    print(f"object store: a {size / MB:.0f} MB model folder, {args.rounds} round(s), median MB/s")
    for name, row in rows.items():
        print(f"  {name:<6} upload {row['upload_mb_s']:8.1f} MB/s  download {row['download_mb_s']:8.1f} MB/s")
    ratios = {
        "upload": rows["s3"]["upload_mb_s"] / rows["local"]["upload_mb_s"],
        "download": rows["s3"]["download_mb_s"] / rows["local"]["download_mb_s"],
    }
    print(f"  S3 (moto) / local: upload {ratios['upload']:.2f}x, download {ratios['download']:.2f}x")
    final_json(
        {
            "benchmark": "storage",
            "megabytes": size / MB,
            "rounds": args.rounds,
            "multipart_bytes": settings.s3_multipart_bytes,
            "rows": rows,
            "s3_over_local": ratios,
        }
    )
    if args.check and not all(row["identical"] for row in rows.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
