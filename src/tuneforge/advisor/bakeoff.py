"""``tuneforge advise --try``: a small bake-off of the approaches, through the public APIs only.

Every arm ends as answers to the same held-out prompts, scored by the same evaluation job
(``Builtin.Accuracy`` of the task type the user names), so the quality column compares like with like:

* ``PROMPT_ONLY`` — the base model answers the prompt as it is (an evaluation job with the base model);
* ``FINE_TUNING`` — a FINE_TUNING job of the base model on the training sample, then its evaluation;
* ``CONTINUED_PRE_TRAINING`` — a CONTINUED_PRE_TRAINING job on the documents, then its evaluation;
* ``RAG`` — a knowledge base (bedrock-agent CreateKnowledgeBase, CreateDataSource, StartIngestionJob)
  over the documents, RetrieveAndGenerate (bedrock-agent-runtime) with the generator model for every
  held-out prompt, and those answers scored as a ``precomputedInferenceSource``;
* ``DISTILLATION`` — where a teacher is named, a DISTILLATION job into the student model on the
  training prompts, then its evaluation.

**Freshness.** With ``updated_documents`` (the same documents after some facts changed) the
bake-off reproduces a user's real situation: continued pre-training learned the documents as they
were when it trained; the knowledge base re-ingests the current ones, as a RAG deployment does when
a document changes; the held-out references hold the current facts.

**Budget.** The budget is stated before anything starts. The training sample is capped at 40
records per budget minute and epochs are halved under 2 minutes; a training job still running after
60% of the budget is stopped and its arm marked ``cut by the budget``, as is an evaluation (or a
RetrieveAndGenerate pass) still running when scoring ends, 30 s (at most a tenth of the budget)
before the budget does, which leaves the stops and the clean-up inside it. The RetrieveAndGenerate
pass runs on a thread of its own, so the other arms are polled, stopped and scored meanwhile.
Everything the bake-off created (custom models, the knowledge base and its data source, evaluation
jobs) is deleted at the end unless ``keep`` is set; the data and results under the ``s3://`` prefix
stay, for inspection.

**Columns.** ``quality``: the evaluation job's ``Builtin.Accuracy`` on the held-out set (and per
category). ``p50 latency``: the evaluation job's ``latencyP50Ms`` (answers in one continuous batch);
for RAG, the median RetrieveAndGenerate round trip seen by this client, one request at a time.
``training time``: create to end of the customization job (or of the ingestion job, for RAG).
``serving $/1k requests``: 1,000 x (mean input tokens x input price + mean output tokens x output
price) / 1,000, at the on-demand token prices of the served model's base (``token_prices``, else
``price_per_1k_input_tokens`` / ``price_per_1k_output_tokens``); output tokens are the evaluation
job's ``outputTokens``; input tokens are counted as UTF-8 bytes of the prompt (for RAG, prompt plus
retrieved passages): exact for the byte-level built-in models, an upper bound for others.
``total $``: (training time + evaluation time) x ``price_per_compute_hour`` / 3,600, plus the
serving cost of the held-out requests themselves.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneforge.advisor.profile import Example
from tuneforge.advisor.rules import (
    CONTINUED_PRE_TRAINING,
    DISTILLATION,
    FINE_TUNING,
    PROMPT_ONLY,
    RAG,
    Goals,
)
from tuneforge.errors import ValidationException
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore

TERMINAL = ("Completed", "Failed", "Stopped")
TRAINING_SHARE = 0.6
"""Training jobs still running after this share of the budget are stopped: the rest is for scoring."""
RECORDS_PER_MINUTE = 40
CLEAN_UP_RESERVE_S = 30.0
"""Scoring ends this long (at most a tenth of the budget) before the budget does: stopping jobs and
deleting what the bake-off created takes a few seconds each, inside the budget."""
ACCURACY = "Builtin.Accuracy"
RAG_PROMPT_TEMPLATE = (
    "Search results:\n$search_results$\n\nUsing only the search results, answer in as few words as possible.\n$query$"
)
"""Bedrock's placeholders. The held-out prompt is sent as it is (a question, or a sentence to complete);
asking for a short answer keeps a chatty generator's answer comparable with the references."""


