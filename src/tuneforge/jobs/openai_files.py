"""OpenAI's files (``/v1/files``, purpose ``fine-tune``): kept in the object store, checked in the background.

An upload is copied to ``s3://tuneforge/openai-files/<file id>/<name>`` in chunks as the multipart
parser hands them over, never whole in memory, and refused once it passes
``TUNEFORGE_MAX_TRAINING_FILE_BYTES``. The row is stored ``uploaded``; a background thread then reads
the file line by line and sets ``processed`` (with the record kind and count) or ``error``, with
``status_details`` naming the line and the field in the format's own names
(``line 3: field "messages[1].role": ...``). A job may use only a ``processed`` file of purpose
``fine-tune`` (:meth:`FileService.for_job`). No HTTP, no torch.

Record kinds, judged per line as OpenAI's fine-tuning formats write them, read as they are:

- ``chat``: ``{"messages": [...]}`` ending with an assistant message (supervised);
- ``prompt``: ``{"messages": [...]}`` ending with a user message, any other keys being the grader's
  reference fields (reinforcement);
- ``preference``: ``{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}`` (DPO).
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import select

from tuneforge.arns import new_id
from tuneforge.catalog.models import FINE_TUNING
from tuneforge.data.formats import RecordError, parse_messages, parse_record
from tuneforge.db.listing import Cursor, fetch_page
from tuneforge.db.session import Database
from tuneforge.db.tables import OpenAIFile, utcnow
from tuneforge.errors import ResourceNotFoundException, ValidationException
from tuneforge.serving.runtime import InvalidParameter
from tuneforge.settings import Settings
from tuneforge.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

BUCKET = "tuneforge"
PREFIX = "openai-files"
PURPOSES = ("fine-tune", "assistants", "batch", "user_data", "vision", "evals")
"""OpenAI's purposes. Every one is kept; only ``fine-tune`` files are checked, and only they train."""
CHUNK = 1 << 20
MAX_ERRORS = 5
CHAT, PROMPT, PREFERENCE = "chat", "prompt", "preference"
CONVERSATION_KEYS = {"messages", "system", "schemaVersion"}


class FileTooLarge(ValidationException):
    pass


class ObjectNotFound(ResourceNotFoundException):
    """A file, fine-tuning job or checkpoint of OpenAI's surface that does not exist (OpenAI's 404)."""


@dataclass(frozen=True)
class FilePage:
    items: list[OpenAIFile]
    has_more: bool


