"""Custom Model Import in process: the create-time checks, the import job, and the imported model's uses.

Folders here are written by hand (a safetensors file is an 8-byte length, a JSON header and zeros),
so nothing loads torch; the one GGUF conversion that runs (and fails) does so in the import's own
child process, as on a server.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from tuneforge.catalog.imported import CreateImportJobRequest, ImportedModelFilter, ImportJobFilter
from tuneforge.catalog.imports import ImportCheckError, inspect_source
from tuneforge.errors import ConflictException, ResourceNotFoundException, ValidationException
from tuneforge.jobs.service import CreateJobRequest
from tuneforge.services import Services
from tuneforge.settings import Settings

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 256}
TENSORS = {"model.embed_tokens.weight": [16, 8], "lm_head.weight": [16, 8]}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def write_safetensors(path: Path, tensors: dict[str, list[int]], cut: int = 0) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in tensors.items():
        size = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(offset)
    path.write_bytes(data[: len(data) - cut])


def hf_folder(root: Path, config: dict[str, Any] = LLAMA, *, tokenizer: bool = True, template: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    write_safetensors(root / "model.safetensors", TENSORS)
    if tokenizer:
        (root / "tokenizer.json").write_text("{}")
        config_json = {"chat_template": CHAT_TEMPLATE} if template else {}
        (root / "tokenizer_config.json").write_text(json.dumps(config_json))
    return root


def tiny_gguf(path: Path, qtype: GGMLQuantizationType, *, arch: str = "llama") -> Path:
    """One 256-value tensor in ``qtype`` (written as raw blocks) and a three-token vocabulary."""
    writer = GGUFWriter(str(path), arch)
    writer.add_context_length(128)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c"])
    block_bytes = {GGMLQuantizationType.Q8_K: 4 + 256 + 2 * 16, GGMLQuantizationType.Q8_0: 2 + 32}[qtype]
    blocks = 256 // {GGMLQuantizationType.Q8_K: 256, GGMLQuantizationType.Q8_0: 32}[qtype]
    writer.add_tensor("token_embd.weight", np.zeros((1, block_bytes * blocks), np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def services(fast_tmp: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=fast_tmp / "data"))
    yield created
    created.imports.shutdown()
    created.close()


@pytest.fixture
def models(services: Services) -> Path:
    return services.settings.data_dir / "my-models"


def request(source: str | Path, name: str = "imp-1", **overrides: Any) -> CreateImportJobRequest:
    fields: dict[str, Any] = {
        "job_name": name,
        "imported_model_name": f"{name}-model",
        "role_arn": "arn:aws:iam::123456789012:role/BedrockRole",
        "source_uri": str(source),
    }
    return CreateImportJobRequest(**{**fields, **overrides})


def finished(services: Services, job_arn: str) -> Any:
    services.imports.wait_idle(timeout=300)
    return services.imports.get_job(job_arn)


def assert_nothing_registered(services: Services) -> None:
    assert services.imports.list_jobs(ImportJobFilter(), None, 10).items == []
    assert services.imports.list_models(ImportedModelFilter(), None, 10).items == []
    assert [m for m in services.catalog.all() if m.arn is not None] == []


# -- the checks --------------------------------------------------------------------------------------


def test_folder_facts_count_parameters_from_safetensors_headers_and_see_the_chat_template(tmp_path: Path) -> None:
    facts = inspect_source(hf_folder(tmp_path / "m"))
    assert (facts.kind, facts.architecture, facts.parameter_count) == ("folder", "llama", 256)
    assert (facts.context_length, facts.instruct_supported, facts.dtype) == (256, True, "float32")
    assert inspect_source(hf_folder(tmp_path / "plain", template=False)).instruct_supported is False


def test_folder_in_float16_and_gpt2_architecture_pass(tmp_path: Path) -> None:
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 64, "torch_dtype": "float16"}
    facts = inspect_source(hf_folder(tmp_path / "g", config))
    assert (facts.architecture, facts.context_length, facts.dtype) == ("gpt2", 64, "float16")


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            {"architectures": ["FalconForCausalLM"], "model_type": "falcon"},
            "config.json architectures [FalconForCausalLM] (model_type falcon) is not a supported architecture",
        ),
        ({**LLAMA, "torch_dtype": "int8"}, "config.json torch_dtype int8 is not supported"),
        ({**LLAMA, "quantization_config": {"quant_method": "gptq"}}, "quantization_config (gptq)"),
    ],
)
def test_folder_config_outside_what_tuneforge_runs_is_refused_by_name(
    tmp_path: Path, config: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ImportCheckError) as raised:
        inspect_source(hf_folder(tmp_path / "m", config))
    assert reason in str(raised.value)


def test_truncated_safetensors_is_refused_with_the_byte_counts(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m")
    write_safetensors(folder / "model.safetensors", TENSORS, cut=10)
    with pytest.raises(ImportCheckError, match=r"model\.safetensors is truncated: its tensors need 1024 bytes"):
        inspect_source(folder)


def test_safetensors_cut_inside_its_header_is_refused(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:20])
    with pytest.raises(ImportCheckError, match=r"model\.safetensors is truncated or not a safetensors file"):
        inspect_source(folder)


def test_sharded_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ImportCheckError, match=r"names missing files: model-00001-of-00002\.safetensors"):
        inspect_source(folder)


@pytest.mark.parametrize("name", ["ABSOLUTE", "../outside.safetensors", "sub/../../outside.safetensors"])
def test_index_naming_a_file_outside_the_folder_is_refused_without_reading_it(tmp_path: Path, name: str) -> None:
    folder = hf_folder(tmp_path / "m")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"SECRETSS" + bytes(8))
    name = str(outside) if name == "ABSOLUTE" else name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": name}}))
    with pytest.raises(ImportCheckError) as raised:
        inspect_source(folder)
    assert f"names {name!r}, which is not a file name inside the model folder" in str(raised.value)
    assert str(struct.unpack("<Q", b"SECRETSS")[0]) not in str(raised.value)


def test_safetensors_length_field_past_the_end_does_not_print_the_files_bytes(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"SECRETSS" + bytes(8))
    with pytest.raises(ImportCheckError) as raised:
        inspect_source(folder)
    assert "model.safetensors is truncated or not a safetensors file" in str(raised.value)
    assert str(struct.unpack("<Q", b"SECRETSS")[0]) not in str(raised.value)


@pytest.mark.parametrize("link", ["tokenizer.json", "sub", "model.safetensors"])
def test_folder_holding_a_symbolic_link_is_refused_naming_it(tmp_path: Path, link: str) -> None:
    folder = hf_folder(tmp_path / "m")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "tokenizer.json").write_text("{}")
    write_safetensors(outside / "model.safetensors", TENSORS)
    (folder / link).unlink(missing_ok=True)
    (folder / link).symlink_to(outside / link if link != "sub" else outside)
    with pytest.raises(ImportCheckError, match=rf"{link} is a symbolic link"):
        inspect_source(folder)


def test_a_symlinked_gguf_in_a_folder_is_refused(tmp_path: Path) -> None:
    real = tiny_gguf(tmp_path / "real.gguf", GGMLQuantizationType.Q8_0)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.gguf").symlink_to(real)
    with pytest.raises(ImportCheckError, match=r"model\.gguf is a symbolic link"):
        inspect_source(tmp_path / "m")


@pytest.mark.parametrize(
    "entry",
    [
        # A negative dimension and a negative end agree with each other (-4 values x 4 bytes = -16 bytes)
        # and would subtract parameters from the count; offsets out of order likewise.
        {"dtype": "F32", "shape": [-1000000, 4], "data_offsets": [0, -16000000]},
        {"dtype": "F32", "shape": [-4], "data_offsets": [16, 0]},
        {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 20]},
        {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]},
    ],
)
def test_safetensors_header_with_negative_or_out_of_order_values_is_refused(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    folder = hf_folder(tmp_path / "m")
    header = {"model.embed_tokens.weight": {"dtype": "F32", "shape": [16, 8], "data_offsets": [0, 512]}, "x": entry}
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(512))
    with pytest.raises(ImportCheckError, match=r"tensor 'x' has a malformed header entry"):
        inspect_source(folder)


def test_safetensors_dtype_of_unknown_width_is_refused(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m")
    header = {"x": {"dtype": "Q4", "shape": [1 << 40], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(ImportCheckError, match=r"tensor 'x' has dtype Q4, whose byte width the import does not know"):
        inspect_source(folder)


def test_too_large_for_the_memory_limit_is_refused_with_numbers(tmp_path: Path) -> None:
    with pytest.raises(ImportCheckError) as raised:
        inspect_source(hf_folder(tmp_path / "m"), memory_limit_bytes=1000)
    assert "too large for this machine: 256 parameters need 0.00 GiB as float32 weights" in str(raised.value)
    inspect_source(tmp_path / "m", memory_limit_bytes=1024)


def test_gguf_of_a_type_the_loader_cannot_dequantize_is_refused_naming_the_type(tmp_path: Path) -> None:
    with pytest.raises(ImportCheckError) as raised:
        inspect_source(tiny_gguf(tmp_path / "q8k.gguf", GGMLQuantizationType.Q8_K))
    assert "q8k.gguf: tensor 'token_embd.weight' has quantization type Q8_K" in str(raised.value)


def test_gguf_of_an_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportCheckError, match="GGUF architecture falcon is not a supported architecture"):
        inspect_source(tiny_gguf(tmp_path / "f.gguf", GGMLQuantizationType.Q8_0, arch="falcon"))


def test_gguf_facts_and_a_folder_holding_one_gguf_is_that_file(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    tiny_gguf(tmp_path / "only" / "tiny.gguf", GGMLQuantizationType.Q8_0)
    facts = inspect_source(tmp_path / "only")
    assert (facts.kind, facts.architecture, facts.parameter_count, facts.context_length) == ("gguf", "llama", 256, 128)
    assert (facts.dtype, facts.instruct_supported) == ("Q8_0", False)


def raw_gguf(path: Path, key: str, value: bytes) -> Path:
    """A GGUF v3 file with no tensors and one metadata entry whose type-and-value bytes are ``value``."""
    name = key.encode()
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(name)) + name + value)
    return path


ARRAY, UINT8, UINT32 = 9, 0, 4


def test_gguf_with_deeply_nested_arrays_is_refused_not_crashed(tmp_path: Path) -> None:
    """The reader recurses once per nesting level: 5,000 levels are a RecursionError, refused by name."""
    depth = 5000
    value = struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) * depth + struct.pack("<IQI", UINT32, 1, 7)
    path = raw_gguf(tmp_path / "nested.gguf", "general.nested", value)
    with pytest.raises(
        ImportCheckError, match=r"nested\.gguf .* is not a readable GGUF file: its arrays nest too deeply"
    ):
        inspect_source(path)


def test_gguf_whose_array_needs_more_memory_than_the_inspection_allows_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader makes one numpy view per array element; under the inspector's memory limit a
    large array ends in a refusal, in the inspector's process, not the caller's."""
    from tuneforge.catalog import imports

    monkeypatch.setattr(imports, "GGUF_INSPECT_MEMORY_BYTES", 384 << 20)
    count = 2_000_000
    value = struct.pack("<I", ARRAY) + struct.pack("<IQ", UINT8, count) + bytes(count)
    path = raw_gguf(tmp_path / "wide.gguf", "general.wide", value)
    with pytest.raises(ImportCheckError, match=r"wide\.gguf .*(memory limit|inspection's limits)"):
        inspect_source(path)