@dataclass(frozen=True)
class Plan:
    budget_s: float
    arms: list[str]
    base_model: str
    student_model: str
    generator: str
    teacher: str | None
    train: list[Example]
    held_out: list[Example]
    documents: list[Example]
    rag_documents: list[Example]
    epochs: dict[str, int]
    task_type: str
    max_tokens: int
    embedding_model: str | None = None
    rag_results: int = 5
    """RetrieveAndGenerate's numberOfResults (Bedrock's default 5)."""
    updated: bool = False
    """RAG indexes the updated documents, continued pre-training the original ones."""

    def describe(self) -> list[str]:
        lines = [
            f"budget: {self.budget_s / 60:g} min; training jobs still running after "
            f"{TRAINING_SHARE * self.budget_s / 60:.1f} min are stopped, scoring ends at the budget",
            f"held-out set: {len(self.held_out)} labeled records, scored by one evaluation job per arm "
            f"({self.task_type}, {ACCURACY}, maxTokens {self.max_tokens})",
        ]
        what = {
            PROMPT_ONLY: f"{self.base_model} answers the prompts as they are",
            FINE_TUNING: f"FINE_TUNING of {self.base_model} on {len(self.train)} records, "
            f"{self.epochs[FINE_TUNING]} epochs",
            CONTINUED_PRE_TRAINING: f"CONTINUED_PRE_TRAINING of {self.base_model} on {len(self.documents)} documents, "
            f"{self.epochs[CONTINUED_PRE_TRAINING]} epochs",
            RAG: f"knowledge base over {len(self.rag_documents)} documents"
            + (" (the updated ones)" if self.updated else "")
            + f", RetrieveAndGenerate with {self.generator} (top {self.rag_results} passages)",
            DISTILLATION: f"DISTILLATION of {self.teacher} into {self.student_model} on {len(self.train)} prompts, "
            f"{self.epochs[DISTILLATION]} epochs",
        }
        return lines + [f"  {arm}: {what[arm]}" for arm in self.arms]


