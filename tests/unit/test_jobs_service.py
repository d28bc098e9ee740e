from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tuneforge.api.bedrock.schemas import foundation_model
from tuneforge.catalog.models import BUILTIN_MODELS
from tuneforge.db.tables import CustomModel, Job, JobEvent, utcnow
from tuneforge.errors import ConflictException, ResourceNotFoundException, ValidationException
from tuneforge.jobs.service import STAGES, CreateJobRequest, JobFilter, mark_stages
from tuneforge.services import Services
from tuneforge.settings import Settings

BASE = "tuneforge.forge-micro-v1:0:512"


@pytest.fixture
def services(fast_tmp: Path, db_url: str | None) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data", database_url=db_url))
    yield created
    created.close()


def request(name: str = "job-1", **overrides: Any) -> CreateJobRequest:
    fields: dict[str, Any] = {
        "job_name": name,
        "custom_model_name": f"{name}-model",
        "role_arn": "arn:aws:iam::123456789012:role/BedrockRole",
        "base_model_identifier": BASE,
        "customization_type": "FINE_TUNING",
        "training_uri": "s3://bucket/train.jsonl",
        "output_uri": "s3://bucket/out/",
    }
    fields.update(overrides)
    return CreateJobRequest(**fields)


def set_phase(services: Services, job_id: str, phase: str, stage_status: str | None = None) -> None:
    """What a worker does when it claims a job (the supervisor is not running in these tests)."""
    with services.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.phase = phase
        if stage_status is not None:
            details = dict(job.status_details)
            details["validationDetails"] = {**details["validationDetails"], "status": stage_status}
            job.status_details = details


# -- create --------------------------------------------------------------------------------------


def test_create_queues_job_in_progress_with_all_stages_not_started(services: Services) -> None:
    job = services.jobs.create(request())
    stored = services.jobs.get(job.arn)
    assert (stored.status, stored.phase) == ("InProgress", "queued")
    assert set(stored.status_details) == set(STAGES)
    assert {details["status"] for details in stored.status_details.values()} == {"NotStarted"}
    assert stored.ended_at is None
    assert stored.arn.startswith(f"arn:aws:bedrock:us-east-1:123456789012:model-customization-job/{BASE}/")
    assert stored.base_model_arn == f"arn:aws:bedrock:us-east-1::foundation-model/{BASE}"


def test_create_stores_every_hyperparameter_as_string_with_defaults(services: Services) -> None:
    job = services.jobs.create(request(hyperparameters={"epochCount": "2", "saveMergedModel": "TRUE"}))
    stored = services.jobs.get(job.id)
    assert stored.hyperparameters["epochCount"] == "2"
    assert stored.hyperparameters["saveMergedModel"] == "true"
    assert stored.hyperparameters["batchSize"] == "8"
    assert all(isinstance(v, str) for v in stored.hyperparameters.values())


def test_create_records_a_queued_status_event(services: Services) -> None:
    job = services.jobs.create(request())
    events = services.jobs.events(job.name)
    assert [(e.kind, e.data) for e in events][:1] == [("status", {"status": "InProgress", "message": "queued"})]
    assert [e.kind for e in events[1:]] == ["log"]
    assert events[1].data["message"].startswith("memory plan: estimated peak")


def test_a_preference_file_is_planned_as_two_rows_per_pair(services: Services) -> None:
    pair = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
    services.store.write_bytes("s3://bucket/dpo.jsonl", (json.dumps(pair) + "\n").encode())
    logs = {}
    for name, uri in (("dpo", "s3://bucket/dpo.jsonl"), ("sft", "s3://bucket/train.jsonl")):
        job = services.jobs.create(
            request(name, training_uri=uri, hyperparameters={"batchSize": "4", "epochCount": "1"})
        )
        logs[name] = [e.data["message"] for e in services.jobs.events(job.name) if e.kind == "log"]
    assert "micro-batch 8 x" in logs["dpo"][0] and "2 x batchSize rows" in logs["dpo"][1]
    assert "micro-batch 4 x" in logs["sft"][0] and not any("2 x batchSize" in line for line in logs["sft"])


def test_get_finds_job_by_name_id_arn_and_percent_encoded_arn(services: Services) -> None:
    job = services.jobs.create(request())
    encoded = job.arn.replace(":", "%3A").replace("/", "%2F")
    assert {services.jobs.get(key).id for key in (job.name, job.id, job.arn, encoded)} == {job.id}


