"""OpenAI's ``/v1/files`` routes (create, list, retrieve, content, delete) over
:class:`~tuneforge.jobs.openai_files.FileService`. HTTP only.

The upload reads its own body (the edge lets it through unread, see ``api/edge.py``): the body is
counted as it arrives and refused past ``TUNEFORGE_MAX_TRAINING_FILE_BYTES`` plus the multipart
framing, and the multipart parser's spooled file is copied to the object store in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from tuneforge.api.bodies import BodyTooLarge, capped
from tuneforge.api.deps import get_services
from tuneforge.api.openai.fine_tuning_protocol import file_object, page
from tuneforge.jobs.openai_files import CHUNK, FileService, FileTooLarge
from tuneforge.services import Services
from tuneforge.serving.runtime import InvalidParameter

router = APIRouter(prefix="/v1/files")
ServicesDep = Annotated[Services, Depends(get_services)]
FORM_OVERHEAD = 64 * 1024
"""What an upload's body may carry beyond the file: the purpose field and the multipart framing."""


@router.post("")
async def create_file(request: Request, services: ServicesDep) -> dict[str, Any]:
    limit = services.settings.max_training_file_bytes
    too_large = FileTooLarge(
        f"The file is larger than {limit:,} bytes, the most a training file may have "
        "(TUNEFORGE_MAX_TRAINING_FILE_BYTES): split it or raise the setting"
    )
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidParameter("Upload a file as multipart/form-data with the fields 'file' and 'purpose'", "file")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large
    try:
        form = await capped(request, limit + FORM_OVERHEAD).form(max_files=1, max_fields=8)
    except BodyTooLarge:
        raise too_large from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidParameter("Missing the file: send it as the multipart field 'file'", "file")
    if not isinstance(purpose, str) or not purpose:
        raise InvalidParameter("Missing the purpose: send it as the multipart field 'purpose'", "purpose")
    try:
        row = await run_in_threadpool(services.files.create, upload.file, upload.filename or "data.jsonl", purpose)
    finally:
        await upload.close()
    return file_object(row)


@router.get("")
def list_files(
    services: ServicesDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    result = services.files.list_files(purpose, after, limit, descending=order == "desc")
    return page([file_object(row) for row in result.items], result.has_more)


@router.get("/{file_id}")
def retrieve_file(file_id: str, services: ServicesDep) -> dict[str, Any]:
    return file_object(services.files.get(file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, services: ServicesDep) -> StreamingResponse:
    files: FileService = services.files
    handle = files.open(file_id)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@router.delete("/{file_id}")
def delete_file(file_id: str, services: ServicesDep) -> dict[str, Any]:
    row = services.files.delete(file_id)
    return {"id": row.id, "object": "file", "deleted": True}
