"""The advisor and its bake-off against a real server, on facts that change after training.

``tuneforge advise --try`` is run as a user runs it, on generated data (:func:`make_changing_facts`,
fixed seed): twelve questions about a fictional archipelago whose references hold today's facts,
the documents as they were (continued pre-training learns these) and the documents after half the
facts changed (the knowledge base indexes these, as a RAG deployment re-ingests a changed document).
One bake-off serves both tests; forge-micro keeps the training arm to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import link_folder
from tests.e2e.conftest import STUDENT_MODEL, Server, cli
from tuneforge.catalog.models import SMOLLM2
from tuneforge.data.tasks import make_changing_facts, write_jsonl
from tuneforge.storage import ObjectStore

pytestmark = pytest.mark.e2e

GENERATOR = "huggingface.smollm2-135m-instruct-v1:0:8k"
"""RAG's generator must read the passages: the built-in forge models start from random weights."""


@pytest.fixture(scope="module")
def generator(server: Server, smollm2_converted: Path) -> None:
    """The session's conversion of SmolLM2 linked into the server's models folder, where the engine finds
    it complete, as after its own first use: converting it again costs ~20 s of CI, and the server's
    conversion on first use is tested by tests/e2e/test_smollm2.py."""
    link_folder(smollm2_converted, server.settings.models_dir / "builtin" / SMOLLM2)


@pytest.fixture(scope="module")
def bake_off(server: Server, generator: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    before, after, questions = make_changing_facts(seed=0)
    folder = tmp_path_factory.mktemp("freshness")
    data = write_jsonl(folder / "questions.jsonl", questions)
    documents = write_jsonl(folder / "documents.jsonl", before)
    updated = write_jsonl(folder / "updated.jsonl", after)
    result = cli(
        server,
        "advise",
        str(data),
        "--documents",
        str(documents),
        "--updated-documents",
        str(updated),
        "--goal",
        "knowledge-changes",
        "--try",
        "--budget-minutes",
        "10",
        "--held-out",
        str(len(questions)),
        "--base-model",
        STUDENT_MODEL,
        "--generator",
        GENERATOR,
        "--rag-results",
        "1",
        "--json",
    )
    return json.loads(result.stdout), result.stderr


def arm(result: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [a for a in result["bakeOff"]["arms"] if a["approach"] == name]
    return found


def test_the_advisor_recommends_rag_for_changing_knowledge_and_the_bake_off_keeps_its_budget(
    server: Server, bake_off: tuple[dict[str, Any], str]
) -> None:
    result, progress = bake_off
    assert result["approach"] == "RAG" and "knowledge changes" in result["reasons"][0]
    assert result["profile"]["records"] == 12 and result["documentsProfile"]["kind"] == "text"
    report = result["bakeOff"]
    assert progress.index("budget: 10 min") < progress.index("CONTINUED_PRE_TRAINING: started")
    assert report["withinBudget"] and report["elapsedSeconds"] <= report["budgetSeconds"]
    assert [a["approach"] for a in report["arms"]] == ["PROMPT_ONLY", "CONTINUED_PRE_TRAINING", "RAG"]
    for name in ("PROMPT_ONLY", "CONTINUED_PRE_TRAINING"):
        measured = arm(result, name)
        assert measured["status"] == "measured", measured
        assert set(measured["qualityByCategory"]) == {"changed", "unchanged"}
        assert measured["latencyP50Ms"] > 0 and measured["servingCostPer1kRequests"] > 0
        assert measured["totalCost"] > 0
    pretrained = arm(result, "CONTINUED_PRE_TRAINING")
    assert pretrained["trainingSeconds"] > 0
    assert pretrained["qualityByCategory"]["changed"] == 0.0, "trained on the old documents, it cannot know"
    assert report["recommendation"]["approach"] in {a["approach"] for a in report["arms"]}

    bedrock = server.bedrock()
    assert report["kept"] == []
    run = report["prefix"].rsplit("/", 1)[-1]
    assert bedrock.list_custom_models(nameContains=run)["modelSummaries"] == []
    assert bedrock.list_evaluation_jobs(nameContains=run)["jobSummaries"] == []
    knowledge_bases = server.client("bedrock-agent").list_knowledge_bases()["knowledgeBaseSummaries"]
    assert [kb["name"] for kb in knowledge_bases if run in kb["name"]] == []


def test_rag_answers_the_changed_facts_that_continued_pre_training_missed(
    bake_off: tuple[dict[str, Any], str],
) -> None:
    result, _ = bake_off
    rag = arm(result, "RAG")
    assert rag["status"] == "measured", rag
    pretrained = arm(result, "CONTINUED_PRE_TRAINING")
    assert rag["qualityByCategory"]["changed"] >= 0.3, rag
    assert rag["qualityByCategory"]["changed"] > pretrained["qualityByCategory"]["changed"]


def test_the_advice_endpoint_answers_a_sigv4_signed_request_as_the_console_and_scripts_send_it(server: Server) -> None:
    before, _, questions = make_changing_facts(seed=0)
    store = ObjectStore.from_settings(server.settings)
    store.write_bytes("s3://advice-e2e/questions.jsonl", "".join(json.dumps(q) + "\n" for q in questions).encode())
    store.write_bytes("s3://advice-e2e/docs/a.jsonl", "".join(json.dumps(d) + "\n" for d in before).encode())
    body = json.dumps(
        {
            "trainingDataUri": "s3://advice-e2e/questions.jsonl",
            "documentsUri": "s3://advice-e2e/docs/",
            "goals": {"knowledgeChanges": True},
        }
    ).encode()
    request = AWSRequest(
        method="POST", url=f"{server.url}/advice", data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials("AKIDTESTS", "test-secret"), "bedrock", server.settings.region).add_auth(request)
    answered = httpx.post(request.url, content=body, headers=dict(request.headers.items()), timeout=60)
    assert answered.status_code == 200, answered.text
    assert answered.json()["approach"] == "RAG" and answered.json()["bakeOffArms"][-1] == "RAG"