def test_get_unknown_job_is_resource_not_found(services: Services) -> None:
    with pytest.raises(ResourceNotFoundException, match="no-such-job does not exist"):
        services.jobs.get("no-such-job")


def test_same_token_and_same_request_returns_the_original_job(services: Services) -> None:
    first = services.jobs.create(request(client_request_token="tok-1"))
    again = services.jobs.create(request(client_request_token="tok-1"))
    assert again.arn == first.arn
    assert len(services.jobs.list_jobs(JobFilter(), None, 100).items) == 1


def test_same_token_with_different_request_is_conflict(services: Services) -> None:
    services.jobs.create(request(client_request_token="tok-1"))
    with pytest.raises(ConflictException, match="tok-1 was already used"):
        services.jobs.create(request(client_request_token="tok-1", hyperparameters={"epochCount": "5"}))


def test_duplicate_job_name_is_conflict(services: Services) -> None:
    services.jobs.create(request("dup"))
    with pytest.raises(ConflictException, match="job named dup already exists"):
        services.jobs.create(request("dup", custom_model_name="another-model"))


def test_two_creates_racing_with_one_name_give_a_conflict_not_a_500(services: Services) -> None:
    """Both passed the name check before either committed: the unique index's IntegrityError was a 500."""
    from tests.unit.races import competitor_before_insert

    def competitor() -> None:
        services.jobs.create(request("racing", custom_model_name="first-model"))

    with (
        competitor_before_insert(services.db.engine, "jobs", competitor),
        pytest.raises(ConflictException, match="A model customization job named racing"),
    ):
        services.jobs.create(request("racing", custom_model_name="second-model"))
    assert len(services.jobs.list_jobs(JobFilter(), None, 100).items) == 1


def test_custom_model_name_in_use_by_live_job_is_conflict(services: Services) -> None:
    services.jobs.create(request("first", custom_model_name="shared"))
    with pytest.raises(ConflictException, match="custom model named shared"):
        services.jobs.create(request("second", custom_model_name="shared"))


def test_custom_model_name_is_free_again_after_its_job_stopped(services: Services) -> None:
    services.jobs.create(request("first", custom_model_name="shared"))
    services.jobs.stop("first")
    assert services.jobs.create(request("second", custom_model_name="shared")).name == "second"


def test_unknown_base_model_is_resource_not_found(services: Services) -> None:
    with pytest.raises(ResourceNotFoundException, match=r"no\.such-model-v1:0 does not exist"):
        services.jobs.create(request(base_model_identifier="no.such-model-v1:0"))


def test_base_model_given_as_foundation_model_arn_is_accepted(services: Services) -> None:
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{BASE}"
    assert services.jobs.create(request(base_model_identifier=arn)).base_model_id == BASE


def test_base_model_given_as_non_foundation_arn_is_validation_error(services: Services) -> None:
    arn = f"arn:aws:bedrock:us-east-1:123456789012:custom-model/{BASE}/abcdefghij12"
    with pytest.raises(ValidationException, match="is not a foundation model ARN"):
        services.jobs.create(request(base_model_identifier=arn))