def test_empty_gguf_and_non_gguf_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(ImportCheckError, match=r"e\.gguf is empty \(0 bytes\)"):
        inspect_source(tmp_path / "e.gguf")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ImportCheckError, match=r"w\.bin is a file but not a GGUF file"):
        inspect_source(tmp_path / "w.bin")


# -- the service: refusals register nothing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda root: hf_folder(root, tokenizer=False), "no tokenizer files"),
        (
            lambda root: hf_folder(root, {"architectures": ["BertModel"], "model_type": "bert"}),
            "architectures [BertModel] (model_type bert) is not a supported architecture",
        ),
        (lambda root: (hf_folder(root) / "model.safetensors").write_bytes(b""), "model.safetensors is empty (0 bytes)"),
    ],
)
def test_create_refuses_bad_sources_naming_the_problem_and_registers_nothing(
    services: Services, models: Path, make: Any, reason: str
) -> None:
    root = models / "bad"
    make(root)
    with pytest.raises(ValidationException) as raised:
        services.imports.create(request(root))
    assert reason in raised.value.message and str(root) in raised.value.message
    assert_nothing_registered(services)


def test_create_refuses_a_path_outside_the_allowed_roots(services: Services) -> None:
    with pytest.raises(ValidationException, match=r"modelDataSource\.s3DataSource\.s3Uri /etc: .*outside"):
        services.imports.create(request("/etc"))
    assert_nothing_registered(services)


