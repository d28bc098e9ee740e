"""The sandboxed side of a user-supplied grader: run by path as ``python -I sandbox_child.py RESULT_FD``.

Standard library only, and no tuneforge import, so the process starts quickly and user code sees no
tuneforge state. Before it reads any user code it leaves the network (a new network namespace holds
only a loopback interface that is down, so every connection fails) and lowers its own limits; if it
cannot leave the network it reports that and exits without running anything.

Protocol: the request arrives as one JSON object on stdin; results leave as JSON lines on the
``RESULT_FD`` pipe (never stdout, which the grader may print anything to): ``{"ready": true}`` once
the grader's file has loaded (the parent's per-sample clock starts there), then ``{"i": n, "value": x}``
or ``{"i": n, "error": "..."}`` per call; or one ``{"fatal": "..."}`` when nothing can run.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import sys
import traceback
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NETWORK_ERRNOS = {errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL}


def _emit(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        written = os.write(fd, data)
        data = data[written:]


def leave_network() -> str | None:
    """Enter a new network namespace (with a user namespace when not root); None, or why it failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return None
    first = ctypes.get_errno()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return None
    second = ctypes.get_errno()
    return (
        f"unshare(CLONE_NEWNET) failed ({os.strerror(first)}) and so did unshare(CLONE_NEWUSER | CLONE_NEWNET) "
        f"({os.strerror(second)}): user code cannot be cut off from the network here"
    )


def limit(cpu_s: int, memory_bytes: int, file_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (line {last[0].lineno})" if last and last[0].filename == "<grader>" else ""
    hint = ""
    if isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS:
        hint = " (graders run without network access)"
    return f"raised {type(exc).__name__}: {str(exc)[:300]}{where}{hint}"


def _value(value: Any) -> Any:
    """Numbers pass (NaN included, for the parent to refuse); anything else as its type and text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return {"type": type(value).__name__, "text": repr(value)[:80]}


def allow_cpu(seconds: int) -> None:
    """Lower the soft CPU limit to what this call may use from now (the hard limit bounds the batch)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = max(1, round(usage.ru_utime + usage.ru_stime + seconds))  # whole seconds: within half a second
    resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))


def _run_grade(fd: int, grade: Any, calls: list[Any], cpu_per_call: int) -> None:
    for index, (sample, item) in enumerate(calls):
        allow_cpu(cpu_per_call)
        try:
            _emit(fd, {"i": index, "value": _value(grade(sample, item))})
        except BaseException as exc:
            _emit(fd, {"i": index, "error": _error(exc)})


def _run_lambda(fd: int, handler: Any, calls: list[Any]) -> None:
    try:
        results = handler(calls)
    except BaseException as exc:
        for index in range(len(calls)):
            _emit(fd, {"i": index, "error": _error(exc)})
        return
    scores: dict[str, Any] = {}
    if isinstance(results, list):
        for result in results:
            if isinstance(result, dict) and isinstance(result.get("id"), str):
                scores[result["id"]] = result.get("aggregate_reward_score")
    for index, call in enumerate(calls):
        if not isinstance(results, list):
            _emit(fd, {"i": index, "error": f"returned {type(results).__name__}, not a list of results"})
        elif call["id"] not in scores:
            _emit(fd, {"i": index, "error": f'returned no result with "id" {call["id"]!r}'})
        else:
            _emit(fd, {"i": index, "value": _value(scores[call["id"]])})


def main() -> None:
    fd = int(sys.argv[1])
    request = json.loads(sys.stdin.read())
    problem = leave_network()
    if problem is not None:
        _emit(fd, {"fatal": f"the grader sandbox is unavailable: {problem}"})
        sys.exit(3)
    limit(request["cpu_s"], request["memory_bytes"], request["file_bytes"])
    if request["mode"] == "probe":
        _emit(fd, {"ok": True})
        os._exit(0)
    namespace: dict[str, Any] = {"__name__": "grader"}
    try:
        exec(compile(request["source"], "<grader>", "exec"), namespace)
    except BaseException as exc:
        _emit(fd, {"fatal": f"the grader's file {_error(exc)}"})
        sys.exit(4)
    wanted = ("grade",) if request["mode"] == "grade" else ("lambda_grader", "lambda_handler")
    if not any(callable(namespace.get(name)) for name in wanted):
        _emit(fd, {"fatal": f"the grader's file defines no function {' or '.join(wanted)}"})
        sys.exit(4)
    _emit(fd, {"ready": True})
    if request["mode"] == "grade":
        _run_grade(fd, namespace["grade"], request["calls"], request["cpu_per_call"])
    else:
        handler = namespace.get("lambda_grader")
        if handler is None:
            lambda_handler = namespace["lambda_handler"]

            def handler(calls: list[Any]) -> Any:
                return lambda_handler(calls, None)

        _run_lambda(fd, handler, request["calls"])
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