def test_customization_type_unsupported_by_base_model_is_validation_error(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    fine_tuning_only = replace(services.catalog.get(BASE), customizations=("FINE_TUNING",))
    monkeypatch.setattr(services.catalog, "get", lambda identifier: fine_tuning_only)
    with pytest.raises(ValidationException, match="does not support customization type DISTILLATION"):
        services.jobs.create(request(customization_type="DISTILLATION"))


@pytest.mark.parametrize(
    ("hyper", "fragment"),
    [
        ({"epochCount": "0"}, "out of range"),
        ({"epochCount": "two"}, "must be an integer"),
        ({"epochs": "2"}, "Unknown hyperparameter(s): epochs"),
    ],
)
def test_bad_hyperparameter_is_validation_error_and_creates_nothing(
    services: Services, hyper: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ValidationException) as info:
        services.jobs.create(request(hyperparameters=hyper))
    assert fragment in info.value.message
    assert services.jobs.list_jobs(JobFilter(), None, 10).items == []


def test_training_uri_with_foreign_scheme_is_validation_error_naming_member(services: Services) -> None:
    with pytest.raises(ValidationException, match=r"Invalid trainingDataConfig\.s3Uri file:///etc/passwd"):
        services.jobs.create(request(training_uri="file:///etc/passwd"))


def test_validator_outside_allowed_roots_is_validation_error_naming_its_index(services: Services) -> None:
    with pytest.raises(ValidationException, match=r"validationDataConfig\.validators\.2\.member\.s3Uri /etc"):
        services.jobs.create(request(validation_uris=("s3://bucket/v1", "/etc/passwd")))


# -- stop ----------------------------------------------------------------------------------------


def test_stop_queued_job_is_stopped_immediately(services: Services) -> None:
    job = services.jobs.create(request())
    services.jobs.stop(job.arn)
    stopped = services.jobs.get(job.arn)
    assert (stopped.status, stopped.phase, stopped.stop_requested) == ("Stopped", "done", True)
    assert stopped.ended_at is not None
    assert {d["status"] for d in stopped.status_details.values()} == {"NotStarted"}
    assert services.jobs.events(job.arn)[-1].data == {"status": "Stopped"}


def test_stop_already_stopped_job_is_conflict(services: Services) -> None:
    job = services.jobs.create(request())
    services.jobs.stop(job.name)
    with pytest.raises(ConflictException, match="is Stopped and cannot be stopped"):
        services.jobs.stop(job.name)


def test_stop_running_job_moves_it_and_its_running_stage_to_stopping(services: Services) -> None:
    job = services.jobs.create(request())
    set_phase(services, job.id, "running", stage_status="InProgress")
    services.jobs.stop(job.id)
    stopping = services.jobs.get(job.id)
    assert (stopping.status, stopping.phase, stopping.stop_requested) == ("Stopping", "running", True)
    assert stopping.ended_at is None
    assert stopping.status_details["validationDetails"]["status"] == "Stopping"
    assert stopping.status_details["trainingDetails"]["status"] == "NotStarted"


def test_stop_on_stopping_job_is_a_no_op(services: Services) -> None:
    job = services.jobs.create(request())
    set_phase(services, job.id, "running")
    services.jobs.stop(job.id)
    events_before = len(services.jobs.events(job.id))
    services.jobs.stop(job.id)
    assert services.jobs.get(job.id).status == "Stopping"
    assert len(services.jobs.events(job.id)) == events_before


def test_stop_unknown_job_is_resource_not_found(services: Services) -> None:
    with pytest.raises(ResourceNotFoundException):
        services.jobs.stop("ghost")


# -- list ----------------------------------------------------------------------------------------


def names(services: Services, filters: JobFilter, limit: int = 100) -> list[str]:
    return [job.name for job in services.jobs.list_jobs(filters, None, limit).items]


@pytest.fixture
def three_jobs(services: Services) -> tuple[Any, Any]:
    """Alpha-one, then beta-two, then ALPHA-three; returns the times between the creations."""
    services.jobs.create(request("Alpha-one"))
    after_first = utcnow()
    services.jobs.create(request("beta-two"))
    after_second = utcnow()
    services.jobs.create(request("ALPHA-three"))
    return after_first, after_second


def test_list_jobs_is_newest_first_by_default_and_oldest_first_ascending(
    services: Services, three_jobs: tuple[Any, Any]
) -> None:
    assert names(services, JobFilter()) == ["ALPHA-three", "beta-two", "Alpha-one"]
    assert names(services, JobFilter(sort_descending=False)) == ["Alpha-one", "beta-two", "ALPHA-three"]


def test_list_jobs_name_contains_is_case_insensitive(services: Services, three_jobs: tuple[Any, Any]) -> None:
    assert names(services, JobFilter(name_contains="alpha")) == ["ALPHA-three", "Alpha-one"]
    assert names(services, JobFilter(name_contains="BETA")) == ["beta-two"]
    assert names(services, JobFilter(name_contains="gamma")) == []


def test_list_jobs_status_equals_filters_by_status(services: Services, three_jobs: tuple[Any, Any]) -> None:
    services.jobs.stop("beta-two")
    assert names(services, JobFilter(status_equals="Stopped")) == ["beta-two"]
    assert names(services, JobFilter(status_equals="InProgress")) == ["ALPHA-three", "Alpha-one"]
    assert names(services, JobFilter(status_equals="Completed")) == []


def test_list_jobs_creation_time_bounds_are_exclusive_windows(services: Services, three_jobs: tuple[Any, Any]) -> None:
    after_first, after_second = three_jobs
    assert names(services, JobFilter(creation_time_after=after_first)) == ["ALPHA-three", "beta-two"]
    assert names(services, JobFilter(creation_time_before=after_first)) == ["Alpha-one"]
    window = JobFilter(creation_time_after=after_first, creation_time_before=after_second)
    assert names(services, window) == ["beta-two"]


def test_list_jobs_paging_returns_a_cursor_until_the_last_page(services: Services, three_jobs: tuple[Any, Any]) -> None:
    first = services.jobs.list_jobs(JobFilter(), None, 2)
    assert [j.name for j in first.items] == ["ALPHA-three", "beta-two"]
    assert first.next_cursor is not None
    second = services.jobs.list_jobs(JobFilter(), first.next_cursor, 2)
    assert [j.name for j in second.items] == ["Alpha-one"]
    assert second.next_cursor is None


def test_list_jobs_page_that_ends_exactly_at_the_last_job_has_no_cursor(
    services: Services, three_jobs: tuple[Any, Any]
) -> None:
    page = services.jobs.list_jobs(JobFilter(), None, 3)
    assert len(page.items) == 3
    assert page.next_cursor is None


# -- mark_stages ---------------------------------------------------------------------------------


def _job_with_stages(**statuses: str) -> Job:
    return Job(status_details={stage: {"status": status, "creationTime": "t0"} for stage, status in statuses.items()})


def test_mark_stages_only_unfinished_leaves_completed_and_not_started_alone() -> None:
    job = _job_with_stages(
        validationDetails="Completed", dataProcessingDetails="InProgress", trainingDetails="NotStarted"
    )
    mark_stages(job, "Stopping", only_unfinished=True)
    statuses = {stage: details["status"] for stage, details in job.status_details.items()}
    assert statuses == {
        "validationDetails": "Completed",
        "dataProcessingDetails": "Stopping",
        "trainingDetails": "NotStarted",
    }
    assert job.status_details["dataProcessingDetails"]["creationTime"] == "t0"
    assert "lastModifiedTime" in job.status_details["dataProcessingDetails"]
    assert "lastModifiedTime" not in job.status_details["validationDetails"]


def test_mark_stages_only_unfinished_leaves_failed_and_stopped_alone() -> None:
    job = _job_with_stages(validationDetails="Failed", dataProcessingDetails="Stopped", trainingDetails="Stopping")
    mark_stages(job, "Stopped", only_unfinished=True)
    assert [job.status_details[s]["status"] for s in STAGES] == ["Failed", "Stopped", "Stopped"]


def test_mark_stages_all_overwrites_every_stage() -> None:
    job = _job_with_stages(
        validationDetails="Completed", dataProcessingDetails="InProgress", trainingDetails="NotStarted"
    )
    mark_stages(job, "Failed", only_unfinished=False)
    assert [job.status_details[s]["status"] for s in STAGES] == ["Failed", "Failed", "Failed"]


def test_mark_stages_does_not_mutate_the_previous_details_dict() -> None:
    job = _job_with_stages(
        validationDetails="InProgress", dataProcessingDetails="NotStarted", trainingDetails="NotStarted"
    )
    before = job.status_details
    mark_stages(job, "Stopping", only_unfinished=True)
    assert before["validationDetails"]["status"] == "InProgress"
    assert job.status_details is not before


def test_stop_persists_stage_changes_to_the_database(services: Services) -> None:
    job = services.jobs.create(request())
    set_phase(services, job.id, "running", stage_status="InProgress")
    services.jobs.stop(job.id)
    with services.db.session() as session:
        stored = session.scalar(select(Job).where(Job.id == job.id))
        assert stored is not None
        assert stored.status_details["validationDetails"]["status"] == "Stopping"
        kinds = [e.kind for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job.id))]
    assert kinds == ["status", "log", "status"]  # queued, the memory plan, stopping