def make_plan(
    examples: Sequence[Example],
    documents: Sequence[Example],
    arms: Sequence[str],
    goals: Goals,
    *,
    budget_minutes: float,
    base_model: str,
    student_model: str,
    generator: str | None,
    task_type: str,
    updated_documents: Sequence[Example] | None = None,
    held_out: int | None = None,
    rag_results: int = 5,
    seed: int = 13,
) -> Plan:
    """Split DATA into a training sample and a held-out set (seeded) and size the jobs to the budget.

    ``held_out``: how many labeled records to hold out (default a fifth, 2 to 50). Arms that train on
    labels (fine-tuning, distillation) are left out when fewer than 4 records remain for training."""
    if budget_minutes <= 0:
        raise ValidationException("--budget-minutes must be positive")
    labeled = [example for example in examples if example.answer is not None]
    if len(labeled) < 4:
        raise ValidationException(
            "the bake-off scores every arm on held-out labeled records: DATA needs at least 4 labeled records"
        )
    shuffled = list(labeled)
    random.Random(seed).shuffle(shuffled)
    held = held_out if held_out is not None else max(2, min(50, len(shuffled) // 5))
    if not 1 <= held <= len(shuffled):
        raise ValidationException(f"--held-out must be between 1 and the {len(shuffled)} labeled records")
    train = shuffled[held:][: max(8, int(RECORDS_PER_MINUTE * budget_minutes))]
    if len(train) < 4:
        arms = [arm for arm in arms if arm not in (FINE_TUNING, DISTILLATION)]
    short = budget_minutes < 2
    longest = max(len((example.answer or "").encode("utf-8")) for example in labeled)
    return Plan(
        budget_s=budget_minutes * 60,
        arms=list(arms),
        base_model=base_model,
        student_model=student_model,
        generator=generator or base_model,
        teacher=goals.teacherModelIdentifier,
        train=train,
        held_out=shuffled[:held],
        documents=list(documents),
        rag_documents=list(updated_documents) if updated_documents is not None else list(documents),
        epochs={
            FINE_TUNING: 3 if short else 5,
            CONTINUED_PRE_TRAINING: 4 if short else 8,
            DISTILLATION: 3 if short else 5,
        },
        task_type=task_type,
        max_tokens=min(64, max(8, longest + 4)),
        rag_results=rag_results,
        updated=updated_documents is not None,
    )


@dataclass
class Arm:
    name: str
    price_model: str
    status: str = "running"
    model: str | None = None
    training_job: str | None = None
    training_s: float = 0.0
    evaluation_job: str | None = None
    evaluation_s: float = 0.0
    quality: float | None = None
    categories: dict[str, float] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    serving_per_1k: float | None = None
    total_cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "approach": self.name,
            "status": self.status,
            "model": self.model,
            "quality": self.quality,
            "qualityByCategory": self.categories,
            "latencyP50Ms": self.latency_p50_ms,
            "trainingSeconds": round(self.training_s, 1),
            "servingCostPer1kRequests": self.serving_per_1k,
            "totalCost": self.total_cost,
        }


@dataclass
class Clients:
    bedrock: Any
    agent: Any
    agent_runtime: Any


def _seconds(started: object, ended: object) -> float:
    if isinstance(started, datetime) and isinstance(ended, datetime):
        return max(0.0, (ended - started).total_seconds())
    return 0.0


class BakeOff:
    """One bake-off run. ``say`` prints progress lines for people (the CLI passes the console's print)."""

    def __init__(
        self,
        plan: Plan,
        clients: Clients,
        store: ObjectStore,
        settings: Settings,
        say: Callable[[str], None],
        goals: Goals | None = None,
    ) -> None:
        self.plan, self.clients, self.store, self.settings, self.say = plan, clients, store, settings, say
        self.goals = goals or Goals()
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{random.randrange(16**4):04x}"
        self.prefix = f"s3://tuneforge-advise/{self.run_id}"
        self.role = f"arn:aws:iam::{settings.account_id}:role/tuneforge-advise"
        self.created: list[tuple[str, str]] = []
        self.arms: dict[str, Arm] = {}
        self.rag_state: dict[str, Any] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="bake-off-rag")

    # -- data ---------------------------------------------------------------------------------------

    def _write(self, name: str, records: Sequence[dict[str, Any]]) -> str:
        uri = f"{self.prefix}/{name}"
        self.store.write_bytes(uri, b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records))
        return uri

    def _upload(self) -> None:
        plan = self.plan
        self._write("train.jsonl", [{"prompt": e.prompt, "completion": e.answer} for e in plan.train])
        self._write(
            "prompts.jsonl", [{"messages": [{"role": "user", "content": [{"text": e.prompt}]}]} for e in plan.train]
        )
        self._write("held-out.jsonl", [self._reference(e) for e in plan.held_out])
        if plan.documents:
            self._write("documents.jsonl", [{"input": e.prompt} for e in plan.documents])
        for index, document in enumerate(plan.rag_documents):
            self.store.write_bytes(f"{self.prefix}/knowledge/doc-{index:05d}.txt", document.prompt.encode("utf-8"))

    @staticmethod
    def _reference(example: Example) -> dict[str, Any]:
        record: dict[str, Any] = {"prompt": example.prompt, "referenceResponse": (example.answer or "").strip()}
        if example.category:
            record["category"] = example.category
        return record

    # -- the run ------------------------------------------------------------------------------------

    def run(self, *, keep: bool = False) -> dict[str, Any]:
        plan = self.plan
        self.started = time.monotonic()
        self.train_deadline = self.started + TRAINING_SHARE * plan.budget_s
        self.deadline = self.started + plan.budget_s - min(CLEAN_UP_RESERVE_S, 0.1 * plan.budget_s)
        self._upload()
        self.say(f"data under {self.prefix}/")
        try:
            for name in plan.arms:
                self._start(name)
            while any(arm.status == "running" for arm in self.arms.values()):
                for arm in list(self.arms.values()):
                    if arm.status == "running":
                        self._advance(arm)
                time.sleep(0.5)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            kept = self._clean_up(keep)
        for arm in self.arms.values():
            self._costs(arm)
        elapsed = time.monotonic() - self.started
        return {
            "budgetSeconds": plan.budget_s,
            "elapsedSeconds": round(elapsed, 1),
            "withinBudget": elapsed <= plan.budget_s,
            "prefix": self.prefix,
            "heldOut": len(plan.held_out),
            "arms": [self.arms[name].to_dict() for name in plan.arms],
            "recommendation": recommend(list(self.arms.values()), self.goals),
            "kept": kept,
        }

    def _start(self, name: str) -> None:
        plan = self.plan
        price_model = {DISTILLATION: plan.student_model, RAG: plan.generator}.get(name, plan.base_model)
        arm = self.arms[name] = Arm(name, price_model)
        try:
            if name == PROMPT_ONLY:
                arm.model = plan.base_model
                self._evaluate(arm)
            elif name == FINE_TUNING:
                self._customize(arm, "FINE_TUNING", plan.base_model, "train.jsonl", plan.epochs[FINE_TUNING])
            elif name == CONTINUED_PRE_TRAINING:
                self._customize(
                    arm,
                    "CONTINUED_PRE_TRAINING",
                    plan.base_model,
                    "documents.jsonl",
                    plan.epochs[CONTINUED_PRE_TRAINING],
                )
            elif name == DISTILLATION:
                assert plan.teacher is not None
                self._customize(
                    arm,
                    "DISTILLATION",
                    plan.student_model,
                    "prompts.jsonl",
                    plan.epochs[DISTILLATION],
                    customizationConfig={
                        "distillationConfig": {
                            "teacherModelConfig": {
                                "teacherModelIdentifier": plan.teacher,
                                "maxResponseLengthForInference": plan.max_tokens,
                            }
                        }
                    },
                )
            elif name == RAG:
                self._start_knowledge_base(arm)
        except Exception as exc:  # one arm's refusal must not end the others
            arm.status = f"failed: {_message(exc)}"
            self.say(f"{name}: {arm.status}")

    def _customize(self, arm: Arm, kind: str, base: str, data: str, epochs: int, **extra: Any) -> None:
        name = f"advise-{arm.name.lower().replace('_', '-')}-{self.run_id}"
        arm.training_job = self.clients.bedrock.create_model_customization_job(
            jobName=name,
            customModelName=name,
            roleArn=self.role,
            baseModelIdentifier=base,
            customizationType=kind,
            trainingDataConfig={"s3Uri": f"{self.prefix}/{data}"},
            outputDataConfig={"s3Uri": f"{self.prefix}/output/{arm.name.lower()}/"},
            hyperParameters={"epochCount": str(epochs)},
            **extra,
        )["jobArn"]
        self.say(f"{arm.name}: started {arm.training_job}")

    def _evaluate(self, arm: Arm, precomputed: bool = False) -> None:
        assert arm.model is not None
        name = f"advise-{arm.name.lower().replace('_', '-')}-{self.run_id}"
        dataset = f"{self.prefix}/rag-answers.jsonl" if precomputed else f"{self.prefix}/held-out.jsonl"
        model: dict[str, Any] = (
            {"precomputedInferenceSource": {"inferenceSourceIdentifier": arm.model}}
            if precomputed
            else {
                "bedrockModel": {
                    "modelIdentifier": arm.model,
                    "inferenceParams": json.dumps({"inferenceConfig": {"maxTokens": self.plan.max_tokens}}),
                }
            }
        )
        arm.evaluation_job = self.clients.bedrock.create_evaluation_job(
            jobName=name,
            roleArn=self.role,
            applicationType="ModelEvaluation",
            evaluationConfig={
                "automated": {
                    "datasetMetricConfigs": [
                        {
                            "taskType": self.plan.task_type,
                            "dataset": {"name": "held-out", "datasetLocation": {"s3Uri": dataset}},
                            "metricNames": [ACCURACY],
                        }
                    ]
                }
            },
            inferenceConfig={"models": [model]},
            outputDataConfig={"s3Uri": f"{self.prefix}/evaluations/"},
        )["jobArn"]
        self.created.append(("evaluation", arm.evaluation_job))

    def _advance(self, arm: Arm) -> None:
        try:
            if arm.evaluation_job is not None:
                self._poll_evaluation(arm)
            elif arm.training_job is not None:
                self._poll_training(arm)
            elif arm.name == RAG:
                self._advance_rag(arm)
        except Exception as exc:  # one arm's failure must not end the others
            arm.status = f"failed: {_message(exc)}"
            self.say(f"{arm.name}: {arm.status}")

    def _poll_training(self, arm: Arm) -> None:
        assert arm.training_job is not None
        job = self.clients.bedrock.get_model_customization_job(jobIdentifier=arm.training_job)
        if job["status"] == "Completed":
            arm.training_s = _seconds(job.get("creationTime"), job.get("endTime"))
            arm.model = job["outputModelArn"]
            self.created.append(("custom-model", job["outputModelArn"]))
            self.say(f"{arm.name}: trained in {arm.training_s:.0f} s; evaluating")
            self._evaluate(arm)
        elif job["status"] in ("Failed", "Stopped"):
            arm.status = f"failed: {job.get('failureMessage') or job['status']}"
            self.say(f"{arm.name}: {arm.status}")
        elif time.monotonic() > self.train_deadline and job["status"] == "InProgress":
            self.clients.bedrock.stop_model_customization_job(jobIdentifier=arm.training_job)
            created = job.get("creationTime")
            if isinstance(created, datetime):
                arm.training_s = _seconds(created, datetime.now(created.tzinfo))
            arm.status = "cut by the budget"
            self.say(f"{arm.name}: training would overrun the budget; stopped {arm.training_job}")

    def _poll_evaluation(self, arm: Arm) -> None:
        assert arm.evaluation_job is not None
        job = self.clients.bedrock.get_evaluation_job(jobIdentifier=arm.evaluation_job)
        if job["status"] == "Completed":
            arm.evaluation_s = _seconds(job.get("creationTime"), job.get("lastModifiedTime"))
            self._read_summary(arm, job["jobName"])
            arm.status = "measured"
            self.say(f"{arm.name}: quality {arm.quality:.2f}")
        elif job["status"] in ("Failed", "Stopped"):
            arm.status = f"failed: {'; '.join(job.get('failureMessages') or [job['status']])}"
            self.say(f"{arm.name}: {arm.status}")
        elif time.monotonic() > self.deadline and job["status"] == "InProgress":
            self.clients.bedrock.stop_evaluation_job(jobIdentifier=arm.evaluation_job)
            arm.status = "cut by the budget"
            self.say(f"{arm.name}: scoring would overrun the budget; stopped {arm.evaluation_job}")

    def _read_summary(self, arm: Arm, job_name: str) -> None:
        assert arm.evaluation_job is not None
        job_id = arm.evaluation_job.rsplit("/", 1)[-1]
        summary = json.loads(self.store.read_bytes(f"{self.prefix}/evaluations/{job_name}/{job_id}/summary.json"))
        (row,) = summary["results"]
        arm.quality = float(row["metrics"][ACCURACY])
        arm.categories = {name: float(values[ACCURACY]) for name, values in (row.get("categories") or {}).items()}
        if row.get("latencyP50Ms") is not None:
            arm.latency_p50_ms = float(row["latencyP50Ms"])
        records = max(1, int(row.get("records") or len(self.plan.held_out)))
        arm.output_tokens = float(row.get("outputTokens") or 0) / records
        if arm.name != RAG:
            arm.input_tokens = statistics.mean(len(e.prompt.encode("utf-8")) for e in self.plan.held_out)

    # -- RAG ----------------------------------------------------------------------------------------

    def _start_knowledge_base(self, arm: Arm) -> None:
        agent, name = self.clients.agent, f"advise-{self.run_id}"
        embedding = self.plan.embedding_model or _embedding_model(self.clients.bedrock, self.settings.region)
        kb = agent.create_knowledge_base(
            name=name,
            roleArn=self.role,
            knowledgeBaseConfiguration={
                "type": "VECTOR",
                "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": embedding},
            },
        )["knowledgeBase"]
        self.created.append(("knowledge-base", kb["knowledgeBaseId"]))
        bucket, _, key = self.prefix.removeprefix("s3://").partition("/")
        source = agent.create_data_source(
            knowledgeBaseId=kb["knowledgeBaseId"],
            name=name,
            dataSourceConfiguration={
                "type": "S3",
                "s3Configuration": {"bucketArn": f"arn:aws:s3:::{bucket}", "inclusionPrefixes": [f"{key}/knowledge/"]},
            },
        )["dataSource"]
        ingestion = agent.start_ingestion_job(
            knowledgeBaseId=kb["knowledgeBaseId"], dataSourceId=source["dataSourceId"]
        )["ingestionJob"]
        self.rag_state = {
            "kb": kb["knowledgeBaseId"],
            "kbArn": kb.get("knowledgeBaseArn", kb["knowledgeBaseId"]),
            "source": source["dataSourceId"],
            "ingestion": ingestion["ingestionJobId"],
        }
        self.say(f"RAG: knowledge base {kb['knowledgeBaseId']}, ingesting {len(self.plan.rag_documents)} documents")

    def _advance_rag(self, arm: Arm) -> None:
        """Ingestion, then the RetrieveAndGenerate pass on a thread of its own (so the other arms' jobs
        are still polled, stopped and scored meanwhile), then the precomputed evaluation."""
        pass_ = self.rag_state.get("pass")
        if pass_ is not None:
            if pass_.done():
                self.rag_state.pop("pass")
                if pass_.result():
                    self._evaluate(arm, precomputed=True)
                else:
                    arm.status = "cut by the budget"
            return
        state = self.rag_state
        job = self.clients.agent.get_ingestion_job(
            knowledgeBaseId=state["kb"], dataSourceId=state["source"], ingestionJobId=state["ingestion"]
        )["ingestionJob"]
        if job["status"] == "FAILED":
            arm.status = f"failed: ingestion {'; '.join(job.get('failureReasons') or ['failed'])}"
            return
        if time.monotonic() > self.deadline:
            arm.status = "cut by the budget"
            return
        if job["status"] != "COMPLETE":
            return
        arm.training_s = _seconds(job.get("startedAt"), job.get("updatedAt"))
        self.say(f"RAG: ingested in {arm.training_s:.1f} s; RetrieveAndGenerate for {len(self.plan.held_out)} prompts")
        self.rag_state["pass"] = self.pool.submit(self._rag_pass, arm)

    def _rag_pass(self, arm: Arm) -> bool:
        """Answer every held-out prompt; False when the budget ends first."""
        state = self.rag_state
        records, latencies, inputs = [], [], []
        for example in self.plan.held_out:
            if time.monotonic() > self.deadline:
                return False
            asked = time.monotonic()
            answer = self.clients.agent_runtime.retrieve_and_generate(
                input={"text": example.prompt},
                retrieveAndGenerateConfiguration={
                    "type": "KNOWLEDGE_BASE",
                    "knowledgeBaseConfiguration": {
                        "knowledgeBaseId": state["kb"],
                        "modelArn": self.plan.generator,
                        "retrievalConfiguration": {
                            "vectorSearchConfiguration": {"numberOfResults": self.plan.rag_results}
                        },
                        "generationConfiguration": {
                            "promptTemplate": {"textPromptTemplate": RAG_PROMPT_TEMPLATE},
                            "inferenceConfig": {"textInferenceConfig": {"maxTokens": self.plan.max_tokens}},
                        },
                    },
                },
            )
            latencies.append((time.monotonic() - asked) * 1000)
            passages = [
                ref.get("content", {}).get("text", "")
                for citation in answer.get("citations", [])
                for ref in citation.get("retrievedReferences", [])
            ]
            inputs.append(len((example.prompt + "".join(passages)).encode("utf-8")))
            records.append(
                {
                    **self._reference(example),
                    "modelResponses": [
                        {"response": completion(example.prompt, answer["output"]["text"]), "modelIdentifier": "rag"}
                    ],
                }
            )
        self._write("rag-answers.jsonl", records)
        arm.model, arm.latency_p50_ms, arm.input_tokens = "rag", statistics.median(latencies), statistics.mean(inputs)
        return True

    # -- costs, clean-up ----------------------------------------------------------------------------

    def _costs(self, arm: Arm) -> None:
        if arm.status != "measured":
            return
        price = self.settings.token_price(arm.price_model)
        arm.serving_per_1k = round(arm.input_tokens * price.input + arm.output_tokens * price.output, 6)
        compute = (arm.training_s + arm.evaluation_s) * self.settings.price_per_compute_hour / 3600
        arm.total_cost = round(compute + arm.serving_per_1k * len(self.plan.held_out) / 1000, 6)

    def _clean_up(self, keep: bool) -> list[str]:
        if keep:
            return [identifier for _, identifier in self.created]
        kept: list[str] = []
        for kind, identifier in reversed(self.created):
            try:
                if kind == "evaluation":
                    _wait_ended(self.clients.bedrock.get_evaluation_job, jobIdentifier=identifier)
                    self.clients.bedrock.batch_delete_evaluation_job(jobIdentifiers=[identifier])
                elif kind == "custom-model":
                    self.clients.bedrock.delete_custom_model(modelIdentifier=identifier)
                elif kind == "knowledge-base":
                    self.clients.agent.delete_knowledge_base(knowledgeBaseId=identifier)
            except Exception as exc:  # report what could not be deleted, delete the rest
                kept.append(f"{identifier} ({_message(exc)})")
        for arm in self.arms.values():
            if arm.training_job and arm.model is None:
                try:
                    _wait_ended(self.clients.bedrock.get_model_customization_job, jobIdentifier=arm.training_job)
                except Exception as exc:
                    kept.append(f"{arm.training_job} ({_message(exc)})")
        return kept


