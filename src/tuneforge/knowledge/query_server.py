"""The query process: ``python -m tuneforge.knowledge.query_server``, one per API server.

Retrieve must embed its query with the torch model, which the API process never loads; this
process holds the embedder and the loaded indexes and answers one JSON line per request on stdin
(``{"query", "k", "indexes": [paths]}``) with one JSON line on stdout (``{"hits": [[id, score]]}``
or ``{"error"}``). A pipe to a long-lived child is the simplest transport that meets the Retrieve
p50 (a query costs a few milliseconds to embed and about one to search), with no port to bind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tuneforge.knowledge.embedder import Embedder
from tuneforge.knowledge.index import IndexCache
from tuneforge.settings import Settings


def main() -> int:
    torch.set_num_threads(1)
    embedder = Embedder(Settings().models_dir)
    indexes = IndexCache()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            vector = embedder.embed([request["query"]])[0]
            hits = indexes.search([Path(p) for p in request["indexes"]], vector, int(request["k"]))
            reply: dict[str, object] = {"hits": hits}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
