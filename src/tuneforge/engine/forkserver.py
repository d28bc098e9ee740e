"""The fork server: one process that imports the torch stack once and forks every worker and engine from it.

``python -m tuneforge.engine.forkserver``, started by :class:`tuneforge.launcher.Launcher` on its
first start. A job worker or an engine spends about 5 s of a core importing torch, transformers,
peft and tuneforge's recipes before it does anything (most of a small job's start, and of an
on-demand engine's cold start). This process pays that once; each child it forks starts with all of
it imported, in milliseconds.

The protocol is JSON lines: requests on stdin, answers on stdout.

- Once the imports are done it writes ``{"ready": PID}``.
- ``{"id": N, "module": M, "args": [...], "env": {...}, "log": PATH}`` forks a child that runs
  module ``M`` as ``__main__`` with ``sys.argv = [M, *args]``, exactly the environment ``env``, in
  a session of its own, its stdout and stderr appended to ``PATH`` and stdin from ``/dev/null``:
  what ``python -m M ARGS`` with the same environment, ``start_new_session`` and redirections
  would do. Its command line reads ``<python> -m M ARGS`` (``setproctitle``), so ``ps`` and the
  supervisor's check on a worker's identity (``/proc/PID/cmdline``) see what they would. The
  answer is ``{"id": N, "pid": PID}``, or ``{"id": N, "error": MESSAGE}``.
- The children are this process's: it reaps them and writes ``{"exited": PID, "code": CODE}``
  (negative: killed by that signal, as ``subprocess`` reports it).

It exits when stdin closes (the server that started it has gone); its children carry on, as
workers started with ``python -m`` outlive their server, and a later server adopts them.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import sys
import threading
import traceback
from typing import Any, TextIO

PRELOAD = (
    "torch",
    "transformers",
    "peft",
    "tuneforge.engine.server",
    "tuneforge.engine.offline",
    "tuneforge.jobs.worker",
    "tuneforge.recipes.fine_tuning",
    "tuneforge.recipes.continued_pretraining",
    "tuneforge.recipes.distillation",
    "tuneforge.recipes.preference",
    "tuneforge.recipes.reinforcement",
    "tuneforge.recipes.batch_inference",
    "tuneforge.recipes.evaluation",
)
"""What every child would import first. Importing does not start torch's thread pools or touch a GPU,
so forking afterwards is safe; a child sets its own thread count, as a fresh process does."""

REAP_INTERVAL_S = 1.0
"""A reaping pass at least this often, besides the one each SIGCHLD wakes."""
_wakeup: tuple[int, int] | None = None
"""The self-pipe SIGCHLD writes to (signal.set_wakeup_fd); each child closes it."""
STARTED_TIMEOUT_S = 5.0


def preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a child that needs it reports the error itself, as a fresh process would
            traceback.print_exc()


def run_child(request: dict[str, Any], started: int) -> int:
    """In the forked child: become ``python -m MODULE ARGS`` and run it; the exit status.

    ``started`` is a pipe's write end, closed once the child has its session and command line, so
    the fork server answers with a pid that already looks like what it is."""
    from setproctitle import setproctitle

    module, args = str(request["module"]), [str(a) for a in request["args"]]
    os.setsid()
    setproctitle(" ".join([sys.executable, "-m", module, *args]))
    os.close(started)
    log = os.open(str(request["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    sys.argv = [module, *args]
    sys.modules.pop(module, None)  # run afresh as __main__, as python -m does (the preload imported it)
    code: int
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # What the interpreter does on the way out of ``python -m``: wait for non-daemon threads, run atexit.
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    return code


def fork(request: dict[str, Any], channel: TextIO) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(started_r)
            channel.close()
            if _wakeup is not None:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for end in _wakeup:
                    os.close(end)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = run_child(request, started_w)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code & 0xFF if code >= 0 else 1)
    os.close(started_w)
    try:
        select.select([started_r], [], [], STARTED_TIMEOUT_S)  # end of file once the child has closed its end
    finally:
        os.close(started_r)
    return pid


def reap(children: set[int], channel: TextIO) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        send(channel, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def send(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main() -> int:
    # The answers get the real stdout; anything else that prints goes to stderr (the fork server's log).
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the server; stdin's EOF ends this
    preload()
    gc.freeze()  # what the imports made stays out of the children's collections, so their pages stay shared
    # SIGCHLD wakes the loop through a pipe, so an exit is reported at once (the engine manager routes by it).
    global _wakeup
    _wakeup = os.pipe()
    for end in _wakeup:
        os.set_blocking(end, False)
    signal.set_wakeup_fd(_wakeup[1])
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    send(channel, {"ready": os.getpid()})
    children: set[int] = set()
    pending = b""
    while True:
        readable, _, _ = select.select([0, _wakeup[0]], [], [], REAP_INTERVAL_S)
        if _wakeup[0] in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(_wakeup[0], 512):
                    pass
        reap(children, channel)
        if 0 not in readable:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return 0
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            serve(line, children, channel)


def serve(line: bytes, children: set[int], channel: TextIO) -> None:
    request: dict[str, Any] = {}
    try:
        request = json.loads(line)
        pid = fork(request, channel)
    except Exception as exc:  # a malformed request or a failed fork: say so and keep serving
        send(channel, {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
        return
    children.add(pid)
    send(channel, {"id": request["id"], "pid": pid})


if __name__ == "__main__":
    sys.exit(main())
