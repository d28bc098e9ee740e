"""The OpenAI fine-tuning surface's rules: request -> customization job, file checks, pause and resume."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneforge.catalog.models import BUILTIN_MODELS, FINE_TUNING
from tuneforge.db.tables import Job, OpenAIFile
from tuneforge.errors import ConflictException
from tuneforge.jobs.openai_files import CHAT, PREFERENCE, PROMPT, check_lines
from tuneforge.jobs.openai_fine_tuning import (
    REINFORCEMENT_FINE_TUNING,
    FineTuningRequest,
    job_request,
    openai_status,
    tuneforge_hyperparameters,
)
from tuneforge.services import Services
from tuneforge.serving.runtime import InvalidParameter
from tuneforge.settings import Settings

BASE = "tuneforge.forge-micro-v1:0:512"
GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


@pytest.fixture
def services(fast_tmp: Path, db_url: str | None) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", database_url=db_url))
    yield created
    created.close()


def base_model() -> Any:
    return next(model for model in BUILTIN_MODELS if model.model_id == BASE)


def mapped(method: str, hyperparameters: dict[str, Any], grader: dict[str, Any] | None = None) -> Any:
    request = FineTuningRequest(
        model=BASE, training_file="file-1", method=method, hyperparameters=hyperparameters, grader=grader
    )
    return job_request(request, "ftjob-abc", base_model(), "s3://t/train.jsonl", "s3://t/val.jsonl", 11, "arn:role")


# -- request -> customization job ------------------------------------------------------------------


def test_supervised_maps_onto_fine_tuning_with_tuneforge_names_and_the_seed() -> None:
    default_rate = float(
        next(s.default for s in base_model().hyperparameter_specs(FINE_TUNING) if s.name == "learningRate")
    )
    job = mapped("supervised", {"n_epochs": 4, "batch_size": 2, "learning_rate_multiplier": 2})
    assert job.customization_type == FINE_TUNING
    assert job.hyperparameters == {
        "epochCount": "4",
        "batchSize": "2",
        "learningRate": f"{2 * default_rate:.6g}",
        "seed": "11",
    }
    assert (job.job_name, job.custom_model_name, job.training_uri, job.validation_uris) == (
        "ftjob-abc",
        "ftjob-abc",
        "s3://t/train.jsonl",
        ("s3://t/val.jsonl",),
    )
    assert job.output_uri == "s3://tuneforge/openai-fine-tuning/ftjob-abc/" and job.customization_config is None


def test_auto_leaves_the_choice_to_tuneforge_defaults() -> None:
    job = mapped("supervised", {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"})
    assert job.hyperparameters == {"seed": "11"}


def test_dpo_is_fine_tuning_with_beta() -> None:
    job = mapped("dpo", {"beta": 0.25, "n_epochs": 2})
    assert job.customization_type == FINE_TUNING
    assert job.hyperparameters == {"beta": "0.25", "epochCount": "2", "seed": "11"}


def test_reinforcement_maps_onto_rft_with_the_openai_grader_in_rft_config() -> None:
    job = mapped(
        "reinforcement",
        {"n_epochs": 2, "batch_size": 4, "eval_interval": 3, "reasoning_effort": "low", "eval_samples": "auto"},
        GRADER,
    )
    assert job.customization_type == REINFORCEMENT_FINE_TUNING
    assert job.hyperparameters == {"seed": "11"}
    assert job.customization_config == {
        "rftConfig": {
            "graderConfig": {"openai": GRADER},
            "hyperParameters": {"epochCount": "2", "batchSize": "4", "evalInterval": "3", "reasoningEffort": "low"},
        }
    }


@pytest.mark.parametrize(
    ("method", "given", "says"),
    [
        ("supervised", {"beta": 0.1}, "beta is not a supervised hyperparameter"),
        ("supervised", {"n_epochs": 0}, "n_epochs must be at least 1"),
        ("supervised", {"n_epochs": 2.5}, "n_epochs must be an integer"),
        ("supervised", {"batch_size": True}, "batch_size must be an integer"),
        ("dpo", {"beta": 5}, "beta must be between"),
        ("reinforcement", {"compute_multiplier": 2}, "compute_multiplier is supported as 'auto' only"),
        ("reinforcement", {"reasoning_effort": "max"}, "reasoning_effort must be"),
    ],
)
def test_bad_hyperparameters_are_refused_naming_them(method: str, given: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidParameter, match=says) as refused:
        tuneforge_hyperparameters(method, given, 1e-3)
    assert refused.value.param == "hyperparameters"


def test_reinforcement_needs_a_grader() -> None:
    with pytest.raises(InvalidParameter, match="grader is required"):
        mapped("reinforcement", {})


# -- file checks ----------------------------------------------------------------------------------


def lines(*records: Any) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records]


CHAT_RECORD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
PROMPT_RECORD = {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}
PAIR = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "hello"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}


@pytest.mark.parametrize(("record", "kind"), [(CHAT_RECORD, CHAT), (PROMPT_RECORD, PROMPT), (PAIR, PREFERENCE)])
def test_each_openai_format_is_recognised_as_it_is(record: dict[str, Any], kind: str) -> None:
    assert check_lines(iter(lines(record, record))) == (kind, 2, [])


def test_file_errors_name_the_line_and_the_field() -> None:
    same = {**PAIR, "non_preferred_output": PAIR["preferred_output"]}
    bad_role = {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}
    _, records, errors = check_lines(iter(lines(CHAT_RECORD, "{nope", bad_role, PROMPT_RECORD, same, [1])))
    assert records == 2
    assert errors[0].startswith("line 2: invalid JSON")
    assert errors[1].startswith('line 3: field "messages[1].role"')
    assert errors[2].startswith("line 4: a prompt record in a file of chat records")
    assert errors[3].startswith('line 5: field "non_preferred_output": identical to preferred_output')
    assert errors[4] == "line 6: expected a JSON object, got list"


def test_an_empty_file_is_an_error() -> None:
    assert check_lines(iter([b"\n"])) == (None, 0, ["the file holds no records"])


def test_a_file_still_processing_or_of_another_purpose_cannot_train(services: Services) -> None:
    row = services.files.create(io.BytesIO(b"".join(lines(CHAT_RECORD))), "t.jsonl", "batch")
    with pytest.raises(InvalidParameter, match="purpose 'batch'"):
        services.files.for_job(row.id, "training_file", (CHAT,))
    with services.db.session() as session:
        session.add(OpenAIFile(id="file-pending", filename="p.jsonl", purpose="fine-tune", bytes=1, uri=row.uri))
    with pytest.raises(InvalidParameter, match="still being processed") as refused:
        services.files.for_job("file-pending", "validation_file", (CHAT,))
    assert refused.value.param == "validation_file"
    services.files.check("file-pending")
    assert services.files.for_job("file-pending", "training_file", (CHAT,)).status == "processed"
    with pytest.raises(InvalidParameter, match="holds chat records; this method reads preference records"):
        services.files.for_job("file-pending", "training_file", (PREFERENCE,))


# -- pause, resume, cancel ------------------------------------------------------------------------


def processed_file(services: Services) -> str:
    with services.db.session() as session:
        uri = "s3://tuneforge/openai-files/file-ok/t.jsonl"
        services.store.write_bytes(uri, b"".join(lines(CHAT_RECORD)))
        session.add(OpenAIFile(id="file-ok", filename="t.jsonl", purpose="fine-tune", bytes=1, uri=uri))
    services.files.check("file-ok")
    return "file-ok"


def test_pause_resume_and_cancel_of_a_queued_job(services: Services) -> None:
    found = services.fine_tuning.create(FineTuningRequest(model=BASE, training_file=processed_file(services)))
    assert openai_status(found.job) == "queued"
    assert openai_status(services.fine_tuning.pause(found.openai.openai_id).job) == "paused"
    assert services.jobs.get(found.openai.openai_id).phase == "paused"
    assert openai_status(services.fine_tuning.resume(found.openai.openai_id).job) == "queued"
    with pytest.raises(InvalidParameter, match="not paused"):
        services.fine_tuning.resume(found.openai.openai_id)
    services.fine_tuning.pause(found.openai.openai_id)
    assert openai_status(services.fine_tuning.cancel(found.openai.openai_id).job) == "cancelled"
    assert services.jobs.get(found.openai.openai_id).status == "Stopped"


def test_pausing_a_running_job_asks_its_worker_and_resume_waits_for_it(services: Services) -> None:
    found = services.fine_tuning.create(FineTuningRequest(model=BASE, training_file=processed_file(services)))
    with services.db.session() as session:
        job = session.get(Job, found.job.id)
        assert job is not None
        job.phase = "running"
    paused = services.jobs.pause(found.job.id)
    assert (paused.phase, paused.pause_requested, openai_status(paused)) == ("running", True, "paused")
    with pytest.raises(ConflictException, match="is pausing"):
        services.jobs.resume(found.job.id)


def test_a_paused_job_stopped_through_bedrock_loses_its_kept_checkpoint(services: Services) -> None:
    found = services.fine_tuning.create(FineTuningRequest(model=BASE, training_file=processed_file(services)))
    services.jobs.pause(found.job.id)
    checkpoint = services.settings.data_dir / "jobs" / found.job.id / "checkpoints" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"state")
    services.jobs.stop(found.openai.openai_id)
    assert services.jobs.get(found.job.id).status == "Stopped" and not checkpoint.exists()


# -- training reads OpenAI's spelling -------------------------------------------------------------


@pytest.mark.parametrize("template", ["plain", "chatml"])
def test_openai_and_bedrock_spellings_of_a_chat_record_train_the_same_tokens(template: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tests.model_folders import build_tokenizer
    from tuneforge.model import builtin
    from tuneforge.recipes.tokenising import encode_record

    if template == "plain":
        builtin.build_tokenizer(tmp_path)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    else:
        tokenizer = build_tokenizer(template)
    openai_record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "yo"},
        ]
    }
    bedrock_record = {
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [{"text": "yo"}]},
        ],
    }
    ours, theirs = encode_record(openai_record, tokenizer, 512), encode_record(bedrock_record, tokenizer, 512)
    assert (ours.input_ids, ours.labels) == (theirs.input_ids, theirs.labels)
    assert "yo" in tokenizer.decode([t for t in ours.labels if t >= 0])


# -- the upload's own body at the edge --------------------------------------------------------------


def test_the_upload_route_keeps_the_edge_checks_and_its_own_size_cap(fast_tmp: Path) -> None:
    from fastapi.testclient import TestClient

    from tuneforge.api.app import create_app

    settings = Settings(
        data_dir=fast_tmp / "keyed", api_keys=["sk-good"], allow_anonymous=False, max_training_file_bytes=1000
    )
    files = {"file": ("t.jsonl", b"".join(lines(CHAT_RECORD)))}
    with TestClient(create_app(settings, run_supervisor=False), base_url="http://127.0.0.1") as client:
        good = {"authorization": "Bearer sk-good"}
        assert client.post("/v1/files", files=files, data={"purpose": "fine-tune"}).status_code == 401
        wrong = client.post(
            "/v1/files", files=files, data={"purpose": "fine-tune"}, headers={"authorization": "Bearer x"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        cross = client.post(
            "/v1/files", files=files, data={"purpose": "fine-tune"}, headers={**good, "origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "forbidden_origin"
        big = client.post(
            "/v1/files", files={"file": ("t.jsonl", b"x" * 2000)}, data={"purpose": "fine-tune"}, headers=good
        )
        assert big.status_code == 400 and "TUNEFORGE_MAX_TRAINING_FILE_BYTES" in big.json()["error"]["message"]
        json_body = client.post("/v1/files", json={"purpose": "fine-tune"}, headers=good)
        assert json_body.status_code == 400 and json_body.json()["error"]["param"] == "file"
        stored = client.post("/v1/files", files=files, data={"purpose": "fine-tune"}, headers=good)
        assert stored.status_code == 200 and stored.json()["bytes"] == len(files["file"][1])
        assert client.get(f"/v1/files/{stored.json()['id']}/content", headers=good).content == files["file"][1]
