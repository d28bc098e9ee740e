"""``python -m tuneforge.catalog.gguf_inspect GGUF MEMORY_BYTES CPU_SECONDS``: read a GGUF's header in a
process of its own, under resource limits, and print the facts (or the reason it is refused) as one
JSON line.

Why a process: the ``gguf`` package's reader makes one numpy view per array element, with counts
taken from the file, and recurses into nested arrays. A crafted file can therefore ask for gigabytes
of memory, minutes of CPU or a recursion deeper than Python allows. In the API process that would
take the server down or block it; here the limits (``RLIMIT_AS``, ``RLIMIT_CPU``) end this process
alone and the import is refused. Torch-free, like the rest of the catalog.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    path, memory_bytes, cpu_seconds = Path(argv[0]), int(argv[1]), int(argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    from tuneforge.catalog.imports import ImportCheckError, inspect_gguf

    try:
        facts = inspect_gguf(path)
    except ImportCheckError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    except Exception as exc:  # the reader failing in a way it does not name (e.g. at the memory limit)
        reason = f"{path.name} is not a GGUF file that can be read within the inspection's limits: {type(exc).__name__}"
        print(json.dumps({"error": reason}), flush=True)
        return 1
    print(json.dumps({"facts": facts.as_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
