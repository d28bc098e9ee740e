"""Knowledge bases end to end through boto3's bedrock-agent and bedrock-agent-runtime clients: create,
ingest (a corrupt and an empty document reported per file, the rest indexed), Retrieve,
RetrieveAndGenerate with a built-in model, the refusals, and deletion removing the vectors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ROLE, STUDENT_MODEL, Server, unique, wait_until
from tuneforge.storage import ObjectStore

FACTS = {
    "volcano.txt": "Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa.",
    "python.txt": "Python is a programming language created by Guido van Rossum and first released in 1991.",
    "coffee.txt": "Coffee beans are the roasted seeds of the Coffea plant, first cultivated in Ethiopia and Yemen.",
    "moon.txt": "The Moon orbits the Earth about once every 27 days and causes the ocean tides.",
    "violin.txt": "The violin is a string instrument played with a bow; Stradivari built famous violins in Cremona.",
    "penguin.txt": "Emperor penguins breed during the Antarctic winter and the males keep the egg warm on their feet.",
}
EMBEDDER = "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0"


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_knowledge_base_ingests_retrieves_generates_and_deletes(server: Server) -> None:
    agent, runtime = server.client("bedrock-agent"), server.client("bedrock-agent-runtime")
    store = ObjectStore.from_settings(server.settings)
    name = unique("kb")
    for file, text in FACTS.items():
        store.write_bytes(f"s3://tests/{name}/docs/{file}", text.encode())
    store.write_bytes(f"s3://tests/{name}/docs/corrupt.txt", b"\xff\xfe\x00 not text \x81")
    store.write_bytes(f"s3://tests/{name}/docs/empty.txt", b"")

    kb = agent.create_knowledge_base(
        name=name,
        roleArn=ROLE,
        knowledgeBaseConfiguration={
            "type": "VECTOR",
            "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": EMBEDDER},
        },
        storageConfiguration={
            "type": "OPENSEARCH_SERVERLESS",
            "opensearchServerlessConfiguration": {
                "collectionArn": "arn:aws:aoss:us-east-1:123456789012:collection/ignored",
                "vectorIndexName": "ignored",
                "fieldMapping": {"vectorField": "v", "textField": "t", "metadataField": "m"},
            },
        },
    )["knowledgeBase"]
    kb_id = kb["knowledgeBaseId"]
    assert kb["status"] == "ACTIVE"
    assert agent.get_knowledge_base(knowledgeBaseId=kb_id)["knowledgeBase"]["name"] == name
    other = agent.create_knowledge_base(
        name=f"{name}-other",
        roleArn=ROLE,
        knowledgeBaseConfiguration={
            "type": "VECTOR",
            "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": EMBEDDER},
        },
    )["knowledgeBase"]["knowledgeBaseId"]
    first_page = agent.list_knowledge_bases(maxResults=1)
    assert len(first_page["knowledgeBaseSummaries"]) == 1 and first_page["nextToken"]
    pages = agent.get_paginator("list_knowledge_bases").paginate(PaginationConfig={"PageSize": 1})
    assert {kb_id, other} <= {s["knowledgeBaseId"] for page in pages for s in page["knowledgeBaseSummaries"]}
    agent.delete_knowledge_base(knowledgeBaseId=other)

    with pytest.raises(ClientError) as outside:
        agent.create_data_source(
            knowledgeBaseId=kb_id,
            name="outside",
            dataSourceConfiguration={
                "type": "S3",
                "s3Configuration": {"bucketArn": "arn:aws:s3:::tests", "inclusionPrefixes": ["../../../../etc/"]},
            },
        )
    assert code(outside) == "ValidationException"
    with pytest.raises(ClientError) as unknown:
        agent.get_knowledge_base(knowledgeBaseId="NOSUCHKB00")
    assert code(unknown) == "ResourceNotFoundException"

    ds = agent.create_data_source(
        knowledgeBaseId=kb_id,
        name="facts",
        dataSourceConfiguration={
            "type": "S3",
            "s3Configuration": {"bucketArn": "arn:aws:s3:::tests", "inclusionPrefixes": [f"{name}/docs/"]},
        },
        vectorIngestionConfiguration={
            "chunkingConfiguration": {
                "chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 64, "overlapPercentage": 10},
            }
        },
    )["dataSource"]
    ds_id = ds["dataSourceId"]
    assert agent.get_data_source(knowledgeBaseId=kb_id, dataSourceId=ds_id)["dataSource"]["status"] == "AVAILABLE"
    assert [s["dataSourceId"] for s in agent.list_data_sources(knowledgeBaseId=kb_id)["dataSourceSummaries"]] == [ds_id]

    job_id = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]["ingestionJobId"]
    job: dict[str, Any] = wait_until(
        lambda: agent.get_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id, ingestionJobId=job_id)[
            "ingestionJob"
        ],
        lambda got: got["status"] in ("COMPLETE", "FAILED"),
        "the ingestion job to end",
    )
    assert job["status"] == "COMPLETE", job
    stats = job["statistics"]
    assert stats["numberOfDocumentsScanned"] == len(FACTS) + 2
    assert stats["numberOfNewDocumentsIndexed"] == len(FACTS)
    assert stats["numberOfDocumentsFailed"] == 2
    reasons = " ".join(job["failureReasons"])
    assert "corrupt.txt: is not UTF-8 text" in reasons and "empty.txt: is empty" in reasons
    listed = agent.list_ingestion_jobs(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJobSummaries"]
    assert [j["ingestionJobId"] for j in listed] == [job_id]

    found = runtime.retrieve(
        knowledgeBaseId=kb_id,
        retrievalQuery={"text": "Which mountain is the tallest in Africa?"},
        retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 3}},
    )["retrievalResults"]
    assert len(found) == 3
    assert found[0]["location"]["s3Location"]["uri"].endswith("/volcano.txt")
    assert found[0]["content"]["text"] == FACTS["volcano.txt"]
    assert found[0]["score"] > found[1]["score"]

    model_arn = f"arn:aws:bedrock:{server.settings.region}::foundation-model/{STUDENT_MODEL}"
    answer = runtime.retrieve_and_generate(
        input={"text": "Who created the Python programming language?"},
        retrieveAndGenerateConfiguration={
            "type": "KNOWLEDGE_BASE",
            "knowledgeBaseConfiguration": {
                "knowledgeBaseId": kb_id,
                "modelArn": model_arn,
                "retrievalConfiguration": {"vectorSearchConfiguration": {"numberOfResults": 2}},
                "generationConfiguration": {
                    "promptTemplate": {"textPromptTemplate": "Facts:\n$search_results$\nQ: $query$\nA:"},
                    "inferenceConfig": {"textInferenceConfig": {"maxTokens": 8}},
                },
            },
        },
    )
    assert answer["sessionId"]
    [citation] = answer["citations"]
    assert citation["generatedResponsePart"]["textResponsePart"]["text"] == answer["output"]["text"]
    references = [r["location"]["s3Location"]["uri"] for r in citation["retrievedReferences"]]
    assert references[0].endswith("/python.txt") and len(references) == 2

    with pytest.raises(ClientError) as not_invocable:
        runtime.retrieve_and_generate(
            input={"text": "anything"},
            retrieveAndGenerateConfiguration={
                "type": "KNOWLEDGE_BASE",
                "knowledgeBaseConfiguration": {"knowledgeBaseId": kb_id, "modelArn": "no.such-model-v1:0"},
            },
        )
    assert code(not_invocable) == "ValidationException"
    assert "model identifier is invalid" in not_invocable.value.response["Error"]["Message"]

    evaluation = unique("rageval")
    qa = [
        {"prompt": "Which mountain is the highest in Africa?", "referenceResponse": "Mount Kilimanjaro"},
        {"prompt": "Who created the Python language?", "referenceResponse": "Guido van Rossum"},
    ]
    store.write_bytes(f"s3://tests/{name}/rag-eval.jsonl", "\n".join(json.dumps(r) for r in qa).encode())
    bedrock = server.bedrock()
    eval_arn = bedrock.create_evaluation_job(
        jobName=evaluation,
        roleArn=ROLE,
        applicationType="RagEvaluation",
        evaluationConfig={
            "automated": {
                "datasetMetricConfigs": [
                    {
                        "taskType": "QuestionAndAnswer",
                        "dataset": {"name": "facts", "datasetLocation": {"s3Uri": f"s3://tests/{name}/rag-eval.jsonl"}},
                        "metricNames": ["Builtin.Accuracy"],
                    }
                ]
            }
        },
        inferenceConfig={
            "ragConfigs": [
                {
                    "knowledgeBaseConfig": {
                        "retrieveAndGenerateConfig": {
                            "type": "KNOWLEDGE_BASE",
                            "knowledgeBaseConfiguration": {"knowledgeBaseId": kb_id, "modelArn": model_arn},
                        }
                    }
                }
            ]
        },
        outputDataConfig={"s3Uri": f"s3://tests/{name}/rag-eval-out/"},
    )["jobArn"]
    ended = wait_until(
        lambda: bedrock.get_evaluation_job(jobIdentifier=eval_arn),
        lambda got: got["status"] in ("Completed", "Failed", "Stopped"),
        "the RAG evaluation job to end",
    )
    assert ended["status"] == "Completed", ended.get("failureMessages")
    root = f"s3://tests/{name}/rag-eval-out/{evaluation}/{eval_arn.rsplit('/', 1)[-1]}"
    [row] = json.loads(store.read_bytes(f"{root}/summary.json"))["results"]
    assert row["retrieval"] == {"contextHitRate": 1.0, "records": 2}
    assert "Builtin.Accuracy" in row["metrics"]

    agent.delete_data_source(knowledgeBaseId=kb_id, dataSourceId=ds_id)
    assert runtime.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "volcano"})["retrievalResults"] == []
    assert agent.delete_knowledge_base(knowledgeBaseId=kb_id)["status"] == "DELETING"
    with pytest.raises(ClientError) as gone:
        runtime.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "volcano"})
    assert code(gone) == "ResourceNotFoundException"