def test_create_refuses_a_model_over_the_memory_limit_setting(fast_tmp: Path) -> None:
    services = Services.create(Settings(data_dir=fast_tmp / "small", import_memory_limit_bytes=512))
    try:
        folder = hf_folder(services.settings.data_dir / "m")
        with pytest.raises(ValidationException, match="too large for this machine: 256 parameters"):
            services.imports.create(request(folder))
        assert_nothing_registered(services)
    finally:
        services.close()


# -- the service: a folder import, and what the imported model is then ---------------------------------


def test_folder_import_completes_and_the_model_is_a_catalog_base(services: Services, models: Path) -> None:
    folder = hf_folder(models / "tiny")
    job = services.imports.create(
        request(folder, job_tags=({"key": "team", "value": "a"},), imported_model_tags=({"key": "tier", "value": "b"},))
    )
    assert job.arn == f"arn:aws:bedrock:us-east-1:123456789012:model-import-job/{job.id}"
    done = finished(services, job.arn)
    assert (done.status, done.failure_message) == ("Completed", None)
    model = services.imports.get_model("imp-1-model")
    assert model.arn == done.imported_model_arn
    assert model.arn == f"arn:aws:bedrock:us-east-1:123456789012:imported-model/{job.imported_model_id}"
    copy = Path(str(model.weights_path))
    assert copy.is_relative_to(services.settings.models_dir) and (copy / "model.safetensors").is_file()
    assert (model.family, model.instruct_supported, model.parameter_count) == ("llama", True, 256)

    base = services.catalog.get(model.arn)
    assert (base.model_id, base.arn, base.source) == (model.model_id, model.arn, str(copy))
    assert "ON_DEMAND" in base.inference_types
    assert base not in services.catalog.foundation_models()
    custom_job = services.jobs.create(
        CreateJobRequest(
            job_name="ft-imported",
            custom_model_name="ft-imported-model",
            role_arn="arn:aws:iam::123456789012:role/BedrockRole",
            base_model_identifier=model.arn,
            customization_type="FINE_TUNING",
            training_uri="s3://bucket/train.jsonl",
            output_uri="s3://bucket/out/",
        )
    )
    assert custom_job.base_model_arn == model.arn
    assert services.tags.list_tags(job.arn) == [{"key": "team", "value": "a"}]
    assert services.tags.list_tags(model.arn) == [{"key": "tier", "value": "b"}]
    services.tags.tag(model.arn, [{"key": "owner", "value": "me"}])
    assert [t["key"] for t in services.imports.get_model(model.arn).tags] == ["tier", "owner"]

    with pytest.raises(ConflictException, match="model customization job ft-imported has not finished"):
        services.imports.delete_model(model.arn)
    services.jobs.stop(custom_job.arn)
    services.imports.delete_model(model.arn)
    assert not copy.exists()
    with pytest.raises(ResourceNotFoundException):
        services.imports.get_model(model.arn)
    with pytest.raises(ResourceNotFoundException):
        services.catalog.get(model.arn)


