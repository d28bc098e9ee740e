"""How tuneforge starts its worker and engine processes: forked from the fork server, or ``python -m``.

Each job worker and each engine is ``python -m <module> ARGS`` in a session of its own, its output
appended to a log file. Started plainly, every one first spends about 5 s of a core importing
torch, transformers, peft and the recipes: most of a small job's start, and most of an on-demand
engine's cold start. :class:`Launcher` keeps a fork server (:mod:`tuneforge.engine.forkserver`)
that has imported all of it once, and has it fork each process instead (milliseconds).

- The fork server starts with the first process asked for, so a server that starts none never pays
  for the imports. Until it is ready a start does not wait: it returns a :class:`LaunchedProcess`
  whose pid is None (the worker records its own pid, as on Ray) and which a thread forks as soon as
  the fork server is ready; signals sent meanwhile are delivered then. So the first start costs
  what a ``python -m`` start would, and each later one a fork.
- A forked process runs the same module with the same arguments, environment, session and log file,
  and shows the same command line, as its ``python -m`` twin would (docs/architecture.md).
- It is the fork server's child, not this process's: the fork server reaps it and reports its exit
  status, and :class:`ForkedProcess` answers ``poll`` and ``wait`` from that report.
- When the fork server fails to start or dies, starts fall back to ``python -m`` and the next start
  tries another fork server. ``TUNEFORGE_FORK_SERVER=false`` turns it off.

This module never imports torch: the API process talks to the fork server over two pipes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Protocol

from tuneforge.replicas import pid_alive
from tuneforge.settings import Settings, child_environment

log = logging.getLogger(__name__)

FORK_SERVER_MODULE = "tuneforge.engine.forkserver"
FORK_SERVER_START_TIMEOUT_S = 300.0
"""The longest a first start waits for the fork server's imports before it uses ``python -m`` instead."""
ANSWER_TIMEOUT_S = 60.0
"""The longest a start waits for the fork server's answer (milliseconds, normally). Past it the fork
server is killed before the start falls back to ``python -m``, so a late fork cannot run beside it."""
STATUS_TIMEOUT_S = 10.0
"""The longest ``poll`` waits for the exit status of a process it has seen end."""
"""The longest a start waits for the fork server's answer before it falls back to ``python -m``."""