# -- catalog -------------------------------------------------------------------------------------


def hf_folder(root: Path, config: Any = None, *, weights: bool = True, tokenizer: bool = True) -> Path:
    """A minimal folder shaped like a Hugging Face causal LM (no real weights are ever loaded)."""
    root.mkdir(parents=True)
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    if weights:
        (root / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (root / "tokenizer.json").write_text("{}")
    return root


LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, "model_type": "llama"}


@pytest.fixture
def data_dir(services: Services) -> Path:
    return services.settings.data_dir


def test_register_accepts_minimal_hf_folder_and_get_finds_it(services: Services, data_dir: Path) -> None:
    folder = hf_folder(data_dir / "hf" / "tiny", LLAMA_CONFIG)
    registered = services.catalog.register("my.tiny-llama-v1:0", str(folder))
    found = services.catalog.get("my.tiny-llama-v1:0")
    assert found == registered
    assert (found.family, found.limits.max_total_tokens, found.source) == ("llama", 4096, str(folder))
    assert services.catalog.get("arn:aws:bedrock:us-east-1::foundation-model/my.tiny-llama-v1:0") == found


def test_registered_model_appears_in_list_foundation_models_data(services: Services, data_dir: Path) -> None:
    services.catalog.register("my.tiny-llama-v1:0", str(hf_folder(data_dir / "hf" / "tiny", LLAMA_CONFIG)))
    summaries = [foundation_model(m, services.arns) for m in services.catalog.all()]
    ids = [s["modelId"] for s in summaries]
    assert ids == [*(m.model_id for m in BUILTIN_MODELS), "my.tiny-llama-v1:0"]
    mine = summaries[-1]
    assert mine["modelArn"] == "arn:aws:bedrock:us-east-1::foundation-model/my.tiny-llama-v1:0"
    assert mine["customizationsSupported"] == [
        "FINE_TUNING",
        "CONTINUED_PRE_TRAINING",
        "DISTILLATION",
        "REINFORCEMENT_FINE_TUNING",
    ]
    assert mine["modelLifecycle"] == {"status": "ACTIVE"}