def test_names_are_unique_and_the_client_request_token_is_idempotent(services: Services, models: Path) -> None:
    folder = hf_folder(models / "tiny")
    first = services.imports.create(request(folder, client_request_token="tok-1"))
    assert services.imports.create(request(folder, client_request_token="tok-1")).arn == first.arn
    with pytest.raises(ConflictException, match="clientRequestToken tok-1 was already used"):
        services.imports.create(request(folder, name="other", client_request_token="tok-1"))
    with pytest.raises(ConflictException, match="A model import job named imp-1 already exists"):
        services.imports.create(request(folder, imported_model_name="fresh"))
    with pytest.raises(ConflictException, match="An imported model named imp-1-model already exists"):
        services.imports.create(request(folder, name="imp-2", imported_model_name="imp-1-model"))
    # Once the first import has ended, the name is taken by the model itself (it failed once under load
    # without this: the state the check saw is now fixed, and a failed first import names its reason).
    done = finished(services, first.arn)
    assert done.status == "Completed", done.failure_message
    with pytest.raises(ConflictException, match="An imported model named imp-1-model already exists"):
        services.imports.create(request(folder, name="imp-3", imported_model_name="imp-1-model"))


def test_gguf_whose_conversion_fails_ends_failed_with_the_reason_and_registers_nothing(
    services: Services, models: Path
) -> None:
    """The tiny GGUF passes the header checks but is no model transformers can build: the failure
    happens in the conversion process and ends the job Failed, naming the file."""
    models.mkdir(parents=True)
    path = tiny_gguf(models / "tiny.gguf", GGMLQuantizationType.Q8_0)
    job = services.imports.create(request(path))
    done = finished(services, job.arn)
    assert done.status == "Failed" and done.imported_model_arn is None
    assert done.failure_message.startswith(
        f"The model at {path} could not be imported: GGUF conversion failed: "
        "transformers could not build a model from tiny.gguf: KeyError"
    )
    assert services.imports.list_models(ImportedModelFilter(), None, 10).items == []
    assert list((services.settings.models_dir / "imported").iterdir()) == []