def completion(prompt: str, answer: str) -> str:
    """A chat generator often restates a sentence-to-complete before completing it ("The capital of
    X is Y."); a completion model's answer never holds its prompt. Scoring RAG's answer without the
    restated prompt keeps the arms comparable; any other answer is scored as it is."""
    stripped = answer.lstrip()
    if prompt.strip() and stripped.lower().startswith(prompt.strip().lower()):
        return stripped[len(prompt.strip()) :]
    return answer


def _wait_ended(get: Callable[..., dict[str, Any]], **identifier: str) -> None:
    """A stopped job takes a moment to end; deleting it (or its model) before that is refused."""
    deadline = time.monotonic() + 60
    while get(**identifier)["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.3)


DEFAULT_EMBEDDING_MODEL = "amazon.titan-embed-text-v2:0"
"""The embedding model Bedrock users name most; tuneforge takes it as the name of its built-in embedder."""


def _embedding_model(bedrock: Any, region: str) -> str:
    """An embedding model the server lists, else the usual Bedrock one (tuneforge maps it to its embedder)."""
    models = bedrock.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]
    if models:
        return str(models[0]["modelArn"])
    return f"arn:aws:bedrock:{region}::foundation-model/{DEFAULT_EMBEDDING_MODEL}"


def _message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        return f"{response['Error'].get('Code')}: {response['Error'].get('Message')}"
    return str(exc)