def test_registered_model_can_be_a_job_base(services: Services, data_dir: Path) -> None:
    services.catalog.register("my.tiny-llama-v1:0", str(hf_folder(data_dir / "hf" / "tiny", LLAMA_CONFIG)))
    job = services.jobs.create(request(base_model_identifier="my.tiny-llama-v1:0"))
    assert job.base_model_id == "my.tiny-llama-v1:0"


def test_register_accepts_s3_prefix(services: Services, data_dir: Path, tmp_path: Path) -> None:
    services.store.upload_tree(hf_folder(tmp_path / "staging", LLAMA_CONFIG), "s3://models/tiny/")
    model = services.catalog.register("my.s3-llama", "s3://models/tiny/")
    folder = services.catalog.local_folder(model)
    source = tmp_path / "staging"
    assert (data_dir / "cache") in folder.parents  # a staged copy: the store hands out no path of its own
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == {
        p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()
    }


def test_a_registered_models_staged_copy_follows_a_changed_source(services: Services, tmp_path: Path) -> None:
    services.store.upload_tree(hf_folder(tmp_path / "staging", LLAMA_CONFIG), "s3://models/tiny/")
    model = services.catalog.register("my.s3-llama", "s3://models/tiny/")
    first = services.catalog.local_folder(model)
    assert services.catalog.local_folder(model) == first
    services.store.write_bytes("s3://models/tiny/extra.txt", b"new file")
    assert (services.catalog.local_folder(model) / "extra.txt").read_bytes() == b"new file"


def test_register_refuses_folder_without_config_json(services: Services, data_dir: Path) -> None:
    with pytest.raises(ValidationException, match=r"no config\.json"):
        services.catalog.register("my.m", str(hf_folder(data_dir / "m", None)))


def test_register_refuses_non_causal_architecture(services: Services, data_dir: Path) -> None:
    config = {**LLAMA_CONFIG, "architectures": ["BertModel"]}
    with pytest.raises(ValidationException, match=r"architectures \[BertModel\] is not a causal language model"):
        services.catalog.register("my.m", str(hf_folder(data_dir / "m", config)))


def test_register_accepts_lm_head_model_architectures_such_as_gpt2(services: Services, data_dir: Path) -> None:
    config = {"architectures": ["GPT2LMHeadModel"], "n_positions": 1024, "model_type": "gpt2"}
    model = services.catalog.register("my.gpt2", str(hf_folder(data_dir / "gpt2", config)))
    assert (model.family, model.limits.max_total_tokens) == ("gpt2", 1024)


