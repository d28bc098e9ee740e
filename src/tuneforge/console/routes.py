"""The console's routes, one router per part of the workflow, all under ``/console``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.staticfiles import StaticFiles

from tuneforge.console import home, jobs, models, playground, serving, usage
from tuneforge.console.pages import HERE

router = APIRouter()
router.include_router(home.router)
router.include_router(jobs.router)
router.include_router(models.router)
router.include_router(serving.router)
router.include_router(playground.router)
router.include_router(usage.router)

static = StaticFiles(directory=HERE / "static")
