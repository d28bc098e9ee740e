"""A process for tests/unit/test_launcher.py: reports what it sees, then exits with the code it is given.

``python -m tests.unit.launcher_probe REPORT CODE`` writes its argv, session, environment and
whether torch was already imported to REPORT (JSON), prints a line, and exits with CODE; CODE
``sleep`` sleeps instead, to be signalled.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    report, code = sys.argv[1], sys.argv[2]
    seen = {
        "argv": sys.argv,
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "marker": os.environ.get("TUNEFORGE_PROBE_MARKER"),
        "torch_preloaded": "torch" in sys.modules,
        "main": __name__,
    }
    with open(report + ".tmp", "w") as f:
        json.dump(seen, f)
    os.replace(report + ".tmp", report)
    print(f"probe {os.getpid()} ran", flush=True)
    if code == "sleep":
        time.sleep(120)
        return 0
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
