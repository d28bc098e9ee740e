"""Exported weights answer as the server does: ``tuneforge models export`` end to end.

A real job fine-tunes forge-micro on the demo task (one epoch, ~50 steps), a provisioned throughput
serves it, and the CLI exports it merged and as adapter + base. Each export is then loaded in a
fresh Python process with plain transformers and peft (tuneforge is never imported there), and its
greedy answers must equal the server's InvokeModel answers at temperature 0, token for token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, TaskData, cli, unique, wait_for_status

pytestmark = pytest.mark.e2e

MAX_TOKENS = 24

PLAIN_HF_GREEDY = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    args = json.loads(sys.argv[1])
    folder = args["folder"]
    with open(f"{folder}/tokenizer_config.json") as handle:
        tokenizer_class = json.load(handle)["tokenizer_class"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    if args["base"]:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(args["base"])
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    answers = []
    for prompt in args["prompts"]:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=args["max_new_tokens"], do_sample=False)
        tokens = output[0, inputs["input_ids"].shape[1]:].tolist()
        stopped = tokenizer.eos_token_id in tokens
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)] if stopped else tokens
        answers.append({"tokens": tokens, "text": tokenizer.decode(tokens), "stopped": stopped})
    print(json.dumps({"tokenizer_class": tokenizer_class, "answers": answers,
                      "tuneforge_imported": any(m.startswith("tuneforge") for m in sys.modules)}))
    """
)


@dataclass(frozen=True)
class Served:
    model_name: str
    prompts: list[str]
    answers: list[dict[str, Any]]
    """InvokeModel's response bodies, one per prompt, at temperature 0."""


def plain_hf_greedy(folder: Path, prompts: list[str], base: Path | None = None) -> dict[str, Any]:
    """Greedy answers from ``folder`` in a fresh interpreter that sees no tuneforge source or settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_") and k != "PYTHONPATH"}
    args = {"folder": str(folder), "base": str(base) if base else None, "prompts": prompts}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_HF_GREEDY, json.dumps({**args, "max_new_tokens": MAX_TOKENS})],
        env={**env, "HF_HUB_OFFLINE": "1"},
        cwd=folder.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["tuneforge_imported"] is False
    return loaded


@pytest.fixture(scope="module")
def served(server: Server, bedrock: Any, task_data: TaskData) -> Served:
    """forge-micro fine-tuned on the demo task (LoRA, adapter only), behind a provisioned throughput."""
    name = unique("export")
    job = bedrock.create_model_customization_job(
        jobName=name,
        customModelName=name,
        roleArn=ROLE,
        baseModelIdentifier=STUDENT_MODEL,
        trainingDataConfig={"s3Uri": task_data.train_uri},
        outputDataConfig={"s3Uri": f"s3://tests/export/{name}/"},
        hyperParameters={"epochCount": "1"},
    )["jobArn"]
    done = wait_for_status(bedrock, job, ("Completed", "Failed", "Stopped"))
    assert done["status"] == "Completed", done.get("failureMessage")
    deployment = bedrock.create_provisioned_model_throughput(
        provisionedModelName=name, modelId=done["outputModelArn"], modelUnits=1
    )["provisionedModelArn"]
    deadline = time.monotonic() + 300
    while (status := bedrock.get_provisioned_model_throughput(provisionedModelId=deployment))["status"] == "Creating":
        assert time.monotonic() < deadline, status
        time.sleep(0.25)
    assert status["status"] == "InService", status.get("failureMessage")
    runtime = server.bedrock_runtime()
    prompts = [record["prompt"] for record in task_data.test_records[:3]]
    answers = []
    for prompt in prompts:
        body = json.dumps({"prompt": prompt, "max_gen_len": MAX_TOKENS, "temperature": 0})
        answers.append(json.loads(runtime.invoke_model(modelId=deployment, body=body)["body"].read()))
    bedrock.delete_provisioned_model_throughput(provisionedModelId=deployment)
    return Served(name, prompts, answers)


def assert_same_answers(served: Served, loaded: dict[str, Any], tokenizer_folder: Path) -> None:
    """Equal text, token count and stop reason; and the same tokens, which the byte-level tokenizer
    recovers exactly from the server's text when that text is valid UTF-8."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    for server_answer, exported in zip(served.answers, loaded["answers"], strict=True):
        text = server_answer["generation"]
        assert "\ufffd" not in text, f"the tuned model answered with a partial character: {text!r}"
        assert exported["text"] == text
        assert exported["tokens"] == tokenizer.encode(text, add_special_tokens=False)
        assert len(exported["tokens"]) == server_answer["generation_token_count"]
        assert exported["stopped"] == (server_answer["stop_reason"] == "stop")


def test_merged_export_loads_with_plain_transformers_and_answers_as_the_server(
    server: Server, served: Served, tmp_path: Path
) -> None:
    dest = tmp_path / "merged"
    exported = json.loads(cli(server, "models", "export", served.model_name, str(dest), "--json").stdout)
    assert exported["form"] == "merged" and exported["baseModelId"] == STUDENT_MODEL
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= set(
        exported["files"]
    )
    loaded = plain_hf_greedy(dest, served.prompts)
    assert loaded["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert_same_answers(served, loaded, dest)


def test_adapter_export_with_its_base_loads_with_plain_peft_and_answers_as_the_server(
    server: Server, served: Served, tmp_path: Path
) -> None:
    """Written over a folder that holds a file: refused without --force, replaced with it."""
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    args = ("models", "export", served.model_name, str(dest), "--adapter", "--include-base")
    refused = cli(server, *args, check=False)
    assert refused.returncode == 1 and "is not empty" in refused.stderr and "--force" in refused.stderr
    assert [path.name for path in dest.iterdir()] == ["keep.txt"]
    cli(server, *args, "--force")
    assert not (dest / "keep.txt").exists()
    config = json.loads((dest / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == STUDENT_MODEL
    assert f"`{STUDENT_MODEL}`" in (dest / "README.md").read_text()
    loaded = plain_hf_greedy(dest, served.prompts, base=dest / "base")
    assert loaded["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert_same_answers(served, loaded, dest)


def test_export_refuses_an_unknown_model_in_one_line(server: Server, tmp_path: Path) -> None:
    unknown = cli(server, "models", "export", "no-such-model", str(tmp_path / "x"), check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: The custom model no-such-model does not exist."
    assert not (tmp_path / "x").exists()
