"""``make demo``: the three customization approaches, end to end through boto3, measured.

Generates data for each approach, starts a real server, uploads the data through ``s3://`` and
creates the jobs with boto3 exactly as user code would:

1. **FINE_TUNING** of forge-small on a support-ticket triage task (labeled conversations);
2. **CONTINUED_PRE_TRAINING** of forge-small on unlabeled documents about a fictional archipelago,
   at the same time (the server runs two single-thread workers on the two cores it assumes);
3. **DISTILLATION** of the fine-tuned model (teacher = that custom model's ARN) into forge-micro,
   from the triage prompts alone;
4. **FINE_TUNING of a real pretrained model**, SmolLM2-135M-Instruct, with default hyperparameters,
   on extracting a sender's name and city into a fixed format. Queued with the others; its held-out
   exact match is measured through Converse before (on demand, while the other jobs train) and
   after (on a provisioned throughput for the custom model).

Then it measures what each bought, on held-out data, and ends with one table: approach, purpose,
data used, what improved (before -> after), job time, inference tokens/s and a caveat. About 400
CPU-seconds in all (the server's workers and engines included), so about five minutes on two free CPU
cores; measured at 9 min 43 s on two cores shared with other work (load average about 10).
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from tuneforge.settings import Settings, child_environment

BASE_MODEL = "tuneforge.forge-small-v1:0:512"
STUDENT_MODEL = "tuneforge.forge-micro-v1:0:512"
BUCKET = "s3://tuneforge-demo"
TEACHER_MAX_TOKENS = 16
"""maxResponseLengthForInference: the triage answers are one word (about 10 byte tokens)."""
SMOLLM2_MODEL = "huggingface.smollm2-135m-instruct-v1:0:8k"
SMOLLM2_MAX_TOKENS = 24
"""maxTokens of each Converse request; an answer is about 6 tokens, a base-model sentence more."""
SMOLLM2_CLIENTS = 8
"""Concurrent Converse requests while measuring SmolLM2: the engine batches them."""
SPEED_TOKENS = 16
SPEED_BATCH = 32
"""The demo times every model on the same batch: SPEED_BATCH prompts, SPEED_TOKENS tokens each."""


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


class JobNotCompleted(RuntimeError):
    """A demo job ended Failed or Stopped; the message says which and why."""


@dataclass
class Row:
    approach: str
    purpose: str
    data: str
    improved: str
    seconds: float
    tokens_per_second: str
    caveat: str


def job_seconds(job: dict[str, Any]) -> float:
    """Create to complete, as the API reports it (validation and data processing included)."""
    created, ended = job["creationTime"], job["endTime"]
    return float((ended - created).total_seconds()) if isinstance(created, datetime) else 0.0


def completes_fact(output: str, answer: str) -> bool:
    """The greedy continuation starts with the answer word (and the word ends there)."""
    return re.match(rf"{re.escape(answer)}\b", output) is not None


@dataclass(frozen=True)
class ConverseScore:
    right: int
    total: int
    tokens_per_second: float
    """Output tokens of all the answers over the wall time of answering them, SMOLLM2_CLIENTS at a time."""


def converse_exact_match(runtime: Any, model_id: str, records: Sequence[dict[str, Any]]) -> ConverseScore:
    """Held-out field-extraction answers right through Converse (greedy), as concurrent clients would ask."""
    from tuneforge.data.tasks import extraction_matches

    def ask(record: dict[str, Any]) -> tuple[bool, int]:
        response = runtime.converse(
            modelId=model_id,
            messages=record["messages"][:1],
            inferenceConfig={"temperature": 0.0, "maxTokens": SMOLLM2_MAX_TOKENS},
        )
        text = response["output"]["message"]["content"][0]["text"]
        expected = record["messages"][1]["content"][0]["text"]
        return extraction_matches(text, expected), int(response["usage"]["outputTokens"])

    started = time.monotonic()
    with ThreadPoolExecutor(SMOLLM2_CLIENTS) as pool:
        results = list(pool.map(ask, records))
    seconds = time.monotonic() - started
    return ConverseScore(
        right=sum(ok for ok, _ in results),
        total=len(results),
        tokens_per_second=sum(tokens for _, tokens in results) / seconds,
    )


def run_demo(data_dir: Path, console: Console) -> int:
    from tuneforge.client import bedrock_client
    from tuneforge.data.tasks import (
        make_conversation_task,
        make_domain_documents,
        make_extraction_task,
        to_prompt_only,
        write_jsonl,
    )
    from tuneforge.jobs import layout
    from tuneforge.progress import wait_for_job
    from tuneforge.services import Services

    started = time.monotonic()
    settings = Settings(data_dir=data_dir, port=free_port(), worker_concurrency=2, worker_threads=1)
    services = Services.create(settings)
    console.rule("[bold]tuneforge demo: fine-tuning, continued pre-training and distillation through the Bedrock API")

    run = time.strftime("%Y%m%d-%H%M%S")
    prefix = f"{BUCKET}/{run}"
    tickets, held_out = make_conversation_task(n_train=400, n_test=100, seed=7, system="")
    validation, test = held_out[:40], held_out[40:]
    documents, test_documents, probes = make_domain_documents(n_train=200, n_test=40, seed=0)
    messages, messages_test = make_extraction_task(n_train=64, n_test=40, seed=0)
    datasets = {
        "messages": messages,
        "tickets": tickets,
        "tickets-validation": validation,
        "documents": documents,
        "documents-validation": test_documents,
        "prompts": [to_prompt_only(record) for record in tickets],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, records in datasets.items():
            services.store.upload_file(write_jsonl(Path(tmp) / f"{name}.jsonl", records), f"{prefix}/{name}.jsonl")
    console.print(f"1. generated data and uploaded it to {prefix}/")
    console.print(
        f"   fine-tuning: {len(tickets)} labeled support tickets, e.g. "
        f"{tickets[0]['messages'][0]['content'][0]['text']!r} -> {tickets[0]['messages'][1]['content'][0]['text']!r}"
    )
    console.print(
        f"   continued pre-training: {len(documents)} unlabeled documents about a fictional archipelago, "
        f"e.g. {documents[0]['input'][:70]!r}..."
    )
    console.print(f"   distillation: the {len(tickets)} tickets' prompts without their answers")
    console.print(
        f"   SmolLM2 fine-tuning: {len(messages)} customer messages, e.g. "
        f"{messages[0]['messages'][0]['content'][0]['text']!r} -> {messages[0]['messages'][1]['content'][0]['text']!r}"
    )

    server = start_server(settings, settings.logs_dir / "demo-server.log")
    try:
        console.print(f"2. server up at {settings.endpoint_url} (data in {settings.data_dir})")
        bedrock = bedrock_client(settings.endpoint_url, settings.region)
        runtime = bedrock_client(settings.endpoint_url, settings.region, "bedrock-runtime", read_timeout=1800)

        def create(kind: str, base: str, **request: Any) -> str:
            name = f"demo-{kind}-{run}"
            arn: str = bedrock.create_model_customization_job(
                jobName=name,
                customModelName=name,
                roleArn=f"arn:aws:iam::{settings.account_id}:role/tuneforge-demo",
                baseModelIdentifier=base,
                outputDataConfig={"s3Uri": f"{prefix}/output/{kind}/"},
                **request,
            )["jobArn"]
            console.print(f"   created {arn}")
            return arn

        def wait(title: str, arn: str) -> dict[str, Any]:
            console.print(f"[bold]{title}[/bold]")
            job = wait_for_job(bedrock, settings.endpoint_url, arn, console, timeout=1800)
            if job["status"] != "Completed":
                raise JobNotCompleted(f"job {arn} {job['status']}: {job.get('failureMessage')}")
            return job

        console.print("3. fine-tuning forge-small and, at the same time, continued pre-training of forge-small")
        ft_arn = create(
            "ft",
            BASE_MODEL,
            customizationType="FINE_TUNING",
            trainingDataConfig={"s3Uri": f"{prefix}/tickets.jsonl"},
            validationDataConfig={"validators": [{"s3Uri": f"{prefix}/tickets-validation.jsonl"}]},
            hyperParameters={"epochCount": "5"},
        )
        cpt_arn = create(
            "cpt",
            BASE_MODEL,
            customizationType="CONTINUED_PRE_TRAINING",
            trainingDataConfig={"s3Uri": f"{prefix}/documents.jsonl"},
            validationDataConfig={"validators": [{"s3Uri": f"{prefix}/documents-validation.jsonl"}]},
            hyperParameters={"epochCount": "4", "batchSize": "4"},
        )
        smollm_arn = create(
            "smollm2-ft",
            SMOLLM2_MODEL,
            customizationType="FINE_TUNING",
            trainingDataConfig={"s3Uri": f"{prefix}/messages.jsonl"},
        )
        console.print(
            f"   and SmolLM2-135M-Instruct with default hyperparameters, queued; meanwhile asking the base model "
            f"the {len(messages_test)} held-out messages through Converse (on demand)"
        )
        smollm_before = converse_exact_match(runtime, SMOLLM2_MODEL, messages_test)
        console.print(f"   SmolLM2 before fine-tuning: {smollm_before.right}/{smollm_before.total} exact")
        ft_job = wait("fine-tuning", ft_arn)
        console.print(
            "4. distilling the fine-tuned model (the teacher, named by its custom model ARN) into forge-micro"
        )
        kd_arn = create(
            "distillation",
            STUDENT_MODEL,
            customizationType="DISTILLATION",
            trainingDataConfig={"s3Uri": f"{prefix}/prompts.jsonl"},
            validationDataConfig={"validators": [{"s3Uri": f"{prefix}/tickets-validation.jsonl"}]},
            customizationConfig={
                "distillationConfig": {
                    "teacherModelConfig": {
                        "teacherModelIdentifier": ft_job["outputModelArn"],
                        "maxResponseLengthForInference": TEACHER_MAX_TOKENS,
                    }
                }
            },
            hyperParameters={"epochCount": "8"},
        )
        cpt_job = wait("continued pre-training", cpt_arn)
        kd_job = wait("distillation", kd_arn)
        smollm_job = wait("SmolLM2 fine-tuning", smollm_arn)
        console.print("5. serving the fine-tuned SmolLM2 on a provisioned throughput and asking it the same messages")
        smollm_after = serve_and_score(bedrock, runtime, smollm_job["outputModelArn"], run, messages_test)
        kd_id = kd_arn.rsplit("/", 1)[-1]
        report_uri = f"{prefix}/output/distillation/{layout.job_folder(kd_id)}/{layout.DISTILLATION_REPORT}"
        report = json.loads(services.store.read_bytes(report_uri))
        ft_dir, cpt_dir, kd_dir = (
            Path(services.custom_models.get(job["outputModelArn"]).weights_path) for job in (ft_job, cpt_job, kd_job)
        )
    except JobNotCompleted as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        server.terminate()
        server.wait(timeout=30)
        services.close()

    console.print("6. measuring each forge model on held-out data")
    measured = measure(settings.models_dir, (ft_dir, cpt_dir, kd_dir), documents, test_documents, probes, test)
    cpt_after = math.exp(cpt_job["validationMetrics"][0]["validationLoss"])
    rows = [
        Row(
            "FINE_TUNING",
            "sharpen a model for a task",
            f"{len(tickets)} labeled tickets",
            f"held-out accuracy {measured.accuracy[0]:.0%} → {measured.accuracy[1]:.0%} ({len(test)} tickets)",
            job_seconds(ft_job),
            f"{measured.speed['ft']:,.0f}",
            "needs labeled examples; teaches a behaviour, not new knowledge",
        ),
        Row(
            "CONTINUED_PRE_TRAINING",
            "update what a model knows from unlabeled text",
            f"{len(documents)} unlabeled documents ({measured.chunked_documents} longer than the context, chunked)",
            f"held-out perplexity {measured.perplexity_before:,.0f} → {cpt_after:.2f}; facts completed "
            f"{measured.facts[0]}/{len(probes)} → {measured.facts[1]}/{len(probes)}",
            job_seconds(cpt_job),
            f"{measured.speed['cpt']:,.0f}",
            "recalls facts in the phrasings it read; for facts that change or must be cited, RAG is the better tool",
        ),
        Row(
            "DISTILLATION",
            "move a large model's skill into a small, cheaper one",
            f"{len(tickets)} prompts, no answers (the teacher wrote them)",
            f"agreement with the teacher {measured.agreement[0]:.0%} → {measured.agreement[1]:.0%}; "
            f"{measured.speed['student'] / measured.speed['ft']:.1f}x the teacher's tokens/s with "
            f"{report['student']['parameters'] / report['teacher']['parameters']:.0%} of its parameters",
            job_seconds(kd_job),
            f"{measured.speed['student']:,.0f} (teacher {measured.speed['ft']:,.0f})",
            "the student is at best as good as its teacher; it copies the teacher's mistakes too",
        ),
        Row(
            "FINE_TUNING (pretrained SmolLM2-135M-Instruct)",
            "make a real instruct model answer in a fixed format",
            f"{len(messages)} labeled messages, default hyperparameters (LoRA)",
            f"held-out exact match {smollm_before.right}/{smollm_before.total} → {smollm_after.right}/"
            f"{smollm_after.total} through Converse",
            job_seconds(smollm_job),
            f"{smollm_after.tokens_per_second:,.0f} (served, {SMOLLM2_CLIENTS} concurrent requests)",
            "a pretrained model learns a format from few examples; it cannot learn facts it was never shown",
        ),
    ]

    table = Table(
        "approach",
        "purpose",
        "data used",
        "what improved (before → after)",
        "job time",
        "inference tokens/s",
        "caveat",
        title="three customization approaches and a pretrained model's fine-tune, measured on held-out data",
        show_lines=True,
    )
    for row in rows:
        table.add_row(
            row.approach, row.purpose, row.data, row.improved, f"{row.seconds:.0f} s", row.tokens_per_second, row.caveat
        )
    console.print(table)
    console.print(
        f"job time = create to complete through the API (jobs shared the machine, two at a time, queue included); "
        f"tokens/s = greedy generation in this process, {SPEED_BATCH} prompts x {SPEED_TOKENS} tokens, 1 thread, "
        "fastest of 5 runs."
    )
    console.print(f"distillation report ({report_uri}): {report['summary']}")
    console.print(f"done in {time.monotonic() - started:.0f} s")
    improved = (
        measured.accuracy[1] > measured.accuracy[0]
        and cpt_after < measured.perplexity_before
        and measured.facts[1] > measured.facts[0]
        and measured.agreement[1] > measured.agreement[0]
        and smollm_after.right > smollm_before.right
    )
    return 0 if improved else 1


def serve_and_score(
    bedrock: Any, runtime: Any, model_arn: str, run: str, records: Sequence[dict[str, Any]]
) -> ConverseScore:
    """Buy a provisioned throughput for a custom model (as Bedrock requires), score it, then release it."""
    pt_arn: str = bedrock.create_provisioned_model_throughput(
        provisionedModelName=f"demo-smollm2-{run}", modelId=model_arn, modelUnits=1
    )["provisionedModelArn"]
    try:
        deadline = time.monotonic() + 1800
        status = "Creating"
        while status not in ("InService", "Failed") and time.monotonic() < deadline:
            time.sleep(0.5)
            status = bedrock.get_provisioned_model_throughput(provisionedModelId=pt_arn)["status"]
        if status != "InService":
            raise JobNotCompleted(f"provisioned throughput {pt_arn} is {status}")
        return converse_exact_match(runtime, pt_arn, records)
    finally:
        bedrock.delete_provisioned_model_throughput(provisionedModelId=pt_arn)


@dataclass
class Measured:
    accuracy: tuple[float, float]
    """Fine-tuning: held-out exact match of the base model, then of the fine-tuned one."""
    perplexity_before: float
    """Continued pre-training: the base model's perplexity on the held-out documents."""
    chunked_documents: int
    """Continued pre-training: training documents longer than the context (trained on in several chunks)."""
    facts: tuple[int, int]
    """Continued pre-training: probed facts completed by the base model, then the trained one."""
    agreement: tuple[float, float]
    """Distillation: exact-match agreement with the teacher, of the base student, then the trained one."""
    speed: dict[str, float]
    """Generation tokens/s of the fine-tuned ("ft"), pre-trained ("cpt") and distilled ("student") models."""