class ChildProcess(Protocol):
    """What the supervisor and the engine manager do with a process they started (``Popen`` is one)."""

    @property
    def pid(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ForkServerError(RuntimeError):
    pass


class ForkedProcess:
    """A process the fork server forked: signalled by pid; its exit status comes from the fork server."""

    def __init__(self, server: _ForkServer, pid: int, command: list[str]) -> None:
        self._server = server
        self._pid = pid
        self.args = command

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        code = self._server.exit_code(self._pid)
        if code is not None or not ended(self._pid):
            return code
        # Ended, its status on the way: the fork server reaps it at once (SIGCHLD) and reports it.
        code = self._server.wait_exit(self._pid, STATUS_TIMEOUT_S)
        # None: the fork server died before it could report (init reaped the child): the status is lost.
        return self._server.forget(self._pid, 1) if code is None else code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class LaunchedProcess:
    """A start waiting for the fork server: no pid yet, running (``poll`` None) as far as callers can tell.

    :meth:`attach` gives it the process once forked (or started with ``python -m`` when the fork
    server failed); signals sent before that are delivered then, in order."""

    def __init__(self, command: list[str]) -> None:
        self.args = command
        self._lock = threading.Lock()
        self._process: ChildProcess | None = None
        self._signals: list[int] = []

    def attach(self, process: ChildProcess) -> None:
        with self._lock:
            self._process = process
            signals, self._signals = self._signals, []
        for sig in signals:
            process.send_signal(sig)

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def poll(self) -> int | None:
        process = self._process
        return None if process is None else process.poll()

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (process := self._process) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.02)
        return process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def send_signal(self, sig: int) -> None:
        with self._lock:
            process = self._process
            if process is None:
                self._signals.append(sig)
                return
        process.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def ended(pid: int) -> bool:
    """True once ``pid`` has exited: gone, or a zombie its parent (the fork server) has yet to reap.

    ``poll`` must say so as soon as ``Popen.poll`` would, or an engine killed a moment ago would still
    be routed requests."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return not pid_alive(pid)
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


class _ForkServer:
    """One ``python -m tuneforge.engine.forkserver`` process and the thread that reads its answers."""

    def __init__(self, settings: Settings) -> None:
        log_path = settings.logs_dir / "forkserver.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", FORK_SERVER_MODULE],
                env=child_environment(settings),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
            )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests: IO[bytes] = self.process.stdin
        self._answers: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._condition = threading.Condition()
        self._write_lock = threading.Lock()
        self.ready = threading.Event()
        self._ended = False
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="tuneforge-forkserver", daemon=True
        )
        self._reader.start()

    def _read(self, answers: IO[bytes]) -> None:
        for line in answers:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._condition:
                if "ready" in message:
                    self.ready.set()
                elif "exited" in message:
                    self._exits[int(message["exited"])] = int(message["code"])
                elif isinstance(message.get("id"), int):
                    self._answers[message["id"]] = message
                self._condition.notify_all()
        with self._condition:
            self._ended = True
            self._condition.notify_all()

    def wait_ready(self, timeout: float) -> bool:
        """True once the fork server says it is ready; False when it ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not self.ready.is_set() and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
        return self.ready.is_set()

    def running(self) -> bool:
        return self.process.poll() is None

    def exit_code(self, pid: int) -> int | None:
        with self._condition:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """``pid``'s exit status once the fork server reports it; None if it ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while pid not in self._exits and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            return self._exits.get(pid)

    def forget(self, pid: int, code: int) -> int:
        with self._condition:
            return self._exits.setdefault(pid, code)

    def fork(self, module: str, args: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "module": module, "args": args, "env": env, "log": str(log_path)})
        try:
            with self._write_lock:
                self._requests.write(line.encode() + b"\n")
                self._requests.flush()
        except (OSError, ValueError) as exc:
            raise ForkServerError(f"the fork server is gone ({exc})") from exc
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        with self._condition:
            while (answer := self._answers.pop(request_id, None)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running():
                    raise ForkServerError("the fork server did not answer")
                self._condition.wait(min(left, 0.5))
        if "pid" not in answer:
            raise ForkServerError(str(answer.get("error", "the fork server could not fork")))
        return ForkedProcess(self, int(answer["pid"]), [sys.executable, "-m", module, *args])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._requests.close()  # its end of file: the fork server exits, its children carry on
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Launcher:
    """Starts ``python -m MODULE ARGS`` processes, forked by a fork server once one is ready."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._server: _ForkServer | None = None
        self._closed = False

    def start(self, module: str, args: list[str], log_path: Path) -> ChildProcess:
        """``python -m module args`` with :func:`child_environment`, in its own session, output to ``log_path``."""
        env = child_environment(self.settings)
        server = self._server_for_start()
        if server is None:
            return self._exec(module, args, env, log_path)
        if server.ready.is_set():
            return self._fork_or_exec(server, module, args, env, log_path)
        pending = LaunchedProcess([sys.executable, "-m", module, *args])

        def when_ready() -> None:
            if server.wait_ready(FORK_SERVER_START_TIMEOUT_S):
                pending.attach(self._fork_or_exec(server, module, args, env, log_path))
            else:
                log.warning("fork server did not get ready; starting %s with python -m", module)
                self._drop(server)
                pending.attach(self._exec(module, args, env, log_path))

        threading.Thread(target=when_ready, name="tuneforge-launch", daemon=True).start()
        return pending

    def _fork_or_exec(
        self, server: _ForkServer, module: str, args: list[str], env: dict[str, str], log_path: Path
    ) -> ChildProcess:
        try:
            return server.fork(module, args, env, log_path)
        except ForkServerError as exc:
            log.warning("fork server: %s; starting %s with python -m", exc, module)
            self._drop(server, kill=True)
            return self._exec(module, args, env, log_path)

    @staticmethod
    def _exec(module: str, args: list[str], env: dict[str, str], log_path: Path) -> ChildProcess:
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _server_for_start(self) -> _ForkServer | None:
        """The fork server (starting one when there is none or it died); None when there cannot be one."""
        if not self.settings.fork_server:
            return None
        with self._lock:
            if self._closed:
                return None
            if self._server is not None and not self._server.running():
                log.warning("fork server exited with code %s", self._server.process.returncode)
                self._server = None
            if self._server is None:
                try:
                    self._server = _ForkServer(self.settings)
                except OSError as exc:
                    log.warning("fork server did not start: %s", exc)
            return self._server

    def _drop(self, server: _ForkServer, *, kill: bool = False) -> None:
        with self._lock:
            if self._server is server:
                self._server = None
        if kill:
            with contextlib.suppress(OSError):
                server.process.kill()
        server.close()

    def close(self) -> None:
        """Stop the fork server (the processes it forked keep running, like ``python -m`` ones)."""
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            server.close()
