"""``python -m tuneforge.model.importing GGUF DEST``: the torch side of a GGUF model import.

The API process checks a GGUF's header (:mod:`tuneforge.catalog.imports`) but must not import torch,
so the dequantization and the rebuilt safetensors folder happen here, in a process of their own that
the import service starts and waits for. A failure ends with one line, ``error: <reason>``, which the
service puts in the job's ``failureMessage``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneforge.model.gguf import GGUFConversionError, convert_gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        convert_gguf(args.gguf, args.dest)
    except GGUFConversionError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    except Exception as exc:  # transformers' own error, whatever it is, named in the job's failureMessage
        reason = f"{type(exc).__name__}: {exc}"
        print(f"error: transformers could not build a model from {args.gguf.name}: {reason}", flush=True)
        return 1
    print(f"converted {args.gguf} into {args.dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