def measure(
    models_dir: Path,
    custom: tuple[Path, Path, Path],
    documents: Sequence[dict[str, Any]],
    test_documents: Sequence[dict[str, Any]],
    probes: Sequence[tuple[str, str]],
    test: Sequence[dict[str, Any]],
) -> Measured:
    """Before/after numbers, on held-out data, for the three custom models (fine-tuned, pre-trained, distilled).

    Generation is timed on one thread, as the jobs' workers ran, on the same batch for every model.
    """
    import torch

    from tuneforge.data.tasks import write_jsonl
    from tuneforge.engine.generation import exact_match_accuracy, generate, measure_generation_speed
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.folders import load_for_inference
    from tuneforge.model.prompts import render_prompt
    from tuneforge.recipes.loop import mean_token_loss
    from tuneforge.recipes.tokenising import encode_documents

    torch.set_num_threads(1)
    base, tokenizer = load_for_inference(ensure_builtin("forge-small", models_dir), models_dir)
    micro, _ = load_for_inference(ensure_builtin("forge-micro", models_dir), models_dir)
    tuned, pretrained, student = (load_for_inference(folder, models_dir)[0] for folder in custom)

    with tempfile.TemporaryDirectory() as tmp:
        windows, _ = encode_documents(write_jsonl(Path(tmp) / "test.jsonl", test_documents), tokenizer, 512, 64)
        chunked = sum(
            len(encode_documents(write_jsonl(Path(tmp) / "one.jsonl", [document]), tokenizer, 512, 64)[0]) > 1
            for document in documents
        )
    perplexity_before = math.exp(mean_token_loss(base, windows, tokenizer.pad_token_id))

    def facts(model: Any) -> int:
        outputs = generate(model, tokenizer, [prompt for prompt, _ in probes], max_new_tokens=16)
        return sum(completes_fact(output, answer) for output, (_, answer) in zip(outputs, probes, strict=True))

    prompts = [render_prompt(record) for record in test]

    def answers(model: Any) -> list[str]:
        return [text.strip() for text in generate(model, tokenizer, prompts, max_new_tokens=TEACHER_MAX_TOKENS)]

    teacher_answers = answers(tuned)

    def agreement(model: Any) -> float:
        return sum(a == b for a, b in zip(answers(model), teacher_answers, strict=True)) / len(prompts)

    timed = prompts[:SPEED_BATCH]
    return Measured(
        accuracy=(exact_match_accuracy(base, tokenizer, test), exact_match_accuracy(tuned, tokenizer, test)),
        perplexity_before=perplexity_before,
        chunked_documents=chunked,
        facts=(facts(base), facts(pretrained)),
        agreement=(agreement(micro), agreement(student)),
        speed={
            name: measure_generation_speed(model, tokenizer, timed, SPEED_TOKENS, repeats=5).tokens_per_second
            for name, model in (("ft", tuned), ("cpt", pretrained), ("student", student))
        },
    )