def test_register_refuses_folder_without_weights(services: Services, data_dir: Path) -> None:
    with pytest.raises(ValidationException, match="no weights"):
        services.catalog.register("my.m", str(hf_folder(data_dir / "m", LLAMA_CONFIG, weights=False)))


def test_register_refuses_folder_without_tokenizer(services: Services, data_dir: Path) -> None:
    with pytest.raises(ValidationException, match="no tokenizer files"):
        services.catalog.register("my.m", str(hf_folder(data_dir / "m", LLAMA_CONFIG, tokenizer=False)))


def test_register_refuses_missing_folder(services: Services, data_dir: Path) -> None:
    with pytest.raises(ValidationException, match="is not a folder"):
        services.catalog.register("my.m", str(data_dir / "nothing-here"))


def test_register_refuses_folder_outside_allowed_roots(services: Services, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "elsewhere", LLAMA_CONFIG)
    with pytest.raises(ValidationException, match="TUNEFORGE_LOCAL_ROOTS"):
        services.catalog.register("my.m", str(folder))
    with pytest.raises(ResourceNotFoundException):
        services.catalog.get("my.m")


@pytest.mark.parametrize("model_id", ["My.Model", "model/x", "-model", "a" * 64, "m:too:many:colon:parts"])
def test_register_refuses_malformed_model_id(services: Services, data_dir: Path, model_id: str) -> None:
    with pytest.raises(ValidationException, match="must match"):
        services.catalog.register(model_id, str(hf_folder(data_dir / "m", LLAMA_CONFIG)))


def test_register_refuses_builtin_and_duplicate_ids(services: Services, data_dir: Path) -> None:
    folder = hf_folder(data_dir / "m", LLAMA_CONFIG)
    with pytest.raises(ValidationException, match="is a built-in model id"):
        services.catalog.register(BASE, str(folder))
    services.catalog.register("my.m", str(folder))
    with pytest.raises(ValidationException, match="already registered"):
        services.catalog.register("my.m", str(folder))


def test_register_refuses_config_json_that_is_not_an_object(services: Services, data_dir: Path) -> None:
    with pytest.raises(ValidationException, match=r"config\.json"):
        services.catalog.register("my.m", str(hf_folder(data_dir / "m", [])))


def test_register_refuses_non_integer_context_length(services: Services, data_dir: Path) -> None:
    config = {**LLAMA_CONFIG, "max_position_embeddings": "4k"}
    with pytest.raises(ValidationException, match="max_position_embeddings"):
        services.catalog.register("my.m", str(hf_folder(data_dir / "m", config)))


def test_fingerprint_ignores_token_but_not_content() -> None:
    base = request(client_request_token="a")
    assert base.fingerprint() == replace(base, client_request_token="b").fingerprint()
    assert base.fingerprint() != replace(base, output_uri="s3://bucket/other/").fingerprint()


# -- continued pre-training and distillation rules ------------------------------------------------

TEACHER = "tuneforge.forge-small-v1:0:512"


def distillation(teacher: str = TEACHER, **teacher_config: Any) -> dict[str, Any]:
    return {"distillationConfig": {"teacherModelConfig": {"teacherModelIdentifier": teacher, **teacher_config}}}


def test_distillation_job_with_a_builtin_teacher_of_the_same_family_is_accepted(services: Services) -> None:
    config = distillation(maxResponseLengthForInference=32)
    job = services.jobs.create(request(customization_type="DISTILLATION", customization_config=config))
    assert job.customization_config == config
    teacher = services.jobs.distillation_teacher(job.customization_config, services.catalog.get(BASE))
    assert teacher.arn == f"arn:aws:bedrock:us-east-1::foundation-model/{TEACHER}"
    assert (teacher.max_response_tokens, teacher.weights_path) == (32, None)


def test_teacher_without_a_response_length_writes_up_to_its_output_limit(services: Services) -> None:
    """Bedrock's maxResponseLengthForInference is optional; left out, the teacher's output limit applies."""
    teacher = services.jobs.distillation_teacher(distillation(), services.catalog.get(BASE))
    assert teacher.max_response_tokens == services.catalog.get(TEACHER).limits.max_output_tokens == 256