def test_recover_fails_imports_a_stopped_server_left_in_progress(services: Services, models: Path) -> None:
    folder = hf_folder(models / "tiny")
    job = services.imports.create(request(folder))
    services.imports.wait_idle(timeout=60)
    with services.db.session() as session:
        from tuneforge.db.tables import ModelImportJob

        row = session.get(ModelImportJob, job.id)
        assert row is not None
        row.status, row.imported_model_arn = "InProgress", None
    services.imports.recover()
    failed = services.imports.get_job(job.arn)
    assert failed.status == "Failed" and "server stopped before the import finished" in str(failed.failure_message)


def test_create_refuses_a_folder_with_a_link_to_outside_and_registers_nothing(services: Services, models: Path) -> None:
    folder = hf_folder(models / "linked")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to("/etc/hostname")
    with pytest.raises(ValidationException, match=r"cannot be imported: tokenizer\.json is a symbolic link"):
        services.imports.create(request(folder))
    assert_nothing_registered(services)


def test_a_link_added_after_create_fails_the_job_and_nothing_outside_is_copied(
    services: Services, models: Path
) -> None:
    """The job checks the source again before copying; the one-import-at-a-time lock holds the job
    back while the link is added."""
    folder = hf_folder(models / "tiny")
    with services.imports._one_at_a_time:
        job = services.imports.create(request(folder))
        (folder / "extra.txt").symlink_to("/etc/hostname")
    done = finished(services, job.arn)
    assert done.status == "Failed" and "extra.txt is a symbolic link" in str(done.failure_message)
    assert list((services.settings.models_dir / "imported").iterdir()) == []
    assert services.imports.list_models(ImportedModelFilter(), None, 10).items == []


