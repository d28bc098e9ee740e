"""Training checkpoints: the trainable state, optimizer and data order, with the previous one kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.stateful import Stateful

from tuneforge.recipes.base import JobReporter

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.previous.pt"
"""The checkpoint before the latest, kept so that a corrupt latest one costs a few steps, not the job."""


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    checkpoint_dir: Path,
    model: Any,
    optimizer: Stateful,
    scheduler: Any,
    fingerprint: dict[str, Any],
    *,
    step: int,
    tokens_seen: int,
    epoch_losses: list[float],
) -> None:
    """Trainable weights, optimizer, scheduler, step and RNG state, written atomically.

    The checkpoint it replaces becomes :data:`PREVIOUS_CHECKPOINT_FILE`: the last two are kept.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint,
        "step": step,
        "tokens_seen": tokens_seen,
        "epoch_losses": list(epoch_losses),
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    partial = checkpoint_dir / f".{CHECKPOINT_FILE}.partial"
    torch.save(payload, partial)
    latest = checkpoint_dir / CHECKPOINT_FILE
    if latest.exists():
        os.replace(latest, checkpoint_dir / PREVIOUS_CHECKPOINT_FILE)
    os.replace(partial, latest)


CHECKPOINT_KEYS = (
    "fingerprint",
    "step",
    "tokens_seen",
    "epoch_losses",
    "model",
    "optimizer",
    "scheduler",
    "torch_rng",
)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's payload, or ValueError saying why it cannot be used (unreadable, cut, not ours)."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... on damaged files
        raise ValueError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in CHECKPOINT_KEYS):
        raise ValueError("not a complete training checkpoint")
    return payload


def load_checkpoint(
    checkpoint_dir: Path,
    model: Any,
    optimizer: Stateful,
    scheduler: Any,
    fingerprint: dict[str, Any],
    reporter: JobReporter,
) -> tuple[int, int, list[float]] | None:
    """Restore the newest usable checkpoint: the latest, else the previous one, else none (start over).

    A damaged file (a disk error, a partial copy) must not fail a job that has an older good
    checkpoint, or that could simply start again: each fallback is said in the job's log.
    """
    payload: dict[str, Any] | None = None
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        path = checkpoint_dir / name
        if not path.exists():
            continue
        try:
            payload = read_checkpoint(path)
        except ValueError as exc:
            reporter.log(f"checkpoint {name} is unusable ({exc}); falling back to an earlier state")
            continue
        if name != CHECKPOINT_FILE:
            reporter.log(f"fell back to the previous checkpoint {name} (step {payload['step']})")
        break
    if payload is None:
        if any((checkpoint_dir / name).exists() for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)):
            reporter.log("no usable checkpoint is left: training starts again from step 0")
        return None
    if payload["fingerprint"] != fingerprint:
        raise ValueError(
            f"the checkpoint in {checkpoint_dir} was written for another configuration "
            f"({payload['fingerprint']} != {fingerprint}); delete it to start over"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    if payload.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return int(payload["step"]), int(payload["tokens_seen"]), [float(x) for x in payload["epoch_losses"]]
