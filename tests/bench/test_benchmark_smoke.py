"""CI's benchmark smoke: every benchmark runs end to end in its quick mode and its in-run ratios clear
lenient floors. Nothing here looks at an absolute time; the floors are far below the targets in
docs/performance.md, so only a broken run or a large regression fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str, timeout: float = 420) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


@pytest.mark.timeout(600)
def test_training_benchmark_smoke() -> None:
    data = run_benchmark("train_bench.py", "--quick", "--check")
    assert data["benchmark"] == "train"
    assert data["check_failures"] == []
    assert set(data["rows"]) == {"tuneforge", "hf_trainer", "plain", "tuneforge_padded"}
    for name in ("tuneforge_vs_hf_trainer", "grouped_vs_padded", "tuneforge_vs_plain"):
        assert data["ratios"][name] > 0
    assert 0 < data["rows"]["tuneforge"]["mfu"] < 1
    assert data["loss_parity_abs_diff"] < 1e-3