def test_a_shutdown_after_the_rename_removes_the_imported_folder(
    services: Services, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stopping between the copy's rename into ``imported/<id>`` and the registering commit
    (simulated: the commit fails while the service is stopping) leaves no folder behind."""

    def stop_then_fail(*args: Any) -> None:
        services.imports._stopping.set()
        raise RuntimeError("the database went away with the server")

    monkeypatch.setattr(services.imports, "_complete", stop_then_fail)
    job = services.imports.create(request(hf_folder(models / "tiny")))
    services.imports.wait_idle(timeout=60)
    assert not (services.settings.models_dir / "imported" / job.imported_model_id).exists()
    services.imports.recover()
    assert services.imports.get_job(job.arn).status == "Failed"


def test_recover_removes_the_imported_folder_of_a_job_it_fails(services: Services, models: Path) -> None:
    """A server killed between the rename and the commit leaves ``imported/<id>`` and an InProgress
    job: recover fails the job and removes the folder, which nothing registered."""
    services.imports._stopping.set()  # the job is accepted but never runs, as on a server that died
    job = services.imports.create(request(hf_folder(models / "tiny")))
    services.imports.wait_idle(timeout=60)
    orphan = services.settings.models_dir.resolve() / "imported" / job.imported_model_id
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"x")
    services.imports.recover()
    assert not orphan.exists()
    assert services.imports.get_job(job.arn).status == "Failed"


@pytest.mark.parametrize(
    ("key", "echoed"),
    [
        ("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", False),
        ("alias/my-key", False),
    ],
)
def test_kms_key_members_of_responses_hold_only_a_key_arn(
    services: Services, models: Path, key: str, echoed: bool
) -> None:
    """botocore's KmsKeyArn (the responses) takes only a key ARN; the request's KmsKeyId also takes
    a key id or an alias, which tuneforge cannot resolve to an ARN without KMS, so those are omitted."""
    from tuneforge.api.bedrock import import_schemas

    job = services.imports.create(request(hf_folder(models / "tiny"), kms_key=key))
    done = finished(services, job.arn)
    model = services.imports.get_model(done.imported_model_arn)
    expected = key if echoed else None
    assert import_schemas.import_job_details(done).get("importedModelKmsKeyArn") == expected
    assert import_schemas.imported_model_details(model).get("modelKmsKeyArn") == expected


def test_a_data_directory_from_before_imports_gains_the_new_columns_and_keeps_its_models(fast_tmp: Path) -> None:
    """``create_all`` leaves existing tables alone: without the added columns, every catalog query of
    an older data directory failed with "no such column: registered_models.arn"."""
    import sqlite3

    data_dir = fast_tmp / "old"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "tuneforge.db") as old:
        old.execute(
            "CREATE TABLE registered_models (model_id VARCHAR(140) PRIMARY KEY, provider VARCHAR(64), "
            "source VARCHAR(4096), family VARCHAR(64), context_length INTEGER, parameter_count INTEGER, "
            "created_at DATETIME)"
        )
        old.execute(
            "INSERT INTO registered_models VALUES ('my.old-v1', 'acme', '/models/old', 'llama', 2048, NULL, "
            "'2026-01-01 00:00:00')"
        )
    services = Services.create(Settings(data_dir=data_dir))
    try:
        old_model = services.catalog.get("my.old-v1")
        assert (old_model.provider, old_model.arn, old_model.limits.max_total_tokens) == ("acme", None, 2048)
        folder = hf_folder(data_dir / "m")
        done = finished(services, services.imports.create(request(folder)).arn)
        assert done.status == "Completed", done.failure_message
        assert services.catalog.get(str(done.imported_model_arn)).name == "imp-1-model"
    finally:
        services.imports.shutdown()
        services.close()
