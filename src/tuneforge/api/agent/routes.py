"""bedrock-agent (knowledge bases, data sources, ingestion jobs) and bedrock-agent-runtime (Retrieve,
RetrieveAndGenerate) routes: HTTP in, service call, camelCase out. Both clients sign as ``bedrock``,
so one ``endpoint_url`` serves them with the bedrock and bedrock-runtime clients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.api.agent import schemas
from tuneforge.api.bedrock.schemas import Checker, list_page
from tuneforge.api.bedrock.shapes import parse_body
from tuneforge.api.deps import get_bedrock_runtime, get_services
from tuneforge.api.runtime.protocol import Sampling
from tuneforge.api.runtime.serving import BedrockRuntime
from tuneforge.errors import ValidationException
from tuneforge.services import Services
from tuneforge.serving.retrieval import Retriever, rag_prompt
from tuneforge.serving.runtime import collect

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]
RuntimeDep = Annotated[BedrockRuntime, Depends(get_bedrock_runtime)]
AGENT = "bedrock-agent"
AGENT_RUNTIME = "bedrock-agent-runtime"


def get_retriever(request: Request) -> Retriever:
    retriever: Retriever = request.app.state.retriever
    return retriever


RetrieverDep = Annotated[Retriever, Depends(get_retriever)]


@dataclass(frozen=True)
class ListScope:
    """What a bedrock-agent ``nextToken`` is bound to besides its operation: the parent resources and order."""

    parent: str = ""
    descending: bool = True


def _paging(body: dict[str, Any]) -> tuple[int, str | None]:
    c = Checker()
    limit = c.integer(body.get("maxResults"), "maxResults", 1, 1000) if body.get("maxResults") is not None else 100
    c.raise_if_any()
    return limit or 100, body.get("nextToken")


def _require(body: dict[str, Any], *members: str) -> None:
    missing = [m for m in members if body.get(m) is None]
    if missing:
        raise ValidationException(
            "; ".join(f"Value at '{m}' failed to satisfy constraint: Member must not be null" for m in missing)
        )


# -- knowledge bases ----------------------------------------------------------------------------


@router.put("/knowledgebases/")
async def create_knowledge_base(request: Request, services: ServicesDep) -> JSONResponse:
    body = parse_body(await request.body(), "CreateKnowledgeBase", AGENT)
    _require(body, "name", "roleArn", "knowledgeBaseConfiguration")
    kb = await run_in_threadpool(services.knowledge_bases.create_knowledge_base, body)
    return JSONResponse({"knowledgeBase": schemas.knowledge_base(kb)}, status_code=202)


@router.post("/knowledgebases/")
async def list_knowledge_bases(request: Request, services: ServicesDep) -> dict[str, Any]:
    limit, token = _paging(parse_body(await request.body(), "ListKnowledgeBases", AGENT))
    return list_page(
        services.page_tokens,
        "ListKnowledgeBases",
        ListScope(),
        token,
        lambda after: services.knowledge_bases.list_knowledge_bases(after, limit),
        "knowledgeBaseSummaries",
        lambda items: [schemas.knowledge_base_summary(kb) for kb in items],
    )


@router.get("/knowledgebases/{kb_id}")
def get_knowledge_base(kb_id: str, services: ServicesDep) -> dict[str, Any]:
    return {"knowledgeBase": schemas.knowledge_base(services.knowledge_bases.get_knowledge_base(kb_id))}


@router.delete("/knowledgebases/{kb_id}")
def delete_knowledge_base(kb_id: str, services: ServicesDep) -> JSONResponse:
    kb = services.knowledge_bases.delete_knowledge_base(kb_id)
    return JSONResponse({"knowledgeBaseId": kb.id, "status": "DELETING"}, status_code=202)


# -- data sources -------------------------------------------------------------------------------


@router.put("/knowledgebases/{kb_id}/datasources/")
async def create_data_source(kb_id: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    body = parse_body(await request.body(), "CreateDataSource", AGENT)
    _require(body, "name", "dataSourceConfiguration")
    ds = await run_in_threadpool(services.knowledge_bases.create_data_source, kb_id, body)
    return {"dataSource": schemas.data_source(ds)}


@router.post("/knowledgebases/{kb_id}/datasources/")
async def list_data_sources(kb_id: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    limit, token = _paging(parse_body(await request.body(), "ListDataSources", AGENT))
    return list_page(
        services.page_tokens,
        "ListDataSources",
        ListScope(kb_id),
        token,
        lambda after: services.knowledge_bases.list_data_sources(kb_id, after, limit),
        "dataSourceSummaries",
        lambda items: [schemas.data_source_summary(ds) for ds in items],
    )


@router.get("/knowledgebases/{kb_id}/datasources/{ds_id}")
def get_data_source(kb_id: str, ds_id: str, services: ServicesDep) -> dict[str, Any]:
    return {"dataSource": schemas.data_source(services.knowledge_bases.get_data_source(kb_id, ds_id))}


@router.delete("/knowledgebases/{kb_id}/datasources/{ds_id}")
def delete_data_source(kb_id: str, ds_id: str, services: ServicesDep) -> JSONResponse:
    ds = services.knowledge_bases.delete_data_source(kb_id, ds_id)
    return JSONResponse(
        {"knowledgeBaseId": ds.knowledge_base_id, "dataSourceId": ds.id, "status": "DELETING"}, status_code=202
    )


# -- ingestion jobs -----------------------------------------------------------------------------


@router.put("/knowledgebases/{kb_id}/datasources/{ds_id}/ingestionjobs/")
async def start_ingestion_job(kb_id: str, ds_id: str, request: Request, services: ServicesDep) -> JSONResponse:
    body = parse_body(await request.body(), "StartIngestionJob", AGENT)
    job = await run_in_threadpool(services.knowledge_bases.start_ingestion_job, kb_id, ds_id, body)
    return JSONResponse({"ingestionJob": schemas.ingestion_job(job)}, status_code=202)


@router.post("/knowledgebases/{kb_id}/datasources/{ds_id}/ingestionjobs/")
async def list_ingestion_jobs(kb_id: str, ds_id: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    body = parse_body(await request.body(), "ListIngestionJobs", AGENT)
    limit, token = _paging(body)
    for member in ("filters",):
        if body.get(member):
            raise ValidationException(f"ListIngestionJobs {member} is not supported")
    descending = (body.get("sortBy") or {}).get("order", "DESCENDING") != "ASCENDING"
    return list_page(
        services.page_tokens,
        "ListIngestionJobs",
        ListScope(f"{kb_id}/{ds_id}", descending),
        token,
        lambda after: services.knowledge_bases.list_ingestion_jobs(kb_id, ds_id, after, limit, descending),
        "ingestionJobSummaries",
        lambda items: [schemas.ingestion_job(job) for job in items],
    )


@router.get("/knowledgebases/{kb_id}/datasources/{ds_id}/ingestionjobs/{job_id}")
def get_ingestion_job(kb_id: str, ds_id: str, job_id: str, services: ServicesDep) -> dict[str, Any]:
    return {"ingestionJob": schemas.ingestion_job(services.knowledge_bases.get_ingestion_job(kb_id, ds_id, job_id))}


# -- runtime ------------------------------------------------------------------------------------


@router.post("/knowledgebases/{kb_id}/retrieve")
async def retrieve(kb_id: str, request: Request, retriever: RetrieverDep) -> dict[str, Any]:
    body = parse_body(await request.body(), "Retrieve", AGENT_RUNTIME)
    query = (body.get("retrievalQuery") or {}).get("text")
    if not isinstance(query, str) or not query:
        raise ValidationException(
            "Value at 'retrievalQuery.text' failed to satisfy constraint: Member must not be null"
        )
    k = schemas.number_of_results(body, "retrievalConfiguration")
    chunks = await run_in_threadpool(retriever.retrieve, kb_id, query, k)
    return {"retrievalResults": [schemas.retrieval_result(chunk) for chunk in chunks]}


@router.post("/retrieveAndGenerate")
async def retrieve_and_generate(request: Request, retriever: RetrieverDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Retrieve, fill the prompt template, generate with ``modelArn`` (any model the runtime can
    invoke: resolved exactly as InvokeModel resolves it), cite every retrieved chunk."""
    body = parse_body(await request.body(), "RetrieveAndGenerate", AGENT_RUNTIME)
    query = (body.get("input") or {}).get("text")
    if not isinstance(query, str) or not query:
        raise ValidationException("Value at 'input.text' failed to satisfy constraint: Member must not be null")
    config = body.get("retrieveAndGenerateConfiguration") or {}
    if config.get("type") != "KNOWLEDGE_BASE":
        raise ValidationException(
            f"retrieveAndGenerateConfiguration.type {config.get('type')} is not supported: use KNOWLEDGE_BASE"
        )
    kb_config = config.get("knowledgeBaseConfiguration") or {}
    _require(kb_config, "knowledgeBaseId", "modelArn")
    k = schemas.number_of_results(
        kb_config, "retrieveAndGenerateConfiguration.knowledgeBaseConfiguration.retrievalConfiguration"
    )
    generation_config = kb_config.get("generationConfiguration") or {}
    template = ((generation_config.get("promptTemplate") or {}).get("textPromptTemplate")) or None
    text_config = (generation_config.get("inferenceConfig") or {}).get("textInferenceConfig") or {}
    chunks = await run_in_threadpool(retriever.retrieve, kb_config["knowledgeBaseId"], query, k)
    prompt = rag_prompt(template, query, chunks)
    sampling = Sampling(
        max_tokens=text_config.get("maxTokens"),
        temperature=float(text_config.get("temperature", 0.0)),
        top_p=float(text_config.get("topP", 1.0)),
        stop=tuple(text_config.get("stopSequences") or ()),
    )
    generation = await runtime.inference.start(
        kb_config["modelArn"],
        sampling,
        stream=False,
        conversation={"system": [], "messages": [{"role": "user", "content": [{"text": prompt}]}]},
        max_tokens_member=(
            "retrieveAndGenerateConfiguration.knowledgeBaseConfiguration.generationConfiguration"
            ".inferenceConfig.textInferenceConfig.maxTokens"
        ),
        prompt_member="input.text",
    )
    end = await collect(generation.events)
    text = str(end["text"])
    citations = []
    if chunks:
        citations.append(
            {
                "generatedResponsePart": {
                    "textResponsePart": {"text": text, "span": {"start": 0, "end": max(0, len(text) - 1)}}
                },
                "retrievedReferences": [schemas.retrieval_result(chunk, score=False) for chunk in chunks],
            }
        )
    return {
        "sessionId": body.get("sessionId") or str(uuid.uuid4()),
        "output": {"text": text},
        "citations": citations,
    }
