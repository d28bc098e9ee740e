"""Live job progress for people: a rich progress bar fed by the job's events."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.client import ExtensionError, extension_get

TERMINAL = ("Completed", "Failed", "Stopped")


def fetch_events(endpoint_url: str, region: str, job: str, after: int) -> list[dict[str, Any]]:
    """tuneforge's events extension (``GET /model-customization-jobs/{id}/events``), signed like boto3."""
    path = f"/model-customization-jobs/{quote(job, safe='')}/events"
    events: list[dict[str, Any]] = extension_get(endpoint_url, region, path, {"after": str(after)})["events"]
    return events


def wait_for_job(
    client: Any,
    endpoint_url: str,
    job: str,
    console: Console,
    timeout: float = 3600.0,
    *,
    quiet: bool = False,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Poll until the job ends; returns the final GetModelCustomizationJob response."""
    deadline = time.monotonic() + timeout
    last_event = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("queued", total=None, detail="")
        while True:
            response: dict[str, Any] = client.get_model_customization_job(jobIdentifier=job)
            try:
                events = fetch_events(endpoint_url, client.meta.region_name, job, last_event)
            except (httpx.HTTPError, ExtensionError):
                events = []
            for event in events:
                last_event = event["id"]
                data = event["data"]
                if event["kind"] == "progress":
                    progress.update(
                        task,
                        description="training",
                        total=data["totalSteps"],
                        completed=data["step"],
                        detail=(
                            f"loss {data['loss']:.4f}  {data['tokensPerSecond']:.0f} tok/s  "
                            f"MFU {data.get('mfu', 0.0):.0%}"
                        ),
                    )
                elif event["kind"] == "processing":
                    progress.update(
                        task,
                        description="data processing",
                        total=data["total"],
                        completed=data["done"],
                        detail=data["unit"],
                    )
                elif event["kind"] == "stage":
                    progress.update(task, description=f"{data['stage']} {data['status'].lower()}")
                elif event["kind"] == "log" and not quiet:
                    progress.console.print(f"[dim]{data['message']}[/dim]")
            if response["status"] in TERMINAL:
                progress.update(task, description=response["status"].lower())
                response.pop("ResponseMetadata", None)
                return response
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still {response['status']} after {timeout:.0f} s")
            time.sleep(poll_s)
