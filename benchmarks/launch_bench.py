"""Engine cold start: started with ``python -m`` against forked by the fork server (tuneforge/launcher.py).

    python benchmarks/launch_bench.py              # 5 starts of each, interleaved
    python benchmarks/launch_bench.py --starts 3

Each start is ``tuneforge.engine.server --source builtin:forge-micro`` through :class:`tuneforge.launcher.
Launcher`, exactly as the engine manager starts a replica, timed from the call to the engine's status
file saying ``ready`` (model loaded and warmed up; then it is stopped). The two launchers alternate
(A B A B ...). The fork server's own start (its imports, once per API process) is timed separately
and is not in the forked figures: it overlaps the first start, which returns at once and is forked
when the fork server is ready. The same model, threads and machine for both; no baseline applies
beyond ``python -m`` itself. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, final_json, fmt, stats


def cold_start(launcher: object, root: Path, name: str) -> float:
    from tuneforge.launcher import Launcher

    assert isinstance(launcher, Launcher)
    status = root / f"{name}.json"
    started = time.perf_counter()
    process = launcher.start(
        "tuneforge.engine.server",
        ["--source", "builtin:forge-micro", "--socket", str(root / f"{name}.sock"), "--status", str(status)],
        root / f"{name}.log",
    )
    deadline = started + 300
    while True:
        if status.exists():
            state = json.loads(status.read_text() or "{}").get("state")
            if state == "ready":
                break
            if state == "failed":
                raise RuntimeError(status.read_text())
        if process.poll() is not None:
            raise RuntimeError(f"engine exited with {process.poll()}: {(root / f'{name}.log').read_text()[-2000:]}")
        if time.perf_counter() > deadline:
            raise RuntimeError("engine not ready after 300 s")
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    process.terminate()
    process.wait(timeout=30)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()

    from tuneforge.launcher import Launcher
    from tuneforge.model.builtin import ensure_builtin
    from tuneforge.settings import Settings

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        common = {"data_dir": root / "data", "worker_threads": 1}
        plain = Launcher(Settings(fork_server=False, **common))  # type: ignore[arg-type]
        forked = Launcher(Settings(fork_server=True, **common))  # type: ignore[arg-type]
        plain.settings.ensure_dirs()
        ensure_builtin("forge-micro", plain.settings.models_dir)  # both start from the created weights
        began = time.perf_counter()
        first = cold_start(forked, root, "first")  # starts the fork server; forked once it is ready
        server = forked._server
        assert server is not None and server.ready.is_set()
        times: dict[str, list[float]] = {"python -m": [], "forked": []}
        for i in range(args.starts):
            times["python -m"].append(cold_start(plain, root, f"plain{i}"))
            times["forked"].append(cold_start(forked, root, f"forked{i}"))
        forked.close()
        print(f"first start (fork server starting): {first:.2f} s, {time.perf_counter() - began:.0f} s in all")
    summary = {name: stats(values) for name, values in times.items()}
    for name, stat in summary.items():
        print(f"{name:>10}: engine ready after {fmt(stat, ' s', 2)} ({args.starts} starts)")
    ratio = statistics.median(times["python -m"]) / statistics.median(times["forked"])
    print(f"forked cold start is {ratio:.1f}x faster than python -m (medians)")
    final_json(
        {
            "benchmark": "launch",
            "env": environment(1),
            "model": "forge-micro",
            "starts": args.starts,
            "first_start_s": first,
            "cold_start_s": summary,
            "speedup": ratio,
        }
    )


if __name__ == "__main__":
    main()
