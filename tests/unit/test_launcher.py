"""The launcher: worker and engine processes forked by a fork server that has torch imported.

A forked process must be indistinguishable from its ``python -m`` twin to everything that watches it:
its arguments, environment, session, log file, command line (the supervisor's identity check reads
it) and exit status (negative when a signal killed it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.jobs.supervisor import is_worker_process
from tuneforge.launcher import ForkedProcess, LaunchedProcess, Launcher, ended
from tuneforge.settings import Settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")

PROBE = "tests.unit.launcher_probe"
READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """One launcher for the module (its fork server's imports take seconds); the tests run in order."""
    cwd = Path.cwd()
    os.chdir(Path(__file__).resolve().parents[2])  # python -m tests.unit.launcher_probe resolves from here
    settings = Settings(data_dir=tmp_path_factory.mktemp("launcher") / "data")
    settings.ensure_dirs()
    found = Launcher(settings)
    try:
        yield found
    finally:
        found.close()
        os.chdir(cwd)


def report(path: Path, process: object) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{process} wrote no report"
        time.sleep(0.02)
    found: dict[str, object] = json.loads(path.read_text())
    return found


def forked(launcher: Launcher) -> None:
    server = launcher._server
    assert server is not None and server.wait_ready(READY_TIMEOUT_S)


def test_the_first_start_waits_for_the_fork_server_without_blocking_and_keeps_its_signals(
    launcher: Launcher, tmp_path: Path
) -> None:
    first = launcher.start(PROBE, [str(tmp_path / "early.json"), "sleep"], tmp_path / "early.log")
    assert isinstance(first, LaunchedProcess) and first.pid is None and first.poll() is None
    first.terminate()  # before the fork server is ready: queued
    assert first.wait(timeout=READY_TIMEOUT_S) == -signal.SIGTERM, (
        launcher.settings.logs_dir / "forkserver.log"
    ).read_text()
    assert isinstance(first._process, ForkedProcess)  # it was forked, once the fork server was ready
    second = launcher.start(PROBE, [str(tmp_path / "second.json"), "0"], tmp_path / "second.log")
    assert isinstance(second, ForkedProcess) and second.wait(timeout=60) == 0
    assert second.pid == report(tmp_path / "second.json", second)["pid"]


def test_a_forked_process_is_its_python_m_twin(
    launcher: Launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forked(launcher)
    monkeypatch.setenv("TUNEFORGE_PROBE_MARKER", "set after the fork server started")
    process = launcher.start(PROBE, [str(tmp_path / "twin.json"), "3"], tmp_path / "twin.log")
    assert isinstance(process, ForkedProcess)
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    assert cmdline[-4:] == [b"-m", PROBE.encode(), str(tmp_path / "twin.json").encode(), b"3"]
    assert process.wait(timeout=60) == 3
    assert process.poll() == 3
    seen = report(tmp_path / "twin.json", process)
    argv = seen["argv"]
    assert isinstance(argv, list) and argv[1:] == [str(tmp_path / "twin.json"), "3"]
    assert argv[0].endswith("launcher_probe.py")  # the module's file, as python -m sets it
    assert seen["pid"] == process.pid and seen["sid"] == process.pid  # its own session, as start_new_session
    assert seen["marker"] == "set after the fork server started"  # the start's environment, not the server's
    assert seen["torch_preloaded"] is True and seen["main"] == "__main__"
    assert f"probe {process.pid} ran" in (tmp_path / "twin.log").read_text()


def test_signals_reach_a_forked_process_and_its_status_says_so(launcher: Launcher, tmp_path: Path) -> None:
    forked(launcher)
    process = launcher.start(PROBE, [str(tmp_path / "sleeper.json"), "sleep"], tmp_path / "sleeper.log")
    assert isinstance(process, ForkedProcess)
    report(tmp_path / "sleeper.json", process)
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    process.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not ended(process.pid):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    # The moment the process has ended, poll says how, as Popen's would (the engine manager routes by it).
    assert process.poll() == -signal.SIGKILL
    process.kill()  # a no-op once it has ended


def test_the_supervisor_knows_a_forked_worker_by_its_command_line(launcher: Launcher, tmp_path: Path) -> None:
    forked(launcher)
    process = launcher.start(PROBE, [str(tmp_path / "w.json"), "sleep"], tmp_path / "w.log")
    report(tmp_path / "w.json", process)
    assert not is_worker_process(process.pid, "sleep")  # not a worker: its module is the probe
    worker = launcher.start("tuneforge.jobs.worker", [], tmp_path / "worker.log")  # usage: exits 2
    assert isinstance(worker, ForkedProcess)
    assert worker.wait(timeout=60) == 2
    assert "usage: python -m tuneforge.jobs.worker JOB_ID" in (tmp_path / "worker.log").read_text()
    process.terminate()
    assert process.wait(timeout=30) == -signal.SIGTERM


def test_a_dead_fork_server_is_replaced_and_what_it_forked_still_ends(launcher: Launcher, tmp_path: Path) -> None:
    forked(launcher)
    server = launcher._server
    assert server is not None
    sleeper = launcher.start(PROBE, [str(tmp_path / "sleeper.json"), "sleep"], tmp_path / "sleeper.log")
    report(tmp_path / "sleeper.json", sleeper)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    assert sleeper.poll() is None  # its child lives on: the status is the only thing lost
    sleeper.kill()
    assert sleeper.wait(timeout=30) == 1  # ended, its status unknown (init reaped it)
    again = launcher.start(PROBE, [str(tmp_path / "again.json"), "5"], tmp_path / "again.log")
    assert isinstance(again, LaunchedProcess) and again.wait(timeout=READY_TIMEOUT_S) == 5
    assert launcher._server is not None and launcher._server is not server
    assert launcher._server.ready.is_set()
    third = launcher.start(PROBE, [str(tmp_path / "third.json"), "0"], tmp_path / "third.log")
    assert isinstance(third, ForkedProcess) and third.wait(timeout=60) == 0


def test_turned_off_every_start_is_python_m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    settings = Settings(data_dir=tmp_path / "data", fork_server=False)
    settings.ensure_dirs()
    launcher = Launcher(settings)
    try:
        for name in ("a", "b"):
            process = launcher.start(PROBE, [str(tmp_path / f"{name}.json"), "0"], tmp_path / f"{name}.log")
            assert isinstance(process, subprocess.Popen) and process.wait(timeout=60) == 0
            assert report(tmp_path / f"{name}.json", process)["torch_preloaded"] is False
        assert launcher._server is None
    finally:
        launcher.close()
