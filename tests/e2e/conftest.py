"""A real tuneforge server as a subprocess, driven by boto3 exactly as user code would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
import pytest
from botocore.config import Config

from tuneforge.data.tasks import make_classification_task, write_jsonl
from tuneforge.demo import free_port
from tuneforge.settings import Settings, child_environment

BASE_MODEL = "tuneforge.forge-small-v1:0:512"
STUDENT_MODEL = "tuneforge.forge-micro-v1:0:512"
ROLE = "arn:aws:iam::123456789012:role/tuneforge-tests"
HANG_GUARD_S = 1200.0
"""How long a test waits for the server (to start, to finish a job, to bring a deployment up) before
calling it a hang. A safety net, never a verdict: on a loaded machine all of these take many times
their quiet-machine time, and a test must pass there too."""

T = TypeVar("T")


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = HANG_GUARD_S) -> T:
    """Call ``probe`` until ``done`` accepts what it returns; fail only after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}; last seen: {value!r}"
        time.sleep(0.3)


@dataclass
class Server:
    settings: Settings
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return self.settings.endpoint_url

    def start(self) -> None:
        self.log_path = self.settings.logs_dir / "server.log"
        self.settings.ensure_dirs()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.cli.main", "serve"],
                env=child_environment(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not start:\n" + self.log_path.read_text())

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def bedrock(self) -> Any:
        return self.client("bedrock")

    def bedrock_runtime(self) -> Any:
        return self.client("bedrock-runtime")

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.settings.region,
            aws_access_key_id="AKIDTESTS",
            aws_secret_access_key="test-secret",
            config=Config(retries={"max_attempts": 1}),
        )


def server_engines(server_pid: int) -> list[int]:
    """The server's engine processes: its descendants whose command line runs ``tuneforge.engine.server``.

    Engines are the fork server's children once it is ready (tuneforge/launcher.py), the server's own
    before; either way their command line is ``python -m tuneforge.engine.server ...``."""
    found, frontier = [], [server_pid]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for pid in children:
                frontier.append(pid)
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"tuneforge.engine.server" in cmdline:
                    found.append(pid)
    return found


def make_server(root: Path, **overrides: Any) -> Server:
    defaults: dict[str, Any] = {"port": free_port(), "worker_concurrency": 2, "worker_threads": 1}
    settings = Settings(data_dir=root, **{**defaults, **overrides})
    return Server(settings)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def bedrock(server: Server) -> Any:
    return server.bedrock()


@dataclass(frozen=True)
class TaskData:
    train_uri: str
    validation_uri: str
    small_uri: str
    test_records: list[dict[str, str]]


@pytest.fixture(scope="session")
def task_data(server: Server, tmp_path_factory: pytest.TempPathFactory) -> TaskData:
    """The demo task, uploaded to the server's object store through s3:// (``tuneforge data cp``)."""
    from tuneforge.storage import ObjectStore

    store = ObjectStore.from_settings(server.settings)
    train, test = make_classification_task(n_train=400, n_test=100, seed=7)
    folder = tmp_path_factory.mktemp("task")
    files = {"train": train, "validation": test[:40], "small": train[:32]}
    for name, records in files.items():
        write_jsonl(folder / f"{name}.jsonl", records)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tuneforge.cli.main",
                "data",
                "cp",
                str(folder / f"{name}.jsonl"),
                f"s3://tests/task/{name}.jsonl",
            ],
            env=child_environment(server.settings),
            check=True,
            capture_output=True,
        )
        assert store.exists(f"s3://tests/task/{name}.jsonl")
    return TaskData(
        train_uri="s3://tests/task/train.jsonl",
        validation_uri="s3://tests/task/validation.jsonl",
        small_uri="s3://tests/task/small.jsonl",
        test_records=test[40:],
    )


def wait_for_status(bedrock: Any, job: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    response: dict[str, Any] = wait_until(
        lambda: bedrock.get_model_customization_job(jobIdentifier=job),
        lambda got: got["status"] in statuses,
        f"job {job} to reach {' or '.join(statuses)}",
    )
    return response


def cli(
    server: Server, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tuneforge ARGS`` as a user would, against ``server``'s settings (plus ``env``)."""
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", *args],
        env={**child_environment(server.settings), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
