"""The GPU check script runs end to end on a CPU (tiny shape) and needs nothing beyond torch/transformers/peft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"
WEB_STACK = ("fastapi", "starlette", "sqlalchemy", "pydantic", "pydantic_settings", "uvicorn", "boto3", "httpx")

IMPORT_CHECK = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import tokenizers, torch, transformers, peft  # what a bare GPU box has
from transformers import (DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          PrinterCallback, StaticCache, Trainer, TrainingArguments)
before = set(sys.modules)
import gpu_bench
for name in gpu_bench.TUNEFORGE_MODULES:
    __import__(name)
added = sorted({{m.split(".")[0] for m in set(sys.modules) - before}} - {{m.split(".")[0] for m in before}})
print(json.dumps({{"added": added, "before": sorted({{m.split(".")[0] for m in before}})}}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}


def test_the_script_and_its_tuneforge_modules_import_nothing_beyond_torch_transformers_and_peft() -> None:
    code = IMPORT_CHECK.format(benchmarks=str(ROOT / "benchmarks"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Whatever transformers itself imports is already in "before"; tuneforge must add only itself
    # and the benchmark helpers (stdlib-only common.py, the script). More of torch's own submodules
    # (torch.distributed's FSDP, say) are not another library.
    assert set(report["added"]) <= {"tuneforge", "gpu_bench", "common"}, report["added"]
    assert not set(report["added"]) & set(WEB_STACK)


def test_tiny_cpu_run_reports_every_row_and_target() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1200,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "gpu_check" and report["env"]["device"] == "cpu"
    for key in ("torch", "transformers", "peft", "threads", "card", "cuda_version"):
        assert key in report["env"]
    assert report["limits"]["matmul_flops_measured"] > 0 and report["limits"]["copy_bandwidth_measured"] > 0

    training = report["training"]["rows"]
    assert set(training) == {"tuneforge", "hf_trainer", "plain_full"}
    for name, row in training.items():
        assert "error" not in row, (name, row.get("error"), row.get("traceback"))
        assert row["tokens_per_s"]["median"] > 0 and row["mfu_measured_peak"] > 0
    assert training["tuneforge"]["loss_parity_abs_diff"] < 1e-2
    assert training["plain_full"]["padding_fraction"]["median"] == 0

    decoding = report["decoding"]["rows"]
    assert set(decoding) == {"hf_default", "hf_static", "tuneforge_engine", "tuneforge_static", "tuneforge_graphs"}
    for name, row in decoding.items():
        assert "error" not in row, (name, row.get("error"), row.get("traceback"))
        assert row["tokens_per_s"]["median"] > 0 and row["mbu"] > 0

    targets = report["targets"]
    assert {"train_mfu_spec", "train_vs_hf_trainer", "tuneforge_engine_mbu", "tuneforge_graphs_vs_hf_default"} <= set(
        targets
    )
    for name, entry in targets.items():
        assert entry["status"].split(" (")[0] in {"PASS", "FAIL", "not measured"}, name
        if name != "train_mfu_spec":  # a CPU has no spec peak
            assert isinstance(entry["value"], float) and entry["value"] > 0, name
