"""Measure the peak RSS of a real training run: ``python tests/unit/memory_probe.py '<json spec>'``.

Not a test module: test_memory_planning.py runs it in a fresh process (so nothing else the test
process allocated counts) and compares its peak with the job service's estimate. The spec names a
Llama shape, the hyperparameters and the number of optimizer steps; every record has ``length``
tokens, so each micro-batch is exactly the size the estimate assumes. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.recipes.loop import TrainingConfig, prepare_for_training, train
from tuneforge.recipes.memory import steady_allocator
from tuneforge.recipes.outputs import MetricsWriter
from tuneforge.recipes.tokenising import Example


class Reporter:
    def stage(self, stage: str, status: str) -> None: ...

    def progress(self, **_: Any) -> None: ...

    def data_progress(self, **_: Any) -> None: ...

    def log(self, message: str) -> None: ...

    def should_stop(self) -> bool:
        return False


def main(spec: dict[str, Any]) -> dict[str, int]:
    steady_allocator()  # as the worker does
    torch.set_num_threads(1)
    # The resident set now, then the high-water mark reset (Linux's clear_refs "5"): the peak read after
    # training is then training's own, even where an import briefly used more than training does.
    baseline = _status_bytes("VmRSS")
    reset = _reset_peak()
    config = LlamaConfig(**spec["config"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    hp = spec["hyperparameters"]
    model = prepare_for_training(model, hp, Reporter())  # type: ignore[arg-type]
    length, batch = spec["length"], int(hp["batchSize"])
    examples = [
        Example(input_ids=[(7 * i + j) % config.vocab_size for j in range(length)], labels=[1] * length)
        for i in range(batch * spec["steps"])
    ]
    with tempfile.TemporaryDirectory() as folder:
        train(
            model,
            examples,
            TrainingConfig.from_hyperparameters(hp),
            Reporter(),  # type: ignore[arg-type]
            MetricsWriter(Path(folder), "probe"),
            Path(folder) / "checkpoints",
            pad_id=0,
        )
    peak = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": peak, "baseline": baseline}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
