"""Running user-supplied grader code: one sandboxed process per batch, limits, no network.

A user's grader (a registered Bedrock-style Lambda file, or an OpenAI ``python`` grader) runs only in
a child process (:mod:`tuneforge.graders.sandbox_child`) that first enters a new network namespace
(through ``unshare(2)``; with a user namespace when tuneforge is not root) and then lowers its own
limits: CPU time (``RLIMIT_CPU``), address space (``RLIMIT_AS``), bytes it may write to a file
(``RLIMIT_FSIZE``), no core files. The parent adds a wall-clock limit per sample. When the machine
allows no namespace at all, user code does not run: every grade fails with the reason, and
:func:`check_sandbox` refuses the grader up front.

One process grades a whole batch. Results come back as JSON lines on a pipe of their own, checked
line by line, so what the grader prints to stdout or stderr cannot pass for a score. With a
``grade(sample, item)`` function, a sample that times out or kills the process (CPU limit, a crash)
fails alone: the process is ended and a fresh one grades the rest, until :data:`MAX_RESTARTS`
samples in a row have done so, when the remaining samples fail with the same reason rather than cost
a timeout each. A Lambda grader takes the batch in one call, so its failure is every sample's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneforge.graders.base import Grade, GraderConfigError

CHILD = Path(__file__).with_name("sandbox_child.py")
MAX_RESTARTS = 3
STARTUP_S = 10.0
"""Wall-clock allowance for the interpreter to start and load the grader's file (up to its ready line)."""
MAX_LINE_BYTES = 64 * 1024