def recommend(arms: Sequence[Arm], goals: Goals) -> dict[str, Any]:
    """The best measured arm: highest quality; among arms within 0.02 of it (or meeting the quality
    target, when one is set), the cheapest to serve; arms over a stated latency budget only if no arm
    meets it."""
    measured = [arm for arm in arms if arm.status == "measured" and arm.quality is not None]
    if not measured:
        return {"approach": None, "why": "no arm was measured within the budget"}
    if goals.latencyBudgetMs is not None:
        fast = [a for a in measured if a.latency_p50_ms is None or a.latency_p50_ms <= goals.latencyBudgetMs]
        measured = fast or measured
    best = max(arm.quality or 0.0 for arm in measured)
    if best <= 0:
        return {"approach": None, "why": "no arm scored above 0 on the held-out set: more data, steps or budget"}
    bar = goals.qualityTarget if goals.qualityTarget is not None and best >= goals.qualityTarget else best - 0.02
    good = [arm for arm in measured if (arm.quality or 0.0) >= bar]
    chosen = min(good, key=lambda arm: (arm.serving_per_1k or 0.0, -(arm.quality or 0.0)))
    why = f"quality {chosen.quality:.2f}"
    if len(good) > 1:
        why += f"; the cheapest to serve of {len(good)} arms within reach of the best ({best:.2f})"
    if goals.qualityTarget is not None:
        met = (chosen.quality or 0.0) >= goals.qualityTarget
        why += f"; target {goals.qualityTarget:.2f} {'met' if met else 'not met'}"
    return {"approach": chosen.name, "why": why}
