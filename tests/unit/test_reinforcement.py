"""Reinforcement fine-tuning's rules: create-time checks, the prompt format, GRPO's numbers, batched sampling.

The recipe end to end (a job that learns) is tests/e2e/test_reinforcement_fine_tuning.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.catalog.models import BUILTIN_MODELS, SMOLLM2
from tuneforge.data.formats import RecordError, RftPrompt, parse_record
from tuneforge.errors import ValidationException
from tuneforge.graders import Grade
from tuneforge.jobs.service import CreateJobRequest, JobFilter
from tuneforge.services import Services
from tuneforge.settings import Settings

RFT = "REINFORCEMENT_FINE_TUNING"
BASE = "tuneforge.forge-micro-v1:0:512"
EXACT_MATCH = {"lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:tuneforge-exact-match"}}


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data"))
    yield created
    created.close()


def rft_request(
    hyper: dict[str, Any] | None = None, grader: dict[str, Any] | None = None, **overrides: Any
) -> CreateJobRequest:
    config: dict[str, Any] = {"rftConfig": {"graderConfig": EXACT_MATCH if grader is None else grader}}
    if hyper is not None:
        config["rftConfig"]["hyperParameters"] = hyper
    fields: dict[str, Any] = {
        "job_name": "rft-1",
        "custom_model_name": "rft-1-model",
        "role_arn": "arn:aws:iam::123456789012:role/BedrockRole",
        "base_model_identifier": BASE,
        "customization_type": RFT,
        "training_uri": "s3://bucket/train.jsonl",
        "output_uri": "s3://bucket/out/",
        "customization_config": config,
    }
    fields.update(overrides)
    return CreateJobRequest(**fields)


# -- create ------------------------------------------------------------------------------------


def test_rft_job_stores_bedrock_hyperparameters_in_its_config_and_every_value_as_strings(services: Services) -> None:
    job = services.jobs.create(
        rft_request({"trainingSamplePerPrompt": 8, "learningRate": 5e-4}, hyperparameters={"klCoefficient": "0.1"})
    )
    rft = job.customization_config["rftConfig"]
    assert rft["graderConfig"] == EXACT_MATCH
    assert rft["hyperParameters"] == {
        "epochCount": 2,
        "batchSize": 16,
        "learningRate": 5e-4,
        "maxPromptLength": 0,
        "trainingSamplePerPrompt": 8,
        "inferenceMaxTokens": 64,
        "reasoningEffort": "low",
        "evalInterval": 10,
    }
    assert job.hyperparameters["trainingSamplePerPrompt"] == "8"
    assert job.hyperparameters["klCoefficient"] == "0.1"
    assert job.hyperparameters["trainingMethod"] == "lora"


@pytest.mark.parametrize(
    ("request_kwargs", "fragment"),
    [
        ({"hyper": {"trainingSamplePerPrompt": 1}}, "trainingSamplePerPrompt value 1 is out of range"),
        (
            {"grader": {"lambdaGrader": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:nope"}}},
            "Invalid customizationConfig.rftConfig.graderConfig: no grader named 'nope'",
        ),
        ({"grader": {"lambdaGrader": {"lambdaArn": "not-an-arn"}}}, "is not a Lambda function ARN"),
        ({"customization_config": None}, "needs customizationConfig.rftConfig.graderConfig"),
        ({"hyper": {"inferenceMaxTokens": 300}}, "inferenceMaxTokens 300 exceeds the output token limit"),
        (
            {"hyper": {"batchSize": 32}, "hyperparameters": {"batchSize": "16"}},
            "Hyperparameter batchSize is given twice with different values",
        ),
        ({"hyperparameters": {"maxSequenceLength": "64"}}, "Unknown hyperparameter(s): maxSequenceLength"),
        ({"hyperparameters": {"loraRank": "auto"}}, "Automatic hyperparameter tuning is not available"),
    ],
)
def test_rft_job_with_bad_settings_is_refused_and_nothing_is_queued(
    services: Services, request_kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValidationException) as info:
        services.jobs.create(rft_request(**request_kwargs))
    assert fragment in info.value.message
    assert services.jobs.list_jobs(JobFilter(), None, 10).items == []


def test_a_base_model_that_cannot_generate_is_refused_for_rft(services: Services) -> None:
    student = next(m for m in BUILTIN_MODELS if "student" in m.model_id)
    with pytest.raises(ValidationException, match="needs a base model that already generates usable text"):
        services.jobs.create(rft_request(base_model_identifier=student.model_id))
    assert RFT in next(m for m in BUILTIN_MODELS if m.source == f"builtin:{SMOLLM2}").customizations


# -- the prompt format ---------------------------------------------------------------------------


def test_rft_prompt_in_openai_chat_spelling_keeps_its_other_fields_for_the_grader() -> None:
    record = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "reference_answer": {"value": 4},
        "task": "arithmetic",
    }
    parsed = parse_record(record, RFT)
    assert parsed == RftPrompt(
        system="Be brief.", turns=(("user", "2+2?"),), item={"reference_answer": {"value": 4}, "task": "arithmetic"}
    )
    bedrock = parse_record(
        {"system": [{"text": "Be brief."}], "messages": [{"role": "user", "content": [{"text": "2+2?"}]}]}, RFT
    )
    assert isinstance(bedrock, RftPrompt) and bedrock.system == "Be brief." and bedrock.item == {}


@pytest.mark.parametrize(
    ("record", "field", "fragment"),
    [
        ({"prompt": "2+2?"}, "messages", 'missing key "messages"'),
        (
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
            "messages[1].role",
            'the last message must be from "user"',
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content", "empty string"),
    ],
)
def test_bad_rft_prompt_names_the_field(record: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_record(record, RFT)
    assert info.value.field == field and fragment in info.value.message


# -- GRPO's numbers -------------------------------------------------------------------------------


def test_group_advantages_are_relative_to_the_group_and_skip_failed_grades() -> None:
    from tuneforge.recipes.reinforcement import ADVANTAGE_EPS, group_advantages

    advantages = group_advantages([Grade(1.0), Grade(0.0), Grade(None, "raised"), Grade(0.0)])
    std = math.sqrt(2 / 9)
    assert advantages == pytest.approx(
        [(2 / 3) / (std + ADVANTAGE_EPS), (-1 / 3) / (std + ADVANTAGE_EPS), 0.0, (-1 / 3) / (std + ADVANTAGE_EPS)]
    )
    assert group_advantages([Grade(0.5), Grade(0.5)]) == [0.0, 0.0]
    assert group_advantages([Grade(1.0), Grade(None, "timed out")]) == [0.0, 0.0]


def test_grpo_loss_is_the_advantage_weighted_token_mean_plus_beta_times_k3() -> None:
    from tuneforge.recipes.reinforcement import grpo_loss

    log_probs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    reference = torch.tensor([[-1.5, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    loss, kl = grpo_loss(log_probs, reference, mask, advantages, 0.1, total_answers=4)
    k3 = math.exp(-0.5) + 0.5 - 1.0
    first = (-2.0 * (-1.0 - 2.0) + 0.1 * k3) / 2
    second = 1.0 * -0.5  # -advantage * logp with advantage -1
    assert float(loss) == pytest.approx((first + second) / 4)
    assert float(kl) == pytest.approx(k3 / 2 / 4)
    loss.backward()
    assert log_probs.grad is not None and float(log_probs.grad[0, 2]) == 0.0  # padding gets no gradient


def test_answer_log_probs_from_the_answer_window_equal_those_of_the_full_logits(tmp_path: Path) -> None:
    import torch.nn.functional as F

    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.recipes.batching import IGNORE_INDEX, Example, collate
    from tuneforge.recipes.reinforcement import sequence_log_probs

    model, _ = load_model_and_tokenizer(ensure_builtin("forge-micro", tmp_path / "models"))
    model.requires_grad_(False)
    prompts, answers = ([5, 6, 7, 8, 9], [5, 6, 7]), ([11, 12], [13, 14, 15, 16])
    batch = collate(
        [Example([*p, *a], [IGNORE_INDEX] * len(p) + a) for p, a in zip(prompts, answers, strict=True)], pad_id=0
    )
    windowed = sequence_log_probs(model, batch)
    labels = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
    full = -F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * (labels != IGNORE_INDEX)
    assert windowed.shape == full.shape
    assert torch.allclose(windowed, full, atol=1e-5)
    assert bool((windowed[0, 5:7] < 0).all()) and bool((windowed[1, 2:6] < 0).all())


def test_identical_answers_merged_into_one_weighted_row_give_the_same_loss_kl_and_gradient() -> None:
    from tuneforge.recipes.reinforcement import grpo_loss

    def loss_and_grad(
        rows: list[int], advantages: list[float], copies: list[float] | None
    ) -> tuple[float, float, list[float]]:
        weights = torch.tensor([[-1.0, -2.0], [-0.5, -0.25]], requires_grad=True)  # one row per distinct answer
        log_probs = weights[rows]
        reference = torch.tensor([[-1.5, -2.5], [-0.5, -0.75]])[rows]
        mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])[rows]
        weight = None if copies is None else torch.tensor(copies)
        loss, kl = grpo_loss(log_probs, reference, mask, torch.tensor(advantages), 0.1, 3, copies=weight)
        loss.backward()
        assert weights.grad is not None
        return float(loss), float(kl), weights.grad.flatten().tolist()

    each = loss_and_grad([0, 0, 1], [1.5, -0.5, -1.0], None)  # the first answer sampled twice
    merged = loss_and_grad([0, 1], [1.5 - 0.5, -1.0], [2.0, 1.0])
    assert merged[0] == pytest.approx(each[0]) and merged[1] == pytest.approx(each[1])
    assert merged[2] == pytest.approx(each[2])


# -- sampling through the engines' batcher --------------------------------------------------------


def test_sampled_answers_carry_their_tokens_and_are_the_same_whatever_shares_the_batch(tmp_path: Path) -> None:
    from tuneforge.engine.offline import offline_batcher, sample_answers
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.model.prompts import serving_prompt

    model, tokenizer = load_model_and_tokenizer(ensure_builtin("forge-micro", tmp_path / "models"))
    prompts = []
    for text in ("Say A.", "A much longer prompt that pads the other one."):
        rendered = serving_prompt(tokenizer, conversation={"messages": [{"role": "user", "content": [{"text": text}]}]})
        prompts.append((rendered.ids, rendered.strip_leading_space))
    batcher = offline_batcher(model, tokenizer, max_batch=8)
    together = sample_answers(batcher, prompts, samples=3, max_tokens=6, temperature=1.0, seed=11)
    alone = sample_answers(batcher, prompts[:1], samples=3, max_tokens=6, temperature=1.0, seed=11)
    assert together is not None and alone is not None
    assert [a.token_ids for a in together[0]] == [a.token_ids for a in alone[0]]
    assert len({tuple(a.token_ids) for group in together for a in group}) > 1  # sampled, not greedy
    for answer in together[0] + together[1]:
        body = answer.token_ids[:-1] if answer.finished else answer.token_ids
        assert len(answer.token_ids) <= 6 + answer.finished
        decoded = tokenizer.decode(body, skip_special_tokens=True)
        assert decoded.removeprefix(" ") == answer.text
    assert sample_answers(batcher, prompts, 2, 6, 1.0, seed=1, should_stop=lambda: True) is None


# -- the recipe: stop and resume -------------------------------------------------------------------


class StepReporter:
    """Test scaffolding for the JobReporter protocol: records progress, can ask to stop after some steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps: list[dict[str, Any]] = []
        self.messages: list[str] = []

    def stage(self, stage: str, status: str) -> None:
        pass

    def progress(self, **values: Any) -> None:
        self.steps.append(values)

    def data_progress(self, **values: Any) -> None:
        pass

    def log(self, message: str) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def test_a_resumed_rft_run_continues_from_its_checkpoint_as_if_never_stopped(tmp_path: Path) -> None:
    from tuneforge.catalog.hyperparameters import reinforcement_specs, resolve
    from tuneforge.data.tasks import write_jsonl
    from tuneforge.jobs import layout
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.recipes.base import RecipeInputs
    from tuneforge.recipes.reinforcement import ReinforcementFineTuningRecipe

    micro = next(m for m in BUILTIN_MODELS if m.source == "builtin:forge-micro")
    records = [{"messages": [{"role": "user", "content": f"Say A ({i})"}], "reference_answer": "A"} for i in range(16)]
    hyper = {"epochCount": "3", "trainingSamplePerPrompt": "2", "inferenceMaxTokens": "1", "learningRate": "0.001"}

    def inputs(run: str) -> RecipeInputs:
        return RecipeInputs(
            job_id="a1b2c3d4e5f6",
            customization_type=RFT,
            base_model=micro,
            base_model_dir=ensure_builtin("forge-micro", tmp_path / "models"),
            training_file=write_jsonl(tmp_path / "train.jsonl", records),
            validation_files=(),
            output_dir=tmp_path / run / "output",
            model_dir=tmp_path / run / "model",
            checkpoint_dir=tmp_path / run / "checkpoints",
            hyperparameters=resolve(reinforcement_specs(), {**hyper, "checkpointEverySteps": "1"}),
            num_threads=1,
            grader_config=EXACT_MATCH,
        )

    def rewards(run: str) -> list[list[str]]:
        path = tmp_path / run / "output" / layout.job_folder("a1b2c3d4e5f6") / layout.RFT_REWARD_METRICS
        return [row.split(",")[:8] for row in path.read_text().splitlines()[1:]]

    recipe = ReinforcementFineTuningRecipe()
    stopped = recipe.run(inputs("resumed"), StepReporter(stop_after=1))
    assert stopped.stopped and len(rewards("resumed")) == 1
    resumed = StepReporter()
    assert not recipe.run(inputs("resumed"), resumed).stopped
    assert "resumed from checkpoint at step 1/3" in resumed.messages
    assert [s["step"] for s in resumed.steps] == [2, 3]
    recipe.run(inputs("straight"), StepReporter())
    assert rewards("resumed") == rewards("straight")  # same prompts, same seeded answers, same updates


