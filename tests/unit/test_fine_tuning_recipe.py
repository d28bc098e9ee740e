"""FineTuningRecipe end to end on the demo task, plus the components and generation it relies on.

The slow test is the module-scoped ``trained`` fixture: one LoRA run of forge-small with the default
hyperparameters (about 20 s on 2 CPU cores); several tests read its outputs.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tuneforge.catalog.hyperparameters import HyperParameterValue, fine_tuning_specs, resolve
from tuneforge.catalog.models import BUILTIN_MODELS, FoundationModel
from tuneforge.data.tasks import make_classification_task, make_conversation_task, write_jsonl
from tuneforge.engine.generation import exact_match_accuracy, generate
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import load_for_inference
from tuneforge.model.loading import load_model_and_tokenizer, load_tokenizer, quiet_peft
from tuneforge.model.prompts import encode_prompt, render_prompt
from tuneforge.recipes import get_recipe
from tuneforge.recipes.base import RecipeInputs, RecipeResult, Stage, StageStatus
from tuneforge.recipes.outputs import PERFORMANCE_METRICS_HEADER, TRAINING_METRICS_HEADER, VALIDATION_METRICS_HEADER
from tuneforge.recipes.tokenising import IGNORE_INDEX, encode_record

BY_SOURCE = {model.source: model for model in BUILTIN_MODELS}
SMALL, MICRO = BY_SOURCE["builtin:forge-small"], BY_SOURCE["builtin:forge-micro"]


@dataclass
class RecordingReporter:
    """Test scaffolding for the JobReporter protocol: records calls, can ask to stop."""

    stop_after_steps: int | None = None
    stages: list[tuple[Stage, StageStatus]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def stage(self, stage: Stage, status: StageStatus) -> None:
        self.stages.append((stage, status))

    def progress(self, **values: Any) -> None:
        self.steps.append(values)

    def log(self, message: str) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return self.stop_after_steps is not None and len(self.steps) >= self.stop_after_steps

    @property
    def losses(self) -> list[float]:
        return [float(step["loss"]) for step in self.steps]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("forge-small", "forge-micro"):
        ensure_builtin(name, root)
    return root


@pytest.fixture(scope="module")
def demo_task() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return make_classification_task(n_train=400, n_test=200, seed=0)


def make_inputs(
    root: Path,
    models_dir: Path,
    base: FoundationModel,
    train: list[dict[str, Any]],
    *,
    validation: Sequence[list[dict[str, Any]]] = (),
    **overrides: str,
) -> RecipeInputs:
    hyperparameters: dict[str, HyperParameterValue] = resolve(fine_tuning_specs(), overrides)
    return RecipeInputs(
        job_id="a1b2c3d4e5f6",
        customization_type="FINE_TUNING",
        base_model=base,
        base_model_dir=ensure_builtin(base.source.removeprefix("builtin:"), models_dir),
        training_file=write_jsonl(root / "train.jsonl", train),
        validation_files=tuple(
            write_jsonl(root / f"validation-{i}.jsonl", records) for i, records in enumerate(validation)
        ),
        output_dir=root / "output",
        model_dir=root / "model",
        checkpoint_dir=root / "checkpoints",
        hyperparameters=hyperparameters,
        num_threads=2,
    )


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


@dataclass
class TrainedJob:
    inputs: RecipeInputs
    result: RecipeResult
    reporter: RecordingReporter


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    demo_task: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> TrainedJob:
    """forge-small, default hyperparameters (LoRA); saveMergedModel only adds an output to compare."""
    train, test = demo_task
    root = tmp_path_factory.mktemp("job")
    inputs = make_inputs(root, models_dir, SMALL, train, validation=[test[:100], test[100:]], saveMergedModel="true")
    reporter = RecordingReporter()
    result = get_recipe("FINE_TUNING").run(inputs, reporter)
    return TrainedJob(inputs, result, reporter)


# --------------------------------------------------------------------------- learning the task


def test_base_model_cannot_do_the_task(models_dir: Path, demo_task: Any) -> None:
    model, tokenizer = load_model_and_tokenizer(models_dir / "builtin" / "forge-small")
    assert exact_match_accuracy(model.eval(), tokenizer, demo_task[1]) <= 0.2


def test_lora_with_default_hyperparameters_learns_held_out_tickets(
    trained: TrainedJob, models_dir: Path, demo_task: Any
) -> None:
    model, tokenizer = load_for_inference(trained.inputs.model_dir, models_dir)
    assert exact_match_accuracy(model, tokenizer, demo_task[1]) >= 0.8


def test_training_loss_goes_down(trained: TrainedJob) -> None:
    losses = trained.reporter.losses
    assert trained.result.training_loss is not None
    assert trained.result.training_loss < 0.3 * (sum(losses[:5]) / 5)
    assert len(trained.result.validation_losses) == 2
    assert all(loss < 0.3 for loss in trained.result.validation_losses)


def test_progress_is_reported_every_step(trained: TrainedJob) -> None:
    steps = trained.reporter.steps
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1]["step"] == steps[-1]["total_steps"] == 3 * math.ceil(400 / 8)
    assert all(s["tokens_per_second"] > 0 for s in steps)
    assert all(0 < s["mfu"] < 2 and math.isfinite(s["mfu"]) for s in steps)
    assert steps[-1]["tokens_seen"] > steps[0]["tokens_seen"] > 0
    assert ("training", "Completed") in trained.reporter.stages


def test_metrics_files_use_bedrock_layout_and_headers(trained: TrainedJob) -> None:
    job = trained.inputs.output_dir / "model-customization-job-a1b2c3d4e5f6"
    rows = read_csv(job / "training_artifacts" / "step_wise_training_metrics.csv")
    assert tuple(rows[0]) == TRAINING_METRICS_HEADER == ("step_number", "epoch_number", "training_loss", "perplexity")
    assert [int(r[0]) for r in rows[1:]] == list(range(len(trained.reporter.steps)))
    assert {int(r[1]) for r in rows[1:]} == {0, 1, 2}
    assert math.isclose(float(rows[1][3]), math.exp(float(rows[1][2])), rel_tol=1e-4)
    performance = read_csv(job / "training_artifacts" / "step_wise_performance_metrics.csv")
    assert tuple(performance[0]) == PERFORMANCE_METRICS_HEADER
    assert [r[:3] for r in performance[1:]] == [r[:3] for r in rows[1:]]  # same steps, same losses
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in performance[1:])
    validation = job / "validation_artifacts" / "post_fine_tuning_validation"
    for folder, loss in zip(("validation", "validation_1"), trained.result.validation_losses, strict=True):
        rows = read_csv(validation / folder / "validation_metrics.csv")
        assert tuple(rows[0]) == VALIDATION_METRICS_HEADER
        assert math.isclose(float(rows[1][2]), loss, rel_tol=1e-4)


def test_adapter_and_merged_model_are_saved_with_manifest(trained: TrainedJob) -> None:
    model_dir = trained.inputs.model_dir
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (model_dir / "merged" / "model.safetensors").is_file()
    manifest = json.loads((model_dir / "tuneforge-model.json").read_text())
    assert manifest == {
        "base_model_id": SMALL.model_id,
        "base_model_source": "builtin:forge-small",
        "format": "adapter",
        "adapter_dir": "adapter",
        "merged_dir": "merged",
        "data_format": "prompt-completion",
    }


def test_unmerged_adapter_equals_merged_model(trained: TrainedJob, models_dir: Path, tmp_path: Path) -> None:
    adapter_dir = trained.inputs.model_dir / "adapter"
    adapter_only = tmp_path / "model"
    shutil.copytree(adapter_dir, adapter_only / "adapter")
    manifest = json.loads((trained.inputs.model_dir / "tuneforge-model.json").read_text())
    (adapter_only / "tuneforge-model.json").write_text(json.dumps({**manifest, "merged_dir": None}))

    merged, tokenizer = load_for_inference(trained.inputs.model_dir, models_dir)
    merged_at_load, _ = load_for_inference(adapter_only, models_dir)
    base, _ = load_model_and_tokenizer(models_dir / "builtin" / "forge-small")
    with quiet_peft():
        unmerged = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = torch.tensor([encode_prompt(tokenizer, "Ticket: hi my parcel!\nCategory:")])
    with torch.no_grad():
        expected = unmerged(input_ids=ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(merged_at_load(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_batched_generation_equals_one_by_one(trained: TrainedJob, models_dir: Path) -> None:
    model, tokenizer = load_for_inference(trained.inputs.model_dir, models_dir)
    prompts = ["Ticket: login\nCategory:", "Ticket: hello problem with refund thanks\nCategory:", "x"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=12)
    assert batched == [generate(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert generate(model, tokenizer, prompts[:1], max_new_tokens=12, stop_at_newline=True)[0].strip() == "account"


# --------------------------------------------------------------------------- control and equivalence


def test_stop_request_returns_stopped_after_current_step(tmp_path: Path, models_dir: Path, demo_task: Any) -> None:
    reporter = RecordingReporter(stop_after_steps=2)
    inputs = make_inputs(tmp_path, models_dir, MICRO, demo_task[0])
    result = get_recipe("FINE_TUNING").run(inputs, reporter)
    assert result.stopped
    assert len(reporter.steps) == 2
    assert reporter.stages[-1] == ("training", "Stopped")
    assert not (inputs.model_dir / "tuneforge-model.json").exists()


@pytest.mark.parametrize(("precision", "rtol"), [("fp32", 1e-4), ("bf16", 2e-2)])
def test_gradient_accumulation_does_not_change_the_loss_trajectory(
    tmp_path: Path, models_dir: Path, demo_task: Any, precision: str, rtol: float
) -> None:
    """Exact in fp32; in bf16 the micro-batches round their matmuls differently, so only close."""
    trajectories = []
    for accumulation in ("1", "2"):
        reporter = RecordingReporter()
        inputs = make_inputs(
            tmp_path / accumulation,
            models_dir,
            MICRO,
            demo_task[0][:40],
            batchSize="8",
            gradientAccumulationSteps=accumulation,
            loraDropout="0",
            precision=precision,
        )
        get_recipe("FINE_TUNING").run(inputs, reporter)
        trajectories.append(reporter.losses)
    assert len(trajectories[0]) == 15
    torch.testing.assert_close(torch.tensor(trajectories[1]), torch.tensor(trajectories[0]), atol=1e-5, rtol=rtol)


def test_resumed_job_matches_uninterrupted_job(tmp_path: Path, models_dir: Path, demo_task: Any) -> None:
    def inputs_in(folder: str) -> RecipeInputs:
        return make_inputs(
            tmp_path / folder, models_dir, MICRO, records, batchSize="8", epochCount="2", checkpointEverySteps="3"
        )

    records = demo_task[0][:40]
    whole = RecordingReporter()
    whole_inputs = inputs_in("whole")
    get_recipe("FINE_TUNING").run(whole_inputs, whole)

    killed_inputs = inputs_in("killed")
    assert get_recipe("FINE_TUNING").run(killed_inputs, RecordingReporter(stop_after_steps=4)).stopped
    resumed = RecordingReporter()
    get_recipe("FINE_TUNING").run(killed_inputs, resumed)

    # The stop wrote a checkpoint of step 4 on its way out (as a pause needs): training goes on at step 5.
    assert [s["step"] for s in resumed.steps] == list(range(5, 11))
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(whole.losses[4:]))
    metrics = "model-customization-job-a1b2c3d4e5f6/training_artifacts/step_wise_training_metrics.csv"
    assert read_csv(killed_inputs.output_dir / metrics) == read_csv(whole_inputs.output_dir / metrics)
    adapter = "adapter/adapter_model.safetensors"
    expected = load_file(whole_inputs.model_dir / adapter)
    actual = load_file(killed_inputs.model_dir / adapter)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor)


def test_full_fine_tuning_on_conversations_saves_a_loadable_full_model(tmp_path: Path, models_dir: Path) -> None:
    train, test = make_conversation_task(n_train=24, n_test=4, seed=1)
    inputs = make_inputs(
        tmp_path,
        models_dir,
        MICRO,
        train,
        validation=[test],
        trainingMethod="full",
        epochCount="1",
        learningRate="1e-3",
    )
    result = get_recipe("FINE_TUNING").run(inputs, RecordingReporter())
    assert result.artifacts["merged"] == "merged" and "adapter" not in result.artifacts
    manifest = json.loads((inputs.model_dir / "tuneforge-model.json").read_text())
    assert manifest["format"] == "full" and manifest["adapter_dir"] is None
    model, tokenizer = load_for_inference(inputs.model_dir, models_dir)
    assert 0.0 <= exact_match_accuracy(model, tokenizer, test) <= 1.0


# --------------------------------------------------------------------------- encoding


def test_prompt_tokens_are_masked_out_of_the_loss(models_dir: Path) -> None:
    tokenizer = load_tokenizer(models_dir / "builtin" / "forge-micro")
    record = {"prompt": "Ticket: refund\nCategory:", "completion": " billing"}
    example = encode_record(record, tokenizer, max_length=512)
    prompt_length = len(encode_prompt(tokenizer, record["prompt"]))
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example.labels[prompt_length:] == example.input_ids[prompt_length:]
    assert tokenizer.decode(example.labels[prompt_length:]) == " billing<eos>"


def test_conversation_loss_covers_assistant_turns_only(models_dir: Path) -> None:
    tokenizer = load_tokenizer(models_dir / "builtin" / "forge-micro")
    record = {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [{"text": "hello"}]},
            {"role": "user", "content": [{"text": "bye"}]},
            {"role": "assistant", "content": [{"text": "goodbye"}]},
        ],
    }
    example = encode_record(record, tokenizer, max_length=512)
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " hello\n goodbye<eos>"
    prompt = render_prompt(record)
    assert prompt == "System: Be brief.\nUser: hi\nAssistant: hello\nUser: bye\nAssistant:"
    assert example.input_ids[: len(encode_prompt(tokenizer, prompt))] == encode_prompt(tokenizer, prompt)


def test_record_over_the_length_limit_is_refused(models_dir: Path) -> None:
    tokenizer = load_tokenizer(models_dir / "builtin" / "forge-micro")
    with pytest.raises(ValueError, match="above the limit of 16"):
        encode_record({"prompt": "x" * 20, "completion": " y"}, tokenizer, max_length=16)


def test_demo_task_is_deterministic_with_disjoint_splits(demo_task: Any) -> None:
    again = make_classification_task(n_train=400, n_test=200, seed=0)
    assert again == demo_task
    train_prompts = {r["prompt"] for r in demo_task[0]}
    assert len(train_prompts) == 400
    assert train_prompts.isdisjoint(r["prompt"] for r in demo_task[1])


# --------------------------------------------------------------------------- registry


def test_registry_import_does_not_import_torch() -> None:
    code = "import sys, tuneforge.recipes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_customization_type_names_the_supported_ones() -> None:
    with pytest.raises(KeyError, match="supported: CONTINUED_PRE_TRAINING, DISTILLATION, FINE_TUNING"):
        get_recipe("DISTILLATION_PLUS")