def test_distillation_without_a_teacher_is_refused_saying_what_is_missing(services: Services) -> None:
    with pytest.raises(ValidationException, match="teacherModelIdentifier"):
        services.jobs.create(request(customization_type="DISTILLATION"))


def test_teacher_of_another_family_is_refused_at_create_time(services: Services, data_dir: Path) -> None:
    services.catalog.register("my.tiny-llama-v1:0", str(hf_folder(data_dir / "hf" / "tiny", LLAMA_CONFIG)))
    with pytest.raises(ValidationException, match=r"family llama\) cannot teach .* \(family forge\)"):
        services.jobs.create(
            request(customization_type="DISTILLATION", customization_config=distillation("my.tiny-llama-v1:0"))
        )


def test_teacher_of_the_same_family_with_another_tokenizer_is_refused(services: Services, data_dir: Path) -> None:
    student = hf_folder(data_dir / "hf" / "student", LLAMA_CONFIG)
    teacher = hf_folder(data_dir / "hf" / "teacher", LLAMA_CONFIG)
    (teacher / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    services.catalog.register("my.student", str(student))
    services.catalog.register("my.teacher", str(teacher))
    with pytest.raises(ValidationException, match="use different tokenizers"):
        services.jobs.create(
            request(
                base_model_identifier="my.student",
                customization_type="DISTILLATION",
                customization_config=distillation("my.teacher"),
            )
        )
    (teacher / "tokenizer.json").write_text("{}")
    job = services.jobs.create(
        request(
            base_model_identifier="my.student",
            customization_type="DISTILLATION",
            customization_config=distillation("my.teacher"),
        )
    )
    assert job.base_model_id == "my.student"


def test_teacher_can_be_a_custom_model_whose_weights_the_worker_loads(services: Services) -> None:
    arn = services.arns.custom_model(TEACHER, "abcdefghij12")
    with services.db.session() as session:
        session.add(
            CustomModel(
                id="abcdefghij12",
                arn=arn,
                name="tuned-teacher",
                base_model_id=TEACHER,
                base_model_arn=f"arn:aws:bedrock:us-east-1::foundation-model/{TEACHER}",
                customization_type="FINE_TUNING",
                hyperparameters={},
                training_data={},
                validation_data={},
                output_data={},
                weights_path="/models/custom/abcdefghij12",
            )
        )
    job = services.jobs.create(request(customization_type="DISTILLATION", customization_config=distillation(arn)))
    teacher = services.jobs.distillation_teacher(job.customization_config, services.catalog.get(BASE))
    assert (teacher.arn, teacher.weights_path, teacher.foundation.model_id) == (
        arn,
        "/models/custom/abcdefghij12",
        TEACHER,
    )
    unknown = services.arns.custom_model(TEACHER, "zzzzzzzzzzzz")
    with pytest.raises(ResourceNotFoundException, match="teacher model"):
        services.jobs.create(
            request("job-2", customization_type="DISTILLATION", customization_config=distillation(unknown))
        )


@pytest.mark.parametrize("length", [0, 257, "16"])
def test_max_response_length_outside_the_teacher_limit_is_refused(services: Services, length: Any) -> None:
    with pytest.raises(ValidationException, match="maxResponseLengthForInference must be an integer between 1 and 256"):
        services.jobs.create(
            request(
                customization_type="DISTILLATION",
                customization_config=distillation(maxResponseLengthForInference=length),
            )
        )


def test_customization_config_on_other_types_is_refused(services: Services) -> None:
    with pytest.raises(
        ValidationException,
        match=r"only DISTILLATION \(distillationConfig\) and REINFORCEMENT_FINE_TUNING \(rftConfig\) take one",
    ):
        services.jobs.create(request(customization_config=distillation()))


def test_chunk_overlap_must_be_shorter_than_the_chunk(services: Services) -> None:
    with pytest.raises(ValidationException, match=r"chunkOverlap \(64\) must be smaller than the chunk length \(64"):
        services.jobs.create(
            request(customization_type="CONTINUED_PRE_TRAINING", hyperparameters={"maxSequenceLength": "64"})
        )
    job = services.jobs.create(
        request(customization_type="CONTINUED_PRE_TRAINING", hyperparameters={"chunkOverlap": "8"})
    )
    assert job.hyperparameters["chunkOverlap"] == "8"