def file_uri(file_id: str, filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", filename.rsplit("/", 1)[-1]).strip(".-") or "data.jsonl"
    return f"s3://{BUCKET}/{PREFIX}/{file_id}/{stem}"


def record_kind(obj: object) -> str:
    """The kind of one decoded record (see the module docstring); RecordError names the field when wrong."""
    if not isinstance(obj, dict):
        raise RecordError("", f"expected a JSON object, got {type(obj).__name__}")
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        return _preference(obj)
    if "messages" not in obj:
        keys = ", ".join(f'"{key}"' for key in obj) or "none"
        raise RecordError(
            "",
            f'not a fine-tuning record (keys: {keys}); write {{"messages": [...]}} (chat) or '
            '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]} (preference)',
        )
    _, turns = parse_messages(obj["messages"], "messages", has_system="system" in obj)
    if turns[-1][0] == "assistant" and set(obj) <= CONVERSATION_KEYS:
        parse_record(obj, FINE_TUNING)
        return CHAT
    if turns[-1][0] == "assistant":
        raise RecordError("", 'a chat record ending with an assistant message has only "messages" (and "system")')
    return PROMPT


def _preference(obj: dict[str, object]) -> str:
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in obj:
            raise RecordError(key, "missing: a preference record has input, preferred_output and non_preferred_output")
    source = obj["input"]
    if not isinstance(source, dict) or "messages" not in source:
        raise RecordError("input", 'expected {"messages": [...]}')
    parse_messages(source["messages"], "input.messages")
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        _, turns = parse_messages(obj[key], key)
        if len(turns) != 1 or turns[0][0] != "assistant":
            raise RecordError(key, "expected exactly one assistant message")
        answers.append(turns[0][1])
    if answers[0] == answers[1]:
        raise RecordError("non_preferred_output", "identical to preferred_output: the pair teaches nothing")
    return PREFERENCE


def check_lines(lines: Iterator[bytes]) -> tuple[str | None, int, list[str]]:
    """(the file's record kind, records, errors): every line a record of one kind, named by line and field."""
    kind: str | None = None
    records = 0
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if not raw.strip():
            continue
        try:
            this = record_kind(json.loads(raw))
        except UnicodeDecodeError as exc:
            errors.append(f"line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})")
        except RecordError as exc:
            errors.append(f"line {number}: {exc}")
        else:
            records += 1
            if kind is None:
                kind = this
            elif this != kind:
                errors.append(f"line {number}: a {this} record in a file of {kind} records; keep one kind per file")
        if len(errors) >= MAX_ERRORS:
            break
    if not records and not errors:
        errors.append("the file holds no records")
    return kind, records, errors


class FileService:
    def __init__(self, db: Database, store: ObjectStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    def create(self, source: BinaryIO, filename: str, purpose: str) -> OpenAIFile:
        """Copy ``source`` to the store in chunks, store the row ``uploaded`` and start its check."""
        if purpose not in PURPOSES:
            raise InvalidParameter(f"Invalid purpose '{purpose}': expected one of {', '.join(PURPOSES)}", "purpose")
        file_id = f"file-{new_id()}"
        uri = file_uri(file_id, filename)
        limit = self.settings.max_training_file_bytes
        written = 0
        with self.store.open_write(uri) as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > limit:
                    out.abort()
                    raise FileTooLarge(
                        f"The file is larger than {limit:,} bytes, the most a training file may have "
                        "(TUNEFORGE_MAX_TRAINING_FILE_BYTES): split it or raise the setting"
                    )
                out.write(chunk)
        checked = purpose == "fine-tune"
        row = OpenAIFile(
            id=file_id,
            filename=filename[:512],
            purpose=purpose,
            bytes=written,
            uri=uri,
            status="uploaded" if checked else "processed",
            created_at=utcnow(),
        )
        with self.db.session() as session:
            session.add(row)
        if checked:
            threading.Thread(target=self.check, args=(file_id,), name=f"check-{file_id}", daemon=True).start()
        return row

    def recover(self) -> None:
        """Check again the files a stopped server left ``uploaded`` (at start, in the background)."""
        with self.db.session() as session:
            pending = list(session.scalars(select(OpenAIFile.id).where(OpenAIFile.status == "uploaded")))
        for file_id in pending:
            threading.Thread(target=self.check, args=(file_id,), name=f"check-{file_id}", daemon=True).start()

    def check(self, file_id: str) -> None:
        """Read the file and record ``processed`` or ``error`` (run on a background thread)."""
        row = self.get(file_id)
        try:
            with self.store.open_read(row.uri) as handle:
                kind, records, errors = check_lines(iter(handle))
        except (StorageError, OSError) as exc:
            kind, records, errors = None, 0, [f"the file could not be read: {exc}"]
        with self.db.session() as session:
            current = session.get(OpenAIFile, file_id)
            if current is None:  # deleted meanwhile
                return
            current.records, current.record_format = records, kind
            current.status = "error" if errors else "processed"
            current.status_details = "; ".join(errors) if errors else None
        log.info("file %s: %s", file_id, "; ".join(errors) or f"{records} {kind} records")

    def get(self, file_id: str) -> OpenAIFile:
        with self.db.session() as session:
            row = session.get(OpenAIFile, file_id)
        if row is None:
            raise ObjectNotFound(f"No such File object: {file_id}")
        return row

    def list_files(self, purpose: str | None, after: str | None, limit: int, descending: bool = True) -> FilePage:
        query = select(OpenAIFile)
        if purpose:
            query = query.where(OpenAIFile.purpose == purpose)
        cursor = None
        if after:
            anchor = self.get(after)
            cursor = Cursor(anchor.created_at, anchor.id)
        found = fetch_page(self.db, query, OpenAIFile, descending=descending, after=cursor, limit=limit)
        return FilePage(found.items, found.next_cursor is not None)

    def open(self, file_id: str) -> BinaryIO:
        return self.store.open_read(self.get(file_id).uri)

    def delete(self, file_id: str) -> OpenAIFile:
        row = self.get(file_id)
        with self.db.session() as session:
            current = session.get(OpenAIFile, file_id)
            if current is not None:
                session.delete(current)
        self.store.delete(row.uri)
        return row

    def for_job(self, file_id: str, param: str, kinds: tuple[str, ...]) -> OpenAIFile:
        """The file a job reads, refused unless it is a processed fine-tune file of one of ``kinds``."""
        try:
            row = self.get(file_id)
        except ResourceNotFoundException:
            raise InvalidParameter(f"File {file_id} not found", param) from None
        if row.purpose != "fine-tune":
            raise InvalidParameter(
                f"File {file_id} has purpose '{row.purpose}'; a fine-tuning job reads files of purpose 'fine-tune'",
                param,
            )
        if row.status == "uploaded":
            raise InvalidParameter(
                f"File {file_id} is still being processed; retry when its status is 'processed'", param
            )
        if row.status == "error":
            raise InvalidParameter(f"File {file_id} failed validation: {row.status_details}", param)
        if row.record_format not in kinds:
            raise InvalidParameter(
                f"File {file_id} holds {row.record_format} records; this method reads {' or '.join(kinds)} records",
                param,
            )
        return row
