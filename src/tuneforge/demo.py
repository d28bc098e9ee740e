"""``make demo``: the main job, end to end, on embedded defaults.

Generates a labeled task the built-in model cannot do, starts a real server, uploads the data
through ``s3://``, creates a FINE_TUNING job with boto3, waits with live progress, then prints
held-out exact-match accuracy before and after, the loss curve and where the outputs are.
"""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from tuneforge.settings import Settings, child_environment

BASE_MODEL = "tuneforge.forge-small-v1:0:512"
BUCKET = "s3://tuneforge-demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``tuneforge serve`` as a subprocess and wait until it answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli.main", "serve"],
            env=child_environment(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{settings.endpoint_url}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"server did not start within 60 s; see {log_path}")


def text_chart(values: list[float], width: int = 60, height: int = 8) -> str:
    """A small terminal line chart: one column per bucket of steps, '•' at the bucket's mean."""
    if not values:
        return "(no data)"
    buckets = [values[i * len(values) // width : (i + 1) * len(values) // width] for i in range(width)]
    means = [sum(b) / len(b) for b in buckets if b]
    top, bottom = max(means), min(means)
    span = (top - bottom) or 1.0
    rows = []
    for r in range(height):
        level = top - span * r / (height - 1)
        label = f"{level:7.3f} │"
        line = "".join("•" if round((top - m) / span * (height - 1)) == r else " " for m in means)
        rows.append(label + line)
    rows.append(" " * 8 + "└" + "─" * len(means))
    rows.append(" " * 9 + f"step 0{' ' * max(1, len(means) - 14)}step {len(values) - 1}")
    return "\n".join(rows)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def run_demo(data_dir: Path, console: Console) -> int:
    from tuneforge.client import bedrock_client
    from tuneforge.data.tasks import make_classification_task, write_jsonl
    from tuneforge.progress import wait_for_job
    from tuneforge.services import Services
    from tuneforge.serving.generation import exact_match_accuracy, load_for_inference

    started = time.monotonic()
    settings = Settings(data_dir=data_dir, port=free_port())
    services = Services.create(settings)
    console.rule("[bold]tuneforge demo: fine-tune a built-in model through the Bedrock API")

    train, test = make_classification_task(n_train=400, n_test=100, seed=7)
    validation, test = test[:40], test[40:]
    run = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        for name, records in (("train", train), ("validation", validation)):
            path = Path(tmp) / f"{name}.jsonl"
            write_jsonl(path, records)
            services.store.upload_file(path, f"{BUCKET}/{run}/{name}.jsonl")
    console.print(
        f"1. generated a support-ticket triage task: {len(train)} training, {len(validation)} validation, "
        f"{len(test)} held-out records; uploaded to {BUCKET}/{run}/"
    )
    console.print(f"   e.g. {train[0]['prompt']!r} -> {train[0]['completion']!r}")

    server = start_server(settings, settings.logs_dir / "demo-server.log")
    try:
        console.print(f"2. server up at {settings.endpoint_url} (data in {settings.data_dir})")
        bedrock = bedrock_client(settings.endpoint_url, settings.region)
        job_name = f"demo-triage-{run}"
        arn = bedrock.create_model_customization_job(
            jobName=job_name,
            customModelName=f"triage-{run}",
            roleArn=f"arn:aws:iam::{settings.account_id}:role/tuneforge-demo",
            baseModelIdentifier=BASE_MODEL,
            customizationType="FINE_TUNING",
            trainingDataConfig={"s3Uri": f"{BUCKET}/{run}/train.jsonl"},
            validationDataConfig={"validators": [{"s3Uri": f"{BUCKET}/{run}/validation.jsonl"}]},
            outputDataConfig={"s3Uri": f"{BUCKET}/{run}/output/"},
        )["jobArn"]
        console.print(f"3. created job {arn}")
        job = wait_for_job(bedrock, settings.endpoint_url, arn, console, timeout=1800)
        if job["status"] != "Completed":
            console.print(f"[red]job {job['status']}[/red]: {job.get('failureMessage')}")
            return 1
        model = bedrock.get_custom_model(modelIdentifier=job["outputModelArn"])
    finally:
        server.terminate()
        server.wait(timeout=30)

    console.print(f"4. custom model {model['modelArn']}")
    job_id = arn.rsplit("/", 1)[-1]
    prefix = f"{BUCKET}/{run}/output/model-customization-job-{job_id}"
    steps = read_csv(services.store.read_bytes(f"{prefix}/training_artifacts/step_wise_training_metrics.csv").decode())
    losses = [float(row["training_loss"]) for row in steps]

    base_dir = settings.models_dir / "builtin" / "forge-small"
    weights = services.custom_models.get(model["modelArn"]).weights_path
    base_model, tokenizer = load_for_inference(base_dir, settings.models_dir)
    before = exact_match_accuracy(base_model, tokenizer, test)
    tuned_model, tuned_tokenizer = load_for_inference(Path(weights), settings.models_dir)
    after = exact_match_accuracy(tuned_model, tuned_tokenizer, test)

    console.print("\n[bold]training loss[/bold]")
    console.print(text_chart(losses))
    table = Table("metric", "base model", "fine-tuned", title="held-out exact match")
    table.add_row(f"accuracy on {len(test)} unseen tickets", f"{before:.0%}", f"[green]{after:.0%}[/green]")
    table.add_row(
        "loss (train / validation)",
        "-",
        f"{model['trainingMetrics']['trainingLoss']:.4f} / {model['validationMetrics'][0]['validationLoss']:.4f}",
    )
    console.print(table)
    outputs: dict[str, Any] = {
        "metrics": f"{prefix}/training_artifacts/step_wise_training_metrics.csv",
        "validation": f"{prefix}/validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv",
        "objects on disk": str(services.store.path(f"{BUCKET}/{run}/output")),
        "weights (safetensors)": weights,
    }
    for label, where in outputs.items():
        console.print(f"  {label}: {where}")
    console.print(f"done in {time.monotonic() - started:.0f} s")
    services.close()
    return 0 if after > before else 1