Mode = Literal["grade", "lambda"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    """Wall-clock seconds per sample (a batch-style Lambda grader gets this times the batch size)."""
    cpu_s: int = 10
    """CPU seconds per sample: the soft RLIMIT_CPU is moved before each sample; the hard one bounds the batch."""
    memory_bytes: int = 1 << 30
    """The process's address space (RLIMIT_AS)."""
    file_bytes: int = 1 << 20
    """The largest file the grader may write (RLIMIT_FSIZE)."""


def _signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return {"SIGXCPU": "SIGXCPU: over its CPU-time limit", "SIGKILL": "SIGKILL"}.get(name, name)


class _Child:
    """One sandbox process, its request written, its result pipe open."""

    def __init__(self, payload: bytes) -> None:
        self.expired = False
        read_fd, write_fd = os.pipe()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(CHILD), str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            pass_fds=(write_fd,),
            cwd=tempfile.gettempdir(),
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            start_new_session=True,
        )
        os.close(write_fd)
        self.fd = read_fd
        self.buffer = b""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(payload)
            self.process.stdin.close()
        except BrokenPipeError:
            pass

    def next_line(self, deadline: float) -> bytes | None:
        """The next result line; None at end of output or past ``deadline`` (see :meth:`timed_out`)."""
        self.expired = False
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.expired = True
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MAX_LINE_BYTES and b"\n" not in self.buffer:
                return b"{}"
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def ended(self) -> str:
        """Why the process ended, after its output ran out."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "the grader process stopped answering"
        if code < 0:
            return f"the grader process was killed ({_signal_name(code)})"
        self.stderr.seek(0)
        tail = self.stderr.read()[-300:].decode(errors="replace").strip().splitlines()
        return f"the grader process exited with status {code}" + (f": {tail[-1]}" if tail else "")

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        self.kill()
        os.close(self.fd)
        self.stderr.close()


def run_sandboxed(source: str, mode: Mode, calls: Sequence[Any], limits: SandboxLimits) -> list[Grade]:
    """Grades for ``calls``: ``(sample, item)`` pairs for a ``grade`` function, or Lambda events."""
    grades: list[Grade | None] = [None] * len(calls)
    start = 0
    in_a_row = 0
    while start < len(calls):
        batch = list(calls[start:])
        per_call = limits.timeout_s * (len(batch) if mode == "lambda" else 1)
        request = {
            "source": source,
            "mode": mode,
            "calls": batch,
            "cpu_s": max(1, int(limits.cpu_s * len(batch))) + 2,
            "cpu_per_call": max(1, int(limits.cpu_s)),
            "memory_bytes": limits.memory_bytes,
            "file_bytes": limits.file_bytes,
        }
        try:
            payload = json.dumps(request).encode()
        except (TypeError, ValueError) as exc:
            return [Grade(None, f"the samples cannot be sent to the grader: {exc}")] * len(calls)
        child = _Child(payload)
        try:
            failure, done, fatal = _collect(child, grades, start, per_call)
        finally:
            child.close()
        if failure is None or done == len(calls):
            break
        if fatal or mode == "lambda":  # nothing can run, or the one call for the batch failed: all left fail
            for index in range(done, len(calls)):
                grades[index] = Grade(None, failure)
            break
        grades[done] = Grade(None, failure)
        in_a_row = in_a_row + 1 if done == start else 1
        start = done + 1
        if in_a_row >= MAX_RESTARTS:
            for index in range(start, len(calls)):
                grades[index] = Grade(
                    None, f"not graded: the grader failed {MAX_RESTARTS} samples in a row ({failure})"
                )
            break
    return [grade if grade is not None else Grade(None, "the grader returned nothing") for grade in grades]


def _collect(child: _Child, grades: list[Grade | None], start: int, per_call: float) -> tuple[str | None, int, bool]:
    """Read results into ``grades``: why the process failed (None: it did not), the index of the first
    sample without a grade, and whether the failure is fatal (nothing can run, so no new process)."""
    index = start
    deadline = time.monotonic() + per_call + STARTUP_S
    ready = False
    while index < len(grades):
        line = child.next_line(deadline)
        if line is None:
            if child.expired:
                child.kill()
                return f"the grader timed out after {per_call:g}s", index, False
            return child.ended(), index, False
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict) and isinstance(message.get("fatal"), str):
            return str(message["fatal"]), index, True
        if not ready:
            if message != {"ready": True}:
                child.kill()
                return "the grader process broke the result protocol", index, False
            ready = True
            deadline = time.monotonic() + per_call
            continue
        if not isinstance(message, dict) or message.get("i") != index - start:
            child.kill()
            return "the grader process broke the result protocol", index, False
        if isinstance(message.get("error"), str):
            grades[index] = Grade(None, f"the grader {message['error']}")
        else:
            value = message.get("value")
            if isinstance(value, dict):
                described = f"{value.get('type', 'object')} {str(value.get('text', ''))[:80]}"
                grades[index] = Grade(None, f"the grader returned {described}, not a number")
            else:
                grades[index] = Grade.checked(value)
        index += 1
        deadline = time.monotonic() + per_call
    return None, index, False


_sandbox_works = False


def _probe() -> str | None:
    request = {"source": "", "mode": "probe", "calls": [], "cpu_s": 5, "memory_bytes": 1 << 30, "file_bytes": 0}
    child = _Child(json.dumps(request).encode())
    try:
        line = child.next_line(time.monotonic() + STARTUP_S + 5)
        message = json.loads(line) if line else None
        if isinstance(message, dict) and message.get("ok") is True:
            return None
        if isinstance(message, dict) and isinstance(message.get("fatal"), str):
            return str(message["fatal"])
        return f"the grader sandbox did not start: {child.ended()}"
    finally:
        child.close()


def check_sandbox() -> None:
    """:class:`GraderConfigError` when user code cannot be sandboxed here.

    Starts a sandbox that runs nothing; once one has worked, later calls cost nothing (a failure is
    asked again next time, so a machine too busy to start it in time is not refused for good).
    """
    global _sandbox_works
    if _sandbox_works:
        return
    problem = _probe()
    if problem is not None:
        raise GraderConfigError(f"{problem}; user-supplied graders need a Linux kernel that allows them")
    _sandbox_works = True
