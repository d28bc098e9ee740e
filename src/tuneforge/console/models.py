"""Custom models: list, detail with lineage, downloads of the weights, and delete.

Downloads are confined to the server's models directory: the console serves only the ``adapter/``
or ``merged/`` folder of a custom model whose weights lie under it, as a tar archive written while
it streams (header, file bytes, padding), so a multi-GB merged model never sits in memory or on disk
twice, and nothing here imports torch.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from tuneforge.api.bedrock import schemas
from tuneforge.catalog.custom import CustomModelFilter
from tuneforge.console.pages import ApiError, CsrfChecked, ServicesDep, render, see_other
from tuneforge.errors import ResourceNotFoundException, ServiceError
from tuneforge.services import Services

router = APIRouter()

ARTIFACTS = {"adapter": "LoRA adapter", "merged": "merged weights"}
"""The folders a job saves (``model/folders.py``): what the console offers for download."""
CHUNK = 1 << 20
LIST_LIMIT = 1000


def artifact_folders(models_dir: Path, weights_path: str) -> dict[str, Path]:
    """A model's downloadable folders that exist, only where its weights lie inside the models dir."""
    root = models_dir.resolve()
    weights = Path(weights_path).resolve()
    if root not in weights.parents:
        return {}
    return {name: weights / name for name in ARTIFACTS if (weights / name).is_dir()}


def _files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (links skipped, so no archive reaches outside it), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def tar_stream(folder: Path, prefix: str) -> Iterator[bytes]:
    """A ustar/pax archive of ``folder`` under ``prefix/``, produced file by file in 1 MiB chunks."""
    for path in _files(folder):
        info = tarfile.TarInfo(f"{prefix}/{path.relative_to(folder).as_posix()}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        remainder = info.size % tarfile.BLOCKSIZE
        if remainder:
            yield b"\0" * (tarfile.BLOCKSIZE - remainder)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _detail(services: Services, name: str) -> dict[str, Any]:
    model = services.custom_models.get(name)
    folders = artifact_folders(services.settings.models_dir, model.weights_path)
    return {
        "model": model,
        "api": schemas.custom_model_details(model),
        "artifacts": {key: ARTIFACTS[key] for key in folders},
    }


@router.get("/console/custom-models", response_class=HTMLResponse, include_in_schema=False)
async def custom_models(request: Request, services: ServicesDep) -> Response:
    page = await run_in_threadpool(services.custom_models.list_models, CustomModelFilter(), None, LIST_LIMIT)
    return render(request, "custom_models.html", models=page.items)


@router.get("/console/custom-models/{name}", response_class=HTMLResponse, include_in_schema=False)
async def custom_model(request: Request, name: str, services: ServicesDep) -> Response:
    try:
        context = await run_in_threadpool(_detail, services, name)
    except ServiceError as exc:
        return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
    return render(request, "custom_model.html", error=None, **context)


@router.get("/console/custom-models/{name}/{artifact}.tar", include_in_schema=False)
async def download(name: str, artifact: str, services: ServicesDep) -> Response:
    model = await run_in_threadpool(services.custom_models.get, name)
    folder = artifact_folders(services.settings.models_dir, model.weights_path).get(artifact)
    if folder is None:
        raise ResourceNotFoundException(f"The custom model {model.name} has no {artifact} folder to download.")
    filename = f"{model.name}-{artifact}.tar"
    return StreamingResponse(
        tar_stream(folder, f"{model.name}-{artifact}"),
        media_type="application/x-tar",
        headers={"content-disposition": f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(filename)}"},
    )


@router.post(
    "/console/custom-models/{name}/delete",
    response_class=HTMLResponse,
    include_in_schema=False,
    dependencies=[CsrfChecked],
)
async def delete(request: Request, name: str, services: ServicesDep) -> Response:
    """DeleteCustomModel; a refusal (in use by a throughput, a deployment, a distillation) shows on the page."""
    try:
        await run_in_threadpool(services.custom_models.delete, name)
    except ServiceError as exc:
        try:
            context = await run_in_threadpool(_detail, services, name)
        except ServiceError:
            return render(request, "error.html", status_code=exc.status, error=ApiError.of(exc))
        return render(request, "custom_model.html", status_code=exc.status, error=ApiError.of(exc), **context)
    return see_other("/console/custom-models")
