"""The ``tuneforge`` CLI against the same installation and a running server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BASE_MODEL, Server, TaskData, cli, unique

pytestmark = pytest.mark.e2e


def test_models_list_and_show(server: Server) -> None:
    listed = json.loads(cli(server, "models", "list", "--json").stdout)
    assert BASE_MODEL in [m["modelId"] for m in listed]
    shown = json.loads(cli(server, "models", "show", BASE_MODEL, "--json").stdout)
    names = [spec["name"] for spec in shown["hyperParameters"]["FINE_TUNING"]]
    assert names[:4] == ["epochCount", "batchSize", "learningRate", "learningRateWarmupSteps"]
    human = cli(server, "models", "show", BASE_MODEL).stdout
    assert "epochCount" in human and "input ≤ 384" in human
    missing = cli(server, "models", "show", "nobody.nothing-v1:0", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_data_validate_reports_counts_estimate_and_line_numbers(server: Server, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Ticket: refund\\nCategory:", "completion": " billing"}\n' * 3)
    report = json.loads(cli(server, "data", "validate", str(good), "--hp", "epochCount=2", "--json").stdout)
    assert report["report"]["ok"] and report["report"]["records"] == 3
    assert report["estimate"]["tokens_processed"] == 2 * report["report"]["total_tokens"]
    assert report["estimate"]["seconds"] > 0
    longest = report["report"]["max_record_tokens"]
    assert report["memory"]["fits"] and report["memory"]["estimate_bytes"] <= report["memory"]["budget_bytes"]
    assert f"micro-batch 8 x {longest} tokens" in report["memory"]["lines"][0]
    shown = cli(server, "data", "validate", str(good)).stdout
    assert "memory plan: estimated peak" in shown
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": 3}\n')
    result = cli(server, "data", "validate", str(bad), check=False)
    assert result.returncode == 1
    assert "line 2" in result.stdout and 'line 3, field "completion"' in result.stdout


def test_data_cp_round_trips_through_s3(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x", "completion": "y"}\n')
    cli(server, "data", "cp", str(source), "s3://cli-tests/in.jsonl")
    cli(server, "data", "cp", "s3://cli-tests/in.jsonl", str(tmp_path / "out.jsonl"))
    assert (tmp_path / "out.jsonl").read_text() == source.read_text()
    refused = cli(server, "data", "cp", str(source), "s3://cli-tests/../../escape.jsonl", check=False)
    assert refused.returncode == 1 and "'..'" in refused.stderr


def test_models_register_imports_a_hf_folder_through_the_api_and_refuses_others(server: Server, bedrock: Any) -> None:
    from tuneforge.model.builtin import ensure_builtin

    own = server.settings.data_dir / "my-models" / unique("m")
    shutil.copytree(ensure_builtin("forge-micro", server.settings.data_dir / "scratch"), own)
    name = f"acme-{own.name}"
    done = cli(server, "models", "register", name, str(own))
    imported = bedrock.get_imported_model(modelIdentifier=name)
    assert f"imported {name} ({imported['modelArn']})" in done.stdout.replace("\n", "")
    jobs = bedrock.list_model_import_jobs(nameContains=f"import-{name}")["modelImportJobSummaries"]
    assert [(j["status"], j["importedModelArn"]) for j in jobs] == [("Completed", imported["modelArn"])]
    not_a_model = server.settings.data_dir / "my-models" / unique("empty")
    not_a_model.mkdir(parents=True)
    refused = cli(server, "models", "register", "acme-empty", str(not_a_model), check=False)
    assert refused.returncode == 1 and "ValidationException" in refused.stderr and "no config.json" in refused.stderr
    outside = cli(server, "models", "register", "acme-etc", "/etc", check=False)
    assert outside.returncode == 1 and "outside the allowed roots" in outside.stderr
    assert bedrock.list_imported_models(nameContains="acme-e")["modelSummaries"] == []


def test_jobs_create_wait_get_list_and_stop(server: Server, task_data: TaskData) -> None:
    name = unique("cli")
    url = ["--endpoint-url", server.url]
    created = cli(
        server,
        "jobs",
        "create",
        "--name",
        name,
        "--model-name",
        f"m-{name}",
        "--base-model",
        BASE_MODEL,
        "--training",
        task_data.small_uri,
        "--output",
        f"s3://cli-tests/{name}/",
        "--hp",
        "epochCount=1",
        "--json",
        *url,
    )
    arn = json.loads(created.stdout)["jobArn"]
    waited = json.loads(cli(server, "jobs", "wait", name, "--json", *url).stdout)
    assert waited["status"] == "Completed" and waited["jobArn"] == arn
    shown = cli(server, "jobs", "get", name, *url).stdout
    assert "Completed" in shown and "training loss" in shown
    listed = json.loads(cli(server, "jobs", "list", "--name-contains", name, "--json", *url).stdout)
    assert [j["jobArn"] for j in listed] == [arn]
    conflict = cli(server, "jobs", "stop", name, *url, check=False)
    assert conflict.returncode == 1 and "ConflictException" in conflict.stderr
