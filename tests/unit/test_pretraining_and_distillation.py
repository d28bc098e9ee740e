"""The subtle parts of the CONTINUED_PRE_TRAINING and DISTILLATION recipes, without training a model.

Chunking must never drop or double-count a token; the distillation loss must reduce to plain
cross-entropy at weight 0 and vanish when the student already matches the teacher; data processing
must say, line by line, what happened to every prompt. The recipes end to end are covered by
tests/e2e/test_customization_approaches.py against a real server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tuneforge.catalog.hyperparameters import distillation_specs, resolve
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.data.tasks import archipelago_facts, make_domain_documents, write_jsonl
from tuneforge.engine.generation import Completion, complete, length_sorted_batches
from tuneforge.jobs.layout import output_artifacts
from tuneforge.model.builtin import ensure_builtin
from tuneforge.model.folders import load_for_inference
from tuneforge.model.loading import load_tokenizer
from tuneforge.model.prompts import encode_prompt
from tuneforge.recipes.base import RecipeInputs, TeacherInputs
from tuneforge.recipes.distillation import DistillationRecipe, distillation_loss, prompt_insights, teacher_answers
from tuneforge.recipes.tokenising import IGNORE_INDEX, chunk_document, encode_documents, loss_token_count

# --------------------------------------------------------------------------- chunking


def targets(windows: list[Any]) -> list[int]:
    """Every token some window trains on (the causal shift leaves each window's first label out)."""
    return [label for window in windows for label in window.labels[1:] if label != IGNORE_INDEX]


@pytest.mark.parametrize("max_length", [2, 3, 8, 16])
def test_chunking_trains_on_every_token_exactly_once(max_length: int) -> None:
    for length in range(1, 50):
        for overlap in range(1, max_length):
            ids = list(range(1000, 1000 + length))
            windows = chunk_document(ids, max_length, overlap)
            assert targets(windows) == ids[1:], (length, overlap)
            assert all(len(w.input_ids) <= max_length for w in windows)
            assert windows[0].input_ids == ids[:max_length]


def test_later_chunks_keep_at_least_the_overlap_as_context() -> None:
    ids = list(range(100))
    windows = chunk_document(ids, max_length=16, overlap=5)
    for window in windows[1:]:
        context = sum(label == IGNORE_INDEX for label in window.labels)
        assert context >= 5 and len(window.input_ids) == 16
        assert window.labels[:context] == [IGNORE_INDEX] * context


@pytest.mark.parametrize("overlap", [0, 16, 20])
def test_chunking_refuses_an_overlap_that_would_drop_or_loop(overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap must be between 1 and max_length - 1"):
        chunk_document(list(range(40)), max_length=16, overlap=overlap)


def test_documents_are_wrapped_in_bos_and_eos_and_long_ones_split(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(ensure_builtin("forge-micro", tmp_path))
    path = write_jsonl(tmp_path / "docs.jsonl", [{"input": "short"}, {"input": "x" * 1300}])
    windows, documents = encode_documents(path, tokenizer, max_length=512, overlap=64)
    assert documents == 2
    assert windows[0].input_ids == [tokenizer.bos_token_id, *b"short", tokenizer.eos_token_id]
    assert len(windows) == 1 + 3  # 1,302 tokens in windows of 512 that overlap by 64
    assert loss_token_count(windows) == (5 + 1) + (1300 + 1)  # every token but each <bos>


def test_preflight_does_not_hold_documents_to_the_chunk_length(tmp_path: Path) -> None:
    """maxSequenceLength is a chunk length for continued pre-training, not a per-record limit."""
    from tuneforge.data.preflight import validate_dataset
    from tuneforge.settings import Settings

    small = next(m for m in BUILTIN_MODELS if m.source == "builtin:forge-small")
    path = write_jsonl(tmp_path / "docs.jsonl", [{"input": "y" * 100}, {"input": "x" * 2000}])
    settings = Settings(data_dir=tmp_path / "data")
    report = validate_dataset(settings, small, path, "CONTINUED_PRE_TRAINING", len, max_sequence_length=64)
    assert report.ok, report.error_messages()
    assert (report.records, report.total_tokens, report.max_record_tokens) == (2, 2100, 2000)
    fine_tuning = write_jsonl(tmp_path / "ft.jsonl", [{"prompt": "p" * 70, "completion": "c"}])
    refused = validate_dataset(settings, small, fine_tuning, "FINE_TUNING", len, max_sequence_length=64)
    assert "Maximum input token count 70 exceeds limit of 64" in refused.error_messages()[0]


# --------------------------------------------------------------------------- the CPT demo domain


def test_recipes_read_a_byte_order_mark_as_validation_does(tmp_path: Path) -> None:
    """Validation accepts a BOM before the first record; the recipes' reader must too."""
    from tuneforge.catalog.models import FINE_TUNING, TokenLimits
    from tuneforge.data.validate import validate_file
    from tuneforge.recipes.tokenising import read_jsonl

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    report = validate_file(
        path,
        customization_type=FINE_TUNING,
        limits=TokenLimits(512, 512, 512),
        count_tokens=len,
        max_records=10,
        max_bytes=1 << 20,
    )
    assert report.ok and report.records == 2
    assert read_jsonl(path) == [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def test_domain_documents_are_deterministic_and_state_every_probed_fact() -> None:
    train, test, probes = make_domain_documents(n_train=50, n_test=10, seed=3)
    assert (train, test, probes) == make_domain_documents(n_train=50, n_test=10, seed=3)
    text = " ".join(record["input"] for record in train)
    assert len(probes) == sum(len(values) for values in archipelago_facts(3).values())
    for prompt, answer in probes:
        assert f"{prompt}{answer}." in text
    assert max(len(record["input"]) for record in train) > 512  # some documents need chunking
    assert not {record["input"] for record in test} & {record["input"] for record in train}


# --------------------------------------------------------------------------- the distillation loss


def logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 6, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 6), generator=generator)
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[1, 4:] = IGNORE_INDEX  # padding
    return logits, labels


def test_kd_term_is_zero_when_the_student_matches_the_teacher() -> None:
    logits, labels = logits_and_labels()
    loss = distillation_loss(logits, logits.clone(), labels, batch_targets=5, weight=1.0, temperature=2.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_weight_zero_is_the_plain_cross_entropy_on_the_response_tokens() -> None:
    student, labels = logits_and_labels(0)
    teacher, _ = logits_and_labels(1)
    count = int((labels[:, 1:] != IGNORE_INDEX).sum())
    expected = F.cross_entropy(student[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    loss = distillation_loss(student, teacher, labels, batch_targets=count, weight=0.0, temperature=2.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_kd_term_is_the_temperature_scaled_kl_on_target_positions_only() -> None:
    student, labels = logits_and_labels(0)
    teacher, _ = logits_and_labels(1)
    mask = labels[:, 1:] != IGNORE_INDEX
    s, t = student[:, :-1][mask] / 3.0, teacher[:, :-1][mask] / 3.0
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum()
    loss = distillation_loss(student, teacher, labels, batch_targets=int(mask.sum()), weight=1.0, temperature=3.0)
    assert float(loss) == pytest.approx(9.0 * float(kl) / int(mask.sum()), rel=1e-5)
    teacher_elsewhere = teacher.clone()
    teacher_elsewhere[0, :2] += 100.0  # positions whose next token is ignored
    moved = distillation_loss(student, teacher_elsewhere, labels, int(mask.sum()), weight=1.0, temperature=3.0)
    assert float(moved) == pytest.approx(float(loss), rel=1e-6)


def test_micro_batch_shares_add_up_to_the_whole_batch_loss() -> None:
    student, labels = logits_and_labels(0)
    teacher, _ = logits_and_labels(1)
    total = int((labels[:, 1:] != IGNORE_INDEX).sum())
    whole = distillation_loss(student, teacher, labels, total, weight=0.5, temperature=2.0)
    parts = sum(
        distillation_loss(student[i : i + 1], teacher[i : i + 1], labels[i : i + 1], total, 0.5, 2.0) for i in range(2)
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_only_a_common_vocabulary_is_compared_when_output_layers_differ_in_size() -> None:
    logits, labels = logits_and_labels()
    padded_teacher = torch.cat([logits, torch.full((2, 6, 5), -1e4)], dim=-1)
    loss = distillation_loss(logits, padded_teacher, labels, batch_targets=5, weight=1.0, temperature=1.0)
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- data processing


def conversation(user: str, golden: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": [{"text": user}]}]
    if golden is not None:
        messages.append({"role": "assistant", "content": [{"text": golden}]})
    return {"schemaVersion": "bedrock-conversation-2024", "messages": messages}


class RecordingReporter:
    def __init__(self) -> None:
        self.data: list[dict[str, Any]] = []
        self.messages: list[str] = []

    def stage(self, stage: str, status: str) -> None:
        pass

    def progress(self, **values: Any) -> None:
        pass

    def data_progress(self, **values: Any) -> None:
        self.data.append(values)

    def log(self, message: str) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return False


def scripted_teacher(answers: dict[str, Completion]) -> Any:
    """Stands in for :func:`teacher_answers`: the teacher's answer to each user text, or "fine" if
    unlisted, with progress after every ``batch_size`` answers as the real one reports it."""

    def teacher_answers(
        model: Any,
        tokenizer: Any,
        prompts: list[list[int]],
        limit: int,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> list[Completion]:
        assert limit == 8
        texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        out = [answers.get(t.split("User: ", 1)[1].split("\n")[0], Completion(" fine", True, 2)) for t in texts]
        for done in range(batch_size, len(out) + batch_size, batch_size):
            if progress is not None:
                progress(min(done, len(out)))
        return out

    return teacher_answers


def process(
    tmp_path: Path,
    training: list[dict[str, Any]],
    validation: list[dict[str, Any]] | None = None,
    **hyperparameters: str,
) -> tuple[list[Any], RecordingReporter]:
    """Run the recipe's data processing (teacher scripted by the caller) and return its prompts."""
    micro = next(m for m in BUILTIN_MODELS if m.source == "builtin:forge-micro")
    models_dir = tmp_path / "models"
    inputs = RecipeInputs(
        job_id="abcdefghij12",
        customization_type="DISTILLATION",
        base_model=micro,
        base_model_dir=ensure_builtin("forge-micro", models_dir),
        training_file=write_jsonl(tmp_path / "train.jsonl", training),
        validation_files=() if validation is None else (write_jsonl(tmp_path / "validation.jsonl", validation),),
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "checkpoints",
        hyperparameters=resolve(distillation_specs(), hyperparameters),
        teacher=TeacherInputs(arn="teacher", model_dir=tmp_path, models_dir=models_dir, max_response_tokens=8),
    )
    reporter = RecordingReporter()
    tokenizer = load_tokenizer(inputs.base_model_dir)
    return DistillationRecipe()._process(inputs, (None, tokenizer, None), tokenizer, 512, reporter), reporter


@pytest.fixture
def processed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], RecordingReporter]:
    answers = {"cut short": Completion(" and then", False, 8), "say nothing": Completion("  ", True, 1)}
    monkeypatch.setattr("tuneforge.recipes.distillation.teacher_answers", scripted_teacher(answers))
    training = [
        conversation("hello"),
        conversation("with golden", "gold"),
        conversation("hello"),
        conversation("cut short"),
        conversation("say nothing"),
        conversation("x" * 600),
    ]
    validation = [conversation("held out", "reference"), conversation("also held out")]
    return process(tmp_path, training, validation, teacherBatchSize="3")


def test_every_prompt_is_trained_held_out_or_rejected_with_its_reason(processed: tuple[list[Any], Any]) -> None:
    prompts, _ = processed
    outcome = {(p.file, p.line): (p.status, p.rejected, p.source) for p in prompts}
    assert outcome == {
        ("train.jsonl", 1): ("trained", None, "teacher"),
        ("train.jsonl", 2): ("trained", None, "golden"),
        ("train.jsonl", 3): ("rejected", "duplicate", None),
        ("train.jsonl", 4): ("trained", None, "teacher"),
        ("train.jsonl", 5): ("rejected", "empty response", None),
        ("train.jsonl", 6): ("rejected", "too long", None),
        ("validation.jsonl", 1): ("heldOut", None, "teacher"),
        ("validation.jsonl", 2): ("heldOut", None, "teacher"),
    }
    by_line = {(p.file, p.line): p for p in prompts}
    assert by_line[("train.jsonl", 2)].response == "gold"
    assert by_line[("validation.jsonl", 1)].golden == "reference"
    assert by_line[("validation.jsonl", 1)].response == "fine"
    assert by_line[("train.jsonl", 3)].detail == "same prompt as line 1"
    assert (by_line[("train.jsonl", 4)].response, by_line[("train.jsonl", 4)].truncated) == ("and then", True)
    assert by_line[("train.jsonl", 1)].conversation()["messages"][-1] == {
        "role": "assistant",
        "content": [{"text": "fine"}],
    }


def test_teacher_progress_is_reported_per_batch(processed: tuple[list[Any], RecordingReporter]) -> None:
    _, reporter = processed
    # Asked: "hello", "cut short", "say nothing" and the two held-out prompts; batches of three.
    assert reporter.data == [
        {"done": 0, "total": 5, "unit": "prompts"},
        {"done": 3, "total": 5, "unit": "prompts"},
        {"done": 5, "total": 5, "unit": "prompts"},
    ]


def test_batches_are_length_sorted_cover_every_prompt_once_and_keep_ties_in_order() -> None:
    batches = length_sorted_batches([5, 9, 1, 9, 3, 7, 2], batch_size=3)
    assert batches == [[1, 3, 5], [0, 4, 6], [2]]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches([1], batch_size=0)


def test_batched_teacher_answers_equal_one_at_a_time_greedy_answers(tmp_path: Path) -> None:
    """Length-sorted batches with left padding change neither an answer nor the order answers come back in."""
    torch.set_num_threads(1)
    teacher, tokenizer = load_for_inference(ensure_builtin("forge-micro", tmp_path), tmp_path)
    texts = [f"User: {'word ' * n}question {n}\nAssistant:" for n in (0, 11, 3, 25, 7, 1, 18)]
    progress: list[int] = []
    prompts = [encode_prompt(tokenizer, text) for text in texts]
    batched = teacher_answers(teacher, tokenizer, prompts, 12, batch_size=3, progress=progress.append)
    alone = [complete(teacher, tokenizer, [text], 12)[0] for text in texts]
    assert batched == alone
    assert progress == [3, 6, 7]


def test_prompt_insights_count_outcomes_and_reasons(processed: tuple[list[Any], Any]) -> None:
    prompts, _ = processed
    insights = prompt_insights(prompts)
    assert (insights["prompts"], insights["trained"], insights["heldOut"], insights["rejected"]) == (8, 3, 2, 3)
    assert insights["responses"] == {"teacher": 2, "golden": 1}
    assert insights["truncatedResponses"] == 1
    assert insights["rejectedByReason"] == {"duplicate": 1, "empty response": 1, "too long": 1}
    assert insights["details"][3] == {
        "file": "train.jsonl",
        "line": 4,
        "status": "trained",
        "responseSource": "teacher",
        "truncated": True,
    }


def test_a_truncated_answer_is_trained_on_without_its_end_of_sequence(
    processed: tuple[list[Any], Any], tmp_path: Path
) -> None:
    prompts, _ = processed
    tokenizer = load_tokenizer(ensure_builtin("forge-micro", tmp_path / "models"))
    cut = next(p for p in prompts if p.truncated)
    whole = next(p for p in prompts if p.status == "trained" and not p.truncated and p.source == "teacher")
    assert cut.example(tokenizer, 512).labels[-1] != tokenizer.eos_token_id
    assert cut.example(tokenizer, 512).input_ids[-len("and then") :] == list(b"and then")
    assert whole.example(tokenizer, 512).labels[-1] == tokenizer.eos_token_id


def test_truncated_answers_are_rejected_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"cut short": Completion(" and then", False, 8)}
    monkeypatch.setattr("tuneforge.recipes.distillation.teacher_answers", scripted_teacher(answers))
    prompts, _ = process(
        tmp_path, [conversation("hello"), conversation("cut short")], rejectTruncatedTeacherAnswers="true"
    )
    cut = next(p for p in prompts if p.line == 2)
    assert (cut.status, cut.rejected, cut.response) == ("rejected", "truncated", None)
    assert cut.detail == "the teacher's response did not end within 8 tokens (maxResponseLengthForInference)"
    assert prompt_insights(prompts)["truncatedResponses"] == 0


def test_without_a_validation_set_a_seeded_share_of_distinct_prompts_is_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tuneforge.recipes.distillation.teacher_answers", scripted_teacher({}))
    training = [conversation(f"question {i}", "golden") for i in range(10)] + [conversation("question 0", "golden")]
    prompts, _ = process(tmp_path, training, holdoutPercent="30", seed="5")
    held_out = [p for p in prompts if p.status == "heldOut"]
    assert len(held_out) == 3 and all(p.line <= 10 for p in held_out)
    # Held-out prompts are always answered by the teacher; their golden answers become the reference.
    assert {(p.source, p.response, p.golden) for p in held_out} == {("teacher", "fine", "golden")}
    assert {p.source for p in prompts if p.status == "trained"} == {"golden"}
    assert [p.line for p in held_out] == [
        p.line for p in process(tmp_path / "again", training, holdoutPercent="30", seed="5")[0] if p.held_out
    ]


def test_a_resumed_job_reuses_the_responses_instead_of_asking_the_teacher_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tuneforge.recipes.distillation.teacher_answers", scripted_teacher({}))
    first, _ = process(tmp_path, [conversation("hello")])
    monkeypatch.setattr("tuneforge.recipes.distillation.teacher_answers", None)  # the teacher must not be called
    again, reporter = process(tmp_path, [conversation("hello")])
    assert again == first and reporter.data == []
    assert "reusing the responses" in reporter.messages[0]


def test_output_artifacts_name_the_documented_paths() -> None:
    files = output_artifacts("s3://b/out/", "abcdefghij12", "DISTILLATION", validators=2)
    root = "s3://b/out/model-customization-job-abcdefghij12"
    validation = f"{root}/validation_artifacts/post_fine_tuning_validation"
    assert files == {
        "trainingMetrics": f"{root}/training_artifacts/step_wise_training_metrics.csv",
        "performanceMetrics": f"{root}/training_artifacts/step_wise_performance_metrics.csv",
        "validationMetrics0": f"{validation}/validation/validation_metrics.csv",
        "validationMetrics1": f"{validation}/validation_1/validation_metrics.csv",
        "distillationReport": f"{root}/distillation_artifacts/distillation_report.json",
        "promptInsights": f"{root}/distillation_artifacts/prompt_insights.json",
        "syntheticDataSample": f"{root}/distillation_artifacts/synthetic_data_sample.jsonl",
    }
    assert set(output_artifacts("s3://b/out", "x", "FINE_TUNING", validators=0)) == {
        "trainingMetrics",
        "performanceMetrics",
    }


def test_a_job_left_with_nothing_to_train_on_fails_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.recipes.base import RecipeFailed

    monkeypatch.setattr(
        "tuneforge.recipes.distillation.teacher_answers",
        lambda model, tokenizer, prompts, limit, batch_size, progress=None: [
            Completion(" and so", False, 8) for _ in prompts
        ],
    )
    micro = next(m for m in BUILTIN_MODELS if m.source == "builtin:forge-micro")
    models_dir = tmp_path / "models"
    folder = ensure_builtin("forge-micro", models_dir)
    inputs = RecipeInputs(
        job_id="abcdefghij12",
        customization_type="DISTILLATION",
        base_model=micro,
        base_model_dir=folder,
        training_file=write_jsonl(tmp_path / "train.jsonl", [conversation("hello"), conversation("again")]),
        validation_files=(),
        output_dir=tmp_path / "output",
        model_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "checkpoints",
        hyperparameters=resolve(distillation_specs(), {"holdoutPercent": "0", "rejectTruncatedTeacherAnswers": "true"}),
        teacher=TeacherInputs(arn="teacher", model_dir=folder, models_dir=models_dir, max_response_tokens=8),
    )
    with pytest.raises(
        RecipeFailed,
        match=r"No prompt is left to train on: 2 rejected \(2 truncated\), 0 held out.*"
        r"set rejectTruncatedTeacherAnswers=false",
    ):
        DistillationRecipe().run(inputs, RecordingReporter())
    insights = tmp_path / "output" / "model-customization-job-abcdefghij12" / "distillation_artifacts"
    assert (insights / "prompt_insights.json").exists()
