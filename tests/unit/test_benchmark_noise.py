"""The benchmarks' "too noisy to judge" rule: measured contention for the CPU, and what --check does with it."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from benchmarks.common import EXIT_TOO_NOISY, CpuContention, check_status

linux_only = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measured from /proc (Linux)")

BURN_ONE_CPU_SECOND = "import time\nwhile time.process_time() < 1.0: pass"
"""Uses one second of CPU, however long the machine takes to give it."""


class Measured:
    def __init__(self, noisy: bool) -> None:
        self.noisy = noisy

    def describe(self) -> str:
        return "other processes used 1.00 of 2 cores"


@pytest.mark.parametrize(
    ("broken", "slow", "noisy", "status"),
    [
        ([], [], False, 0),
        ([], [], True, 0),
        ([], ["ratio 0.9x < floor 1.5x"], False, 1),
        ([], ["ratio 0.9x < floor 1.5x"], True, EXIT_TOO_NOISY),
        (["answers differ"], [], True, 1),
        (["answers differ"], ["ratio 0.9x < floor 1.5x"], True, 1),
    ],
)
def test_only_a_missed_ratio_on_a_busy_machine_is_too_noisy_to_judge(
    broken: list[str], slow: list[str], noisy: bool, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    contention: Any = Measured(noisy)
    assert check_status(broken, slow, contention) == status
    if status == EXIT_TOO_NOISY:
        assert "too noisy to judge" in capsys.readouterr().err


@linux_only
def test_the_benchmarks_own_child_processes_are_not_counted_as_others() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuContention(threads=1) as contention:
        subprocess.run([sys.executable, "-c", BURN_ONE_CPU_SECOND], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    own = sum(contention.own.values()) - sum(contention.baseline.values())
    assert child >= 1.0
    assert own >= child - 2 * contention.interval  # at most one sampling interval lost at the child's exit


@linux_only
def test_busy_processes_outside_the_benchmark_make_the_run_noisy() -> None:
    """One busy loop per core, started outside this process tree (as another user's job would be)."""
    cores = os.cpu_count() or 1
    started = subprocess.run(
        [
            "sh",
            "-c",
            f"for i in $(seq {cores}); do {sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!; done",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    loops = [int(pid) for pid in started.stdout.split()]
    try:
        with CpuContention(threads=cores) as contention:
            time.sleep(2)
    finally:
        for pid in loops:
            os.kill(pid, signal.SIGKILL)
    report = contention.report()
    assert contention.noisy, report
    assert report["contention"] > 0.5 and report["others_cores"] > 0.5 * cores
