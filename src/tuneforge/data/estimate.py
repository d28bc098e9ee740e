"""How long, and how much, training on a validated dataset will take on this machine.

A back-of-the-envelope estimate, shown before a job is submitted so nobody waits a day by
surprise. The rule, and why:

* **Tokens processed** = the dataset's ``total_tokens`` x ``epochCount``: every token goes through
  the model once per epoch (Bedrock bills on the same quantity, reference section 4). For
  preference data (DPO) ``total_tokens`` already counts both sequences of a pair, and the reference
  model's one forward pass over them (2·N per token, once, before training) is added.
* **FLOPs per token** = 6·N for full fine-tuning (forward 2·N, backward 4·N: gradients for both
  activations and weights) and 4·N for LoRA (the frozen weights get no weight gradients, so the
  backward pass is about half; the adapters are a rounding error). N is the parameter count.
  Attention's sequence-length-dependent FLOPs are left out; they are small at these context
  lengths next to the matmuls.
* **Seconds** = FLOPs ÷ (peak matmul FLOP/s x utilisation). Peak is measured here with a short
  numpy float32 matmul (:func:`measure_peak_flops`) unless given; utilisation is an assumption,
  0.25 by default, because a training step is far from a pure large matmul (small batches,
  elementwise work, optimizer steps, data loading).
* **Cost** = hours x the configured price per compute hour.

Padding, evaluation passes, checkpoint writes, model loading, and distillation's teacher
generation are not counted. Every assumption is restated in :attr:`Estimate.assumptions`, so a
user sees what the number rests on.

numpy, not torch: this runs in the API process, which must not import torch.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tuneforge.catalog.hyperparameters import HyperParameterValue, fine_tuning_specs
from tuneforge.data.formats import FORMAT_PREFERENCE
from tuneforge.data.validate import ValidationReport

DEFAULT_UTILISATION = 0.25
FULL_FLOPS_PER_PARAMETER_TOKEN = 6
LORA_FLOPS_PER_PARAMETER_TOKEN = 4
REFERENCE_FLOPS_PER_PARAMETER_TOKEN = 2

_MATMUL_SIZE = 512
"""Big enough to reach BLAS's steady state, small enough (0.27 GFLOP) for a few ms per run."""
_MEASURE_BUDGET_S = 0.1
_MEASURE_MAX_RUNS = 20


@dataclass(frozen=True)
class Estimate:
    tokens_processed: int
    flops: float
    seconds: float
    cost: float
    assumptions: str

    def to_dict(self) -> dict[str, object]:
        return {
            "tokens_processed": self.tokens_processed,
            "flops": self.flops,
            "seconds": self.seconds,
            "cost": self.cost,
            "assumptions": self.assumptions,
        }


@functools.cache
def measure_peak_flops() -> float:
    """This machine's float32 matmul FLOP/s, best of a few 512x512 runs; measured once per process.

    The best run rather than the mean, because we want the peak the hardware can reach, not the
    noise of whatever else shares the cores; utilisation is accounted for separately. Takes well
    under 0.3 s: one warm-up (BLAS thread start-up, page faults), then up to 0.1 s of timed runs.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE), dtype=np.float32)
    b = rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    best = math.inf
    deadline = time.perf_counter() + _MEASURE_BUDGET_S
    for _ in range(_MEASURE_MAX_RUNS):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        now = time.perf_counter()
        best = min(best, now - start)
        if now > deadline:
            break
    return 2 * _MATMUL_SIZE**3 / max(best, 1e-9)


def estimate_training(
    report: ValidationReport,
    *,
    parameter_count: int,
    hyperparameters: Mapping[str, HyperParameterValue],
    peak_flops: float | None = None,
    price_per_hour: float,
    utilisation: float = DEFAULT_UTILISATION,
) -> Estimate:
    """Estimate compute, time and cost for training on ``report``'s dataset (see module docstring).

    ``hyperparameters`` may be typed values or Bedrock's strings; missing ones take their spec
    defaults (``epochCount``, ``trainingMethod``). ``peak_flops`` overrides the measurement, e.g.
    with a GPU's figure from a worker. Raises ValueError for a dataset that failed validation,
    whose token counts leave out the failing records.
    """
    if not report.ok:
        raise ValueError("cannot estimate training on a dataset that failed validation; fix its errors first")
    if parameter_count <= 0:
        raise ValueError(f"parameter_count must be positive, got {parameter_count}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    if price_per_hour < 0:
        raise ValueError(f"price_per_hour must not be negative, got {price_per_hour}")
    epochs = int(_hyperparameter(hyperparameters, "epochCount"))
    method = str(_hyperparameter(hyperparameters, "trainingMethod"))
    per_token = FULL_FLOPS_PER_PARAMETER_TOKEN if method == "full" else LORA_FLOPS_PER_PARAMETER_TOKEN
    measured = peak_flops is None
    peak = measure_peak_flops() if peak_flops is None else peak_flops
    if peak <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak}")

    tokens = report.total_tokens * epochs
    flops = float(per_token) * parameter_count * tokens
    reference = ""
    if report.format == FORMAT_PREFERENCE:
        # DPO scores every sequence once with the reference model before training: one forward pass.
        flops += float(REFERENCE_FLOPS_PER_PARAMETER_TOKEN) * parameter_count * report.total_tokens
        reference = (
            f" plus one reference forward pass over the {report.total_tokens} tokens "
            f"({REFERENCE_FLOPS_PER_PARAMETER_TOKEN}N each, DPO)"
        )
    seconds = flops / (peak * utilisation)
    cost = seconds / 3600 * price_per_hour
    why = (
        "full fine-tuning: forward 2N + backward 4N"
        if method == "full"
        else "LoRA: forward 2N + activation gradients 2N; frozen weights get no weight gradients"
    )
    source = "measured with a numpy float32 matmul on this machine's CPU" if measured else "given"
    assumptions = (
        f"{report.total_tokens} tokens x {epochs} epochs = {tokens} tokens processed; "
        f"{per_token} FLOPs per parameter per token ({why}) x {parameter_count} parameters{reference}; "
        f"peak {peak:.3g} FLOP/s ({source}) at an assumed {utilisation:.0%} utilisation; "
        f"cost at {price_per_hour:g} per compute hour. Not counted: attention FLOPs, padding, "
        "evaluation passes, checkpoint writes, model loading, distillation teacher generation."
    )
    return Estimate(tokens, flops, seconds, cost, assumptions)


def _hyperparameter(values: Mapping[str, HyperParameterValue], name: str) -> HyperParameterValue:
    """A typed value, parsing Bedrock's string form through the spec so bad values read the same."""
    spec = next(spec for spec in fine_tuning_specs() if spec.name == name)
    value = values.get(name, spec.default)
    return spec.parse(value) if isinstance(value, str) else value
