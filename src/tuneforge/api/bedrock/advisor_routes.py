"""``POST /advice`` (tuneforge extension): the advisor for the console and scripts.

Signed like every tuneforge extension endpoint (SigV4, or the console's session); the same
:func:`tuneforge.advisor.rules.advise` as ``tuneforge advise``. Body::

    {"trainingDataUri": "s3://...", "documentsUri": "s3://.../docs/", "goals": {"knowledgeChanges": true}}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.advisor.profile import profile
from tuneforge.advisor.rules import advise, arms, goals_from_dict
from tuneforge.advisor.sources import read_source
from tuneforge.api.bodies import json_object
from tuneforge.api.deps import get_services
from tuneforge.errors import ValidationException
from tuneforge.services import Services

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]
MEMBERS = {"trainingDataUri", "documentsUri", "goals"}


@router.post("/advice")
async def post_advice(request: Request, services: ServicesDep) -> dict[str, Any]:
    body = json_object(await request.body())
    unknown = sorted(set(body) - MEMBERS)
    if unknown:
        raise ValidationException(f"unknown member {unknown[0]!r}; known: {', '.join(sorted(MEMBERS))}")
    data_uri, documents_uri, goals = body.get("trainingDataUri"), body.get("documentsUri"), body.get("goals", {})
    if not isinstance(data_uri, str) or not data_uri:
        raise ValidationException("trainingDataUri: expected an s3:// URI")
    if documents_uri is not None and not isinstance(documents_uri, str):
        raise ValidationException("documentsUri: expected an s3:// URI")
    if not isinstance(goals, dict):
        raise ValidationException("goals: expected an object")

    def run() -> dict[str, Any]:
        data = profile(read_source(services.store, data_uri))
        documents = profile(read_source(services.store, documents_uri)) if documents_uri else None
        advice = advise(data, goals_from_dict(goals), documents)
        return {**advice.to_dict(), "bakeOffArms": arms(advice, documents is not None)}

    return await run_in_threadpool(run)
