"""FINE_TUNING on preference records (DPO) through boto3 against a real server.

One module-scoped job trains forge-micro with LoRA on a seeded style preference
(:func:`tuneforge.data.tasks.make_preference_task`): the training file in OpenAI's preference format
as it is, the validation file in the Bedrock-style spelling. The tests then score held-out pairs with
the custom model loaded as serving loads it, and compare with what the job reported.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, unique, wait_for_status
from tuneforge.data.tasks import make_preference_task, to_bedrock_preference, write_jsonl
from tuneforge.jobs import layout
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

TERMINAL = ("Completed", "Failed", "Stopped")


def create(bedrock: Any, training_uri: str, validation_uri: str | None = None, **hyperparameters: str) -> str:
    name = unique("dpo")
    request: dict[str, Any] = {
        "jobName": name,
        "customModelName": f"m-{name}",
        "roleArn": ROLE,
        "baseModelIdentifier": STUDENT_MODEL,
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": training_uri},
        "outputDataConfig": {"s3Uri": f"s3://tests/out/{name}/"},
        "hyperParameters": hyperparameters,
    }
    if validation_uri:
        request["validationDataConfig"] = {"validators": [{"s3Uri": validation_uri}]}
    arn: str = bedrock.create_model_customization_job(**request)["jobArn"]
    return arn


def output_csv(store: ObjectStore, job: dict[str, Any], relative: str) -> list[dict[str, str]]:
    job_id = job["jobArn"].rsplit("/", 1)[-1]
    uri = f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/{layout.job_folder(job_id)}/{relative}"
    return list(csv.DictReader(io.StringIO(store.read_bytes(uri).decode())))


@dataclass
class Trained:
    job: dict[str, Any]
    held_out: list[dict[str, Any]]


@pytest.fixture(scope="module")
def trained(bedrock: Any, server: Server, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    store = ObjectStore.from_settings(server.settings)
    folder = tmp_path_factory.mktemp("preference")
    train, held_out = make_preference_task(n_train=40, n_test=30, seed=3)
    uris = {}
    for name, records in {"train": train, "validation": [to_bedrock_preference(r) for r in held_out]}.items():
        uris[name] = f"s3://tests/preference/{name}.jsonl"
        store.upload_file(write_jsonl(folder / f"{name}.jsonl", records), uris[name])
    arn = create(bedrock, uris["train"], uris["validation"], epochCount="2", batchSize="8", beta="0.2")
    job = wait_for_status(bedrock, arn, TERMINAL)
    assert job["status"] == "Completed", job.get("failureMessage")
    return Trained(job, held_out)


def win_rate(model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> float:
    """Share of pairs whose preferred answer has the higher summed log-probability after the prompt.

    The sequences are rendered by the training encoder (a parity test ties it to serving); the
    scoring is plain torch, independent of the recipe's own: one right-padded batch of every
    preferred sequence, then every non-preferred one (causal attention keeps padding unseen).
    """
    import torch

    from tuneforge.catalog.models import FINE_TUNING
    from tuneforge.data.formats import Preference, parse_record
    from tuneforge.recipes.tokenising import IGNORE_INDEX, Example, encode_preference

    def log_probs(examples: list[Example]) -> torch.Tensor:
        width = max(len(e.input_ids) for e in examples)
        ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in examples])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in examples])[:, 1:]
        with torch.no_grad():
            scores = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
        answer = labels != IGNORE_INDEX
        picked = scores.gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * answer).sum(dim=1)

    pairs = []
    for raw in records:
        record = parse_record(raw, FINE_TUNING)
        assert isinstance(record, Preference)
        pairs.append(encode_preference(record, tokenizer, max_length=512))
    preferred = log_probs([p.preferred for p in pairs])
    non_preferred = log_probs([p.non_preferred for p in pairs])
    return float((preferred > non_preferred).float().mean())


def test_dpo_makes_the_served_model_prefer_the_preferred_answers_it_reports(trained: Trained, server: Server) -> None:
    from tuneforge.model.folders import load_for_inference
    from tuneforge.services import Services

    services = Services.create(server.settings)
    weights = Path(services.custom_models.get(trained.job["outputModelArn"]).weights_path)
    services.close()
    base, base_tokenizer = load_for_inference(
        server.settings.models_dir / "builtin" / "forge-micro", server.settings.models_dir
    )
    tuned, tuned_tokenizer = load_for_inference(weights, server.settings.models_dir)
    before = win_rate(base, base_tokenizer, trained.held_out)
    after = win_rate(tuned, tuned_tokenizer, trained.held_out)
    assert after >= 0.8
    assert after > before

    store = ObjectStore.from_settings(server.settings)
    (reported,) = output_csv(store, trained.job, layout.preference_validation_metrics(0))
    assert int(reported["pairs"]) == len(trained.held_out)
    tolerance = 1 / len(trained.held_out) + 1e-9  # a near-zero margin may round either way
    assert abs(float(reported["win_rate"]) - after) <= tolerance
    assert abs(float(reported["base_win_rate"]) - before) <= tolerance


def test_dpo_job_reports_its_metrics_and_keeps_beta(trained: Trained, server: Server) -> None:
    job = trained.job
    assert job["hyperParameters"]["beta"] == "0.2"
    store = ObjectStore.from_settings(server.settings)
    steps = output_csv(store, job, layout.PREFERENCE_TRAINING_METRICS)
    training = output_csv(store, job, layout.TRAINING_METRICS)
    assert (
        [row["step_number"] for row in steps] == [row["step_number"] for row in training] == [str(i) for i in range(10)]
    )
    assert [row["dpo_loss"] for row in steps] == [row["training_loss"] for row in training]
    # The adapters start as a no-op, so the first step's policy is the reference: loss log 2, margin 0.
    assert float(steps[0]["dpo_loss"]) == pytest.approx(0.6931, abs=1e-3)
    assert float(steps[-1]["reward_accuracy"]) > 0.5
    assert float(steps[-1]["reward_margin"]) > 0
    (validation,) = output_csv(store, job, layout.validation_metrics(0))
    assert float(validation["validation_loss"]) < 0.6931


def test_identical_answers_fail_the_job_naming_line_and_field(bedrock: Any, server: Server, tmp_path: Path) -> None:
    store = ObjectStore.from_settings(server.settings)
    train, _ = make_preference_task(n_train=3, n_test=0, seed=4)
    train[1]["non_preferred_output"] = train[1]["preferred_output"]
    uri = f"s3://tests/preference/{unique('same')}.jsonl"
    store.upload_file(write_jsonl(tmp_path / "same.jsonl", train), uri)
    job = wait_for_status(bedrock, create(bedrock, uri), TERMINAL)
    assert job["status"] == "Failed"
    assert 'line 2, field "non_preferred_output": the same answer as "preferred_output"' in job["failureMessage"]


def test_beta_out_of_range_is_refused_at_create(bedrock: Any) -> None:
    with pytest.raises(ClientError) as exc:
        create(bedrock, "s3://tests/preference/train.jsonl", beta="0")
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert "beta" in exc.value.response["Error"]["Message"]