class HalfFailingGrader:
    """Fails on every other answer (as a grader that raised would), scores the rest 1 for "A"."""

    name = "half-failing"

    def __init__(self, fail_all: bool = False) -> None:
        self.fail_all = fail_all

    def grade(self, samples: Any) -> list[Grade]:
        return [
            Grade(None, "ZeroDivisionError: division by zero")
            if self.fail_all or index % 2
            else Grade(1.0 if s.response.strip() == "A" else 0.0)
            for index, s in enumerate(samples)
        ]


def test_grader_failures_are_counted_and_a_step_where_all_fail_ends_the_job(tmp_path: Path) -> None:
    from tuneforge.catalog.hyperparameters import reinforcement_specs, resolve
    from tuneforge.data.tasks import write_jsonl
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.model.loading import load_model_and_tokenizer
    from tuneforge.recipes.base import RecipeFailed, RecipeInputs
    from tuneforge.recipes.loop import prepare_for_training
    from tuneforge.recipes.reinforcement import GrpoTrainer, RftSettings, read_prompts

    micro = next(m for m in BUILTIN_MODELS if m.source == "builtin:forge-micro")
    train = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "Say A"}]}] * 16)
    hyper = resolve(reinforcement_specs(), {"trainingSamplePerPrompt": "2", "inferenceMaxTokens": "1"})
    inputs = RecipeInputs(
        job_id="a1b2c3d4e5f6",
        customization_type=RFT,
        base_model=micro,
        base_model_dir=ensure_builtin("forge-micro", tmp_path / "models"),
        training_file=train,
        validation_files=(),
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "checkpoints",
        hyperparameters=hyper,
    )
    model, tokenizer = load_model_and_tokenizer(inputs.base_model_dir)
    reporter = StepReporter()
    model = prepare_for_training(model, hyper, reporter)
    prompts = read_prompts(train, tokenizer)
    settings = RftSettings.from_hyperparameters(hyper)

    trainer = GrpoTrainer(model, None, tokenizer, HalfFailingGrader(), settings, reporter, inputs)
    result = trainer._step(prompts, 0)
    assert result is not None
    row, _, _, step_flops = result
    assert (row["samples"], row["grader_failures"]) == (32, 16)
    # At least the sampling forward over every prompt token of every sample, plus an update.
    assert step_flops > 2 * trainer.flops.parameters * sum(len(p.ids) for p in prompts) * settings.samples
    assert any("the grader failed on 16 of 32 answers (first: ZeroDivisionError" in m for m in reporter.messages)

    failing = GrpoTrainer(model, None, tokenizer, HalfFailingGrader(fail_all=True), settings, reporter, inputs)
    with pytest.raises(RecipeFailed, match="The grader half-failing failed on every one of the 32 answers of step 1"):
        failing._step(prompts, 0)
