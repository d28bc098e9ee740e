"""Model invocation logging: Bedrock's ``loggingConfig``, and the JSONL files the runtime writes.

With ``s3Config`` and ``textDataDeliveryEnabled`` set, every runtime call (Bedrock runtime and
OpenAI-compatible routes) becomes one JSON object, in Bedrock's ``ModelInvocationLog`` schema, in
gzip-compressed JSON-lines files at Bedrock's key layout::

    s3://<bucketName>/<keyPrefix>/AWSLogs/<account>/BedrockModelInvocationLogs/<region>/YYYY/MM/DD/HH/<file>.json.gz

Records are buffered and written as a new object every flush (about once a second): objects are
never appended to, so the same code works against a real S3 endpoint. See docs/serving.md for the
record format; the ``tuneforge`` member of a record holds the exact prompt text the model
continued and the completion it produced, ready to use as a prompt/completion training record.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select

from tuneforge.db.session import Database
from tuneforge.db.tables import InvocationLoggingConfig, utcnow
from tuneforge.errors import ValidationException
from tuneforge.storage import ObjectStore, StorageError

_CONFIG_ID = 1


class InvocationLogs:
    def __init__(self, db: Database, store: ObjectStore, account_id: str, region: str) -> None:
        self.db = db
        self.store = store
        self.account_id = account_id
        self.region = region
        self._buffer: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    # -- configuration --------------------------------------------------------------------------

    def put(self, config: dict[str, Any]) -> None:
        """Store the configuration once the store accepts where it would write (a prefix that leaves
        the bucket or the object root is refused now, not dropped at every flush)."""
        where = self.prefix_uri(config)
        try:
            self.store.check(f"{where}/0000/00/00/00/x.json.gz")
        except StorageError as exc:
            raise ValidationException(
                f"Invalid loggingConfig.s3Config (bucketName {config['s3Config'].get('bucketName')!r}, "
                f"keyPrefix {config['s3Config'].get('keyPrefix', '')!r}): {exc}"
            ) from None
        with self.db.session() as session:
            row = session.get(InvocationLoggingConfig, _CONFIG_ID)
            if row is None:
                session.add(InvocationLoggingConfig(id=_CONFIG_ID, config=config, updated_at=utcnow()))
            else:
                row.config, row.updated_at = config, utcnow()

    def get(self) -> dict[str, Any] | None:
        with self.db.session() as session:
            row = session.get(InvocationLoggingConfig, _CONFIG_ID)
            return None if row is None else dict(row.config)

    def delete(self) -> None:
        with self.db.session() as session:
            row = session.scalar(select(InvocationLoggingConfig).where(InvocationLoggingConfig.id == _CONFIG_ID))
            if row is not None:
                session.delete(row)

    def prefix_uri(self, config: dict[str, Any]) -> str:
        s3 = config["s3Config"]
        key_prefix = str(s3.get("keyPrefix") or "").strip("/")
        parts = [f"s3://{s3['bucketName']}", *([key_prefix] if key_prefix else [])]
        parts += ["AWSLogs", self.account_id, "BedrockModelInvocationLogs", self.region]
        return "/".join(parts)

    # -- records --------------------------------------------------------------------------------

    def record(
        self,
        *,
        operation: str,
        model_id: str,
        request_id: str,
        identity: str,
        input_body: dict[str, Any],
        output_body: dict[str, Any],
        input_tokens: int,
        output_tokens: int,
        request_metadata: dict[str, str] | None,
        extension: dict[str, Any],
        at: datetime | None = None,
    ) -> bool:
        """Buffer one invocation if logging is configured; returns whether it was."""
        config = self.get()
        if not config or not config.get("s3Config") or not config.get("textDataDeliveryEnabled"):
            return False
        at = at or utcnow()
        entry: dict[str, Any] = {
            "schemaType": "ModelInvocationLog",
            "schemaVersion": "1.0",
            "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "accountId": self.account_id,
            "identity": {"arn": identity},
            "region": self.region,
            "requestId": request_id,
            "operation": operation,
            "modelId": model_id,
            "input": {
                "inputContentType": "application/json",
                "inputBodyJson": input_body,
                "inputTokenCount": input_tokens,
            },
            "output": {
                "outputContentType": "application/json",
                "outputBodyJson": output_body,
                "outputTokenCount": output_tokens,
            },
            "tuneforge": extension,
        }
        if request_metadata:
            entry["requestMetadata"] = request_metadata
        folder = f"{self.prefix_uri(config)}/{at:%Y/%m/%d/%H}"
        with self._lock:
            self._buffer[folder].append(json.dumps(entry, ensure_ascii=False))
        return True

    def flush(self) -> list[str]:
        """Write buffered records, one new object per hour folder; returns the URIs written."""
        with self._lock:
            buffer, self._buffer = self._buffer, defaultdict(list)
        written = []
        for folder, lines in buffer.items():
            uri = f"{folder}/{utcnow():%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}.json.gz"
            self.store.write_bytes(uri, gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))
            written.append(uri)
        return written


def read_records(store: ObjectStore, prefix_uri: str) -> Iterator[dict[str, Any]]:
    """Every record under ``prefix_uri`` (``.json.gz`` as written here, or plain ``.json``/``.jsonl``),
    oldest object first: the read side of the format, for consumers such as distillation from logs."""
    for uri in store.list(prefix_uri):
        name = uri.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.endswith((".json.gz", ".json", ".jsonl")):
            continue
        data = store.read_bytes(uri)
        text = (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8-sig")
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
