"""Pre-flight validation of a JSONL dataset, before a job spends any compute on it.

Bedrock checks a dataset when a job starts and fails the job with a ``failureMessage``; tuneforge
does the same checks up front (and from ``tuneforge data validate``), so that the message names the
line and the field to fix rather than a bare "Unable to parse Amazon S3 file".

The file is read one line at a time, so a 1 GB file costs one line of memory plus the token
counter. Per-line errors are capped at ``max_errors`` (the rest are only counted, as "and N more
errors"); file-level errors (size quota, record quota, no records) are always kept and come first.

Limits applied per record:

* every type: a byte cap on the raw line (:func:`record_byte_limit`), checked before the line is
  decoded or parsed, so a huge single-line record is refused without being loaded whole.
* fine-tuning and distillation: Bedrock's three token limits, with Bedrock's messages verbatim
  (``Maximum input token count 4097 exceeds limit of 4096``, ...). For a conversation the input is
  the system prompt and every turn before the final assistant answer; the output is that answer.
  For a preference pair the input is the prompt and the output the longer answer (each answer
  trains after the prompt as its own sequence); the report's token totals count both sequences.
* continued pre-training: **no token limit.** Documents longer than the context are cut into
  context-sized chunks at training time, so a long document is normal, not an error. Only
  Bedrock's per-record character quota applies: ``max_total_tokens x 6`` characters (reference
  section 3, "Characters per sample: token quota x 6"), with Bedrock's "Input size exceeded"
  message.

Token counting is injected (``count_tokens``) because the API process must not import torch or
transformers; the caller passes the base model's tokenizer, or any approximation of it.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tuneforge.catalog.models import (
    CONTINUED_PRE_TRAINING,
    CUSTOMIZATION_TYPES,
    DISTILLATION,
    REINFORCEMENT_FINE_TUNING,
    TokenLimits,
)
from tuneforge.data.formats import (
    FORMAT_CONVERSATION,
    FORMAT_PRETRAINING,
    Preference,
    PretrainingText,
    RecordError,
    parse_record,
    record_format,
)

CHARS_PER_TOKEN = 6
"""Bedrock's per-record character quota is its token quota times this."""

JSON_BYTES_PER_CHARACTER = 6
"""The most bytes one character can take in a JSON line: a ``\\uXXXX`` escape."""

MIN_RECORD_BYTES = 1 << 20
"""The record byte cap never goes below 1 MiB, so JSON structure and short contexts leave room."""

_SKIP_CHUNK = 1 << 16

FAILURE_MESSAGE_LIMIT = 2048
"""Bedrock's ``failureMessage`` is at most 2048 characters."""

FORMAT_UNKNOWN = "unknown"
"""The format of a fine-tuning file in which no record parsed."""

_EXCERPT_CHARS = 40


@dataclass(frozen=True)
class DataError:
    """One problem in a dataset. ``line`` is 1-based; None for problems with the file as a whole."""

    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field:
            where.append(f'field "{self.field}"')
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "message": self.message, "text": str(self)}


def record_byte_limit(limits: TokenLimits) -> int:
    """The most bytes one JSONL line may have before it is refused unread.

    Bedrock's per-record character quota is ``max_total_tokens x 6`` (:data:`CHARS_PER_TOKEN`); a
    character takes at most :data:`JSON_BYTES_PER_CHARACTER` bytes in JSON, so no line longer than
    their product (or :data:`MIN_RECORD_BYTES`, whichever is larger) can hold a record that passes.
    Refusing such a line before decoding, parsing or tokenizing it keeps a 10 MB single-line record
    from costing gigabytes of memory and a minute of tokenizing just to be rejected.
    """
    return max(limits.max_total_tokens * CHARS_PER_TOKEN * JSON_BYTES_PER_CHARACTER, MIN_RECORD_BYTES)


@dataclass(frozen=True)
class OversizedLine:
    """A line longer than the record byte cap, skipped by :func:`bounded_lines` without keeping it."""

    size: int


def bounded_lines(handle: BinaryIO, max_record_bytes: int) -> Iterator[bytes | OversizedLine]:
    """The lines of a binary file, each held in memory only when it is at most ``max_record_bytes``.

    A longer line is read through in 64 KiB chunks and discarded, and an :class:`OversizedLine`
    with its length takes its place, so memory stays bounded by the cap whatever the file holds.
    """
    while True:
        line = handle.readline(max_record_bytes + 1)
        if not line:
            return
        if len(line) <= max_record_bytes:
            yield line
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = handle.readline(_SKIP_CHUNK)
            if not line:
                break
            size += len(line)
        yield OversizedLine(size)


@dataclass
class ValidationReport:
    """What pre-flight validation found, and the token counts an estimate is built on.

    The counts cover only the records that passed every check, so they are meaningful when
    :attr:`ok` is true.
    """

    errors: list[DataError]
    format: str
    """``prompt-completion``, ``conversation``, ``preference``, ``pretraining``, or ``unknown``."""
    records: int
    """Records that passed every check."""
    input_tokens: int
    output_tokens: int
    total_tokens: int
    max_record_tokens: int
    bytes: int
    omitted_errors: int = 0
    """Per-line errors found beyond ``max_errors`` and not kept."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.omitted_errors

    def error_messages(self) -> list[str]:
        """One line per kept error, then "and N more errors" when some were not kept."""
        lines = [str(error) for error in self.errors]
        if self.omitted_errors:
            lines.append(_more(self.omitted_errors))
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "format": self.format,
            "records": self.records,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "max_record_tokens": self.max_record_tokens,
            "bytes": self.bytes,
            "errors": [error.to_dict() for error in self.errors],
            "omitted_errors": self.omitted_errors,
        }

    def failure_message(self, uri: str) -> str:
        """A Bedrock-style job ``failureMessage`` (one paragraph, at most 2048 characters).

        It names the file and as many of the first errors as fit, each with its line and field,
        then how many more there are: ``Input data validation failed for s3://b/train.jsonl:
        line 3: invalid JSON: ...; line 9: ...; and 4 more errors``.
        """
        if self.ok:
            raise ValueError("the dataset passed validation; there is no failure to describe")
        head = f"Input data validation failed for {uri}: "
        texts = [str(error) for error in self.errors]
        total = len(texts) + self.omitted_errors
        kept: list[str] = []
        for text in texts:
            rest = total - len(kept) - 1
            candidate = "; ".join([*kept, text]) + (f"; {_more(rest)}" if rest else "")
            if len(head) + len(candidate) > FAILURE_MESSAGE_LIMIT:
                break
            kept.append(text)
        rest = total - len(kept)
        tail = f"; {_more(rest)}" if kept and rest else ""
        if not kept:
            # Not even the first error fits whole: cut it, leaving room to count the others.
            tail = f"; {_more(rest - 1)}" if rest > 1 else ""
            room = FAILURE_MESSAGE_LIMIT - len(head) - len(tail) - 1
            kept = [texts[0][: max(room, 0)] + "…"] if texts else [_more(rest)]
        return (head + "; ".join(kept) + tail)[:FAILURE_MESSAGE_LIMIT]


def _more(count: int) -> str:
    return f"and {count} more error{'s' if count != 1 else ''}"


class _Errors:
    """Keeps file-level errors always and per-line errors up to a cap, counting the overflow."""

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.file_level: list[DataError] = []
        self.per_line: list[DataError] = []
        self.omitted = 0

    def add(self, line: int, field: str | None, message: str) -> None:
        if len(self.per_line) < self.max_errors:
            self.per_line.append(DataError(line, field or None, message))
        else:
            self.omitted += 1

    def add_file_level(self, message: str) -> None:
        self.file_level.append(DataError(None, None, message))

    def all(self) -> list[DataError]:
        return self.file_level + self.per_line


def validate_file(
    path: Path,
    *,
    customization_type: str,
    limits: TokenLimits,
    count_tokens: Callable[[str], int],
    max_records: int,
    max_bytes: int,
    max_errors: int = 20,
    max_record_bytes: int | None = None,
) -> ValidationReport:
    """Validate a local JSONL file, streaming it; see the module docstring for what is checked.

    The size quota is checked from the file's size before any line is read, so an oversized
    upload fails at once. Lines are read through :func:`bounded_lines`, so one huge line costs
    no more memory than ``max_record_bytes`` (default :func:`record_byte_limit`).
    """
    record_limit = record_byte_limit(limits) if max_record_bytes is None else max_record_bytes
    size = path.stat().st_size
    if size > max_bytes:
        errors = _Errors(max_errors)
        errors.add_file_level(_size_message(f"is {size} bytes", max_bytes))
        return _report(errors, _initial_format(customization_type), bytes_read=size)
    with path.open("rb") as handle:
        return validate_lines(
            bounded_lines(handle, record_limit),
            customization_type=customization_type,
            limits=limits,
            count_tokens=count_tokens,
            max_records=max_records,
            max_bytes=max_bytes,
            max_errors=max_errors,
            file_name=path.name,
            max_record_bytes=record_limit,
        )


def validate_lines(
    lines: Iterable[bytes | OversizedLine],
    *,
    customization_type: str,
    limits: TokenLimits,
    count_tokens: Callable[[str], int],
    max_records: int,
    max_bytes: int,
    max_errors: int = 20,
    file_name: str | None = None,
    max_record_bytes: int | None = None,
) -> ValidationReport:
    """Validate JSONL given as raw lines (a binary file, an S3 body's ``iter_lines()``, a list).

    ``file_name`` appears in the messages about a record's size. Reading stops as soon as
    ``max_bytes`` is passed; past ``max_records`` lines are only counted. A line over
    ``max_record_bytes`` (default :func:`record_byte_limit`) is refused before it is decoded.
    """
    record_limit = record_byte_limit(limits) if max_record_bytes is None else max_record_bytes
    in_file = f" in file {file_name}" if file_name else ""
    if customization_type not in CUSTOMIZATION_TYPES:
        raise ValueError(f"unknown customization type {customization_type!r}")
    errors = _Errors(max_errors)
    fmt = _initial_format(customization_type)
    fmt_line: int | None = None
    totals = _Totals()
    record_lines = 0
    bytes_read = 0
    for number, raw in enumerate(lines, start=1):
        size = raw.size if isinstance(raw, OversizedLine) else len(raw)
        bytes_read += size
        if bytes_read > max_bytes:
            errors.add_file_level(_size_message(f"passes {max_bytes} bytes at line {number}", max_bytes))
            return _report(errors, fmt, bytes_read, totals)
        if isinstance(raw, OversizedLine) or size > record_limit:
            record_lines += 1
            errors.add(
                number,
                None,
                f"record{in_file} is {size} bytes, over the limit of {record_limit} bytes per record "
                f"(no record within {limits.max_total_tokens} tokens is longer); split it into smaller records",
            )
            continue
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.add(number, None, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8")
            record_lines += 1
            continue
        if not text.strip():
            errors.add(number, None, "blank line; JSONL allows none, so delete it")
            continue
        record_lines += 1
        if record_lines > max_records:
            continue  # Over the record quota: only count the rest, reported once below.
        try:
            obj = json.loads(text.rstrip("\r\n"))  # so the column is within this line
        except json.JSONDecodeError as exc:
            errors.add(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            errors.add(number, None, "invalid JSON: nested too deeply")
            continue
        surrogate = _lone_surrogate(obj)
        if surrogate is not None:
            field, code = surrogate
            errors.add(
                number,
                field,
                f"contains the escape \\u{code:04x}, half of a UTF-16 surrogate pair and not a character on its own; "
                "write the character itself, or a complete pair such as \\ud83d\\ude00",
            )
            continue
        try:
            shape = record_format(obj, customization_type)
            if fmt != FORMAT_UNKNOWN and shape != fmt:
                errors.add(
                    number,
                    None,
                    f"record is in {shape} format, but this file is in {fmt} format (set by line "
                    f"{fmt_line}); use one format per file",
                )
                continue
            record = parse_record(obj, customization_type, shape)
        except RecordError as exc:
            errors.add(number, exc.field, exc.message)
            continue
        if fmt == FORMAT_UNKNOWN:
            fmt, fmt_line = record.format, number
        if isinstance(record, PretrainingText):
            char_limit = limits.max_total_tokens * CHARS_PER_TOKEN
            if len(record.text) > char_limit:
                errors.add(
                    number,
                    "input",
                    f"Input size exceeded{in_file} for record starting with {_excerpt(record.text)}: "
                    f"{len(record.text)} characters, over the limit of {char_limit} "
                    f"({limits.max_total_tokens} tokens x {CHARS_PER_TOKEN} characters per token); "
                    "split the document into several records",
                )
                continue
        if isinstance(record, Preference):
            # Each answer trains after the prompt as its own sequence: the limits hold for the
            # longer one, and the totals count both sequences, which is what training processes.
            input_tokens = count_tokens(record.prompt_text())
            answer_tokens = (count_tokens(record.preferred), count_tokens(record.non_preferred))
            output_tokens = max(answer_tokens)
        else:
            input_text, output_text = record.input_output_text()
            input_tokens = count_tokens(input_text)
            output_tokens = count_tokens(output_text) if output_text else 0
        if not isinstance(record, PretrainingText):
            problems = _token_limit_problems(input_tokens, output_tokens, limits)
            for problem in problems:
                errors.add(number, None, problem)
            if problems:
                continue
        if isinstance(record, Preference):
            totals.add(2 * input_tokens, sum(answer_tokens), record_tokens=input_tokens + output_tokens)
        else:
            totals.add(input_tokens, output_tokens)

    if record_lines > max_records:
        errors.add_file_level(
            f"the file has {record_lines} records, over the limit of {max_records} records per "
            "file; use fewer records (the limit is a server quota setting)"
        )
    if record_lines == 0:
        errors.add_file_level(
            "the file has no records; write one JSON object per line"
            + (f", in {fmt} format" if fmt != FORMAT_UNKNOWN else "")
        )
    return _report(errors, fmt, bytes_read, totals)


def _lone_surrogate(value: object, path: str = "") -> tuple[str, int] | None:
    """The JSON path and code point of the first lone surrogate in a parsed line, else None.

    ``json.loads`` turns a ``\\ud800`` escape without its pair into a Python string that no UTF-8
    encoder, tokenizer or database accepts. Valid UTF-8 bytes cannot produce one, so an escape is
    the only way in, and this check catches it for every field (keys included) before anything
    else sees the string.
    """
    if isinstance(value, str):
        bad = next((ord(char) for char in value if 0xD800 <= ord(char) <= 0xDFFF), None)
        return None if bad is None else (path or "(record)", bad)
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            name = json.dumps(key)[1:-1] if _lone_surrogate(key) else key
            child = f"{path}.{name}" if path else name
            found = _lone_surrogate(key, child) or _lone_surrogate(item, child)
            if found:
                return found
    return None


def _token_limit_problems(input_tokens: int, output_tokens: int, limits: TokenLimits) -> list[str]:
    """Bedrock's messages, verbatim (reference section 5, "Documented failureMessage strings")."""
    problems = []
    if input_tokens > limits.max_input_tokens:
        problems.append(f"Maximum input token count {input_tokens} exceeds limit of {limits.max_input_tokens}")
    if output_tokens > limits.max_output_tokens:
        problems.append(f"Maximum output token count {output_tokens} exceeds limit of {limits.max_output_tokens}")
    total = input_tokens + output_tokens
    if total > limits.max_total_tokens:
        problems.append(
            f"Max sum of input and output token length {total} exceeds total limit of {limits.max_total_tokens}"
        )
    return problems


@dataclass
class _Totals:
    records: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    max_record_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int, record_tokens: int | None = None) -> None:
        """``record_tokens``: the longest sequence the record trains as, when that is not the sum
        (a preference pair trains as two sequences, prompt + each answer)."""
        self.records += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        longest = input_tokens + output_tokens if record_tokens is None else record_tokens
        self.max_record_tokens = max(self.max_record_tokens, longest)


def _initial_format(customization_type: str) -> str:
    """CPT and distillation have one format each; fine-tuning's comes from its first valid record."""
    if customization_type == CONTINUED_PRE_TRAINING:
        return FORMAT_PRETRAINING
    if customization_type in (DISTILLATION, REINFORCEMENT_FINE_TUNING):
        return FORMAT_CONVERSATION
    return FORMAT_UNKNOWN


def _report(errors: _Errors, fmt: str, bytes_read: int, totals: _Totals | None = None) -> ValidationReport:
    totals = totals or _Totals()
    return ValidationReport(
        errors=errors.all(),
        format=fmt,
        records=totals.records,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        total_tokens=totals.input_tokens + totals.output_tokens,
        max_record_tokens=totals.max_record_tokens,
        bytes=bytes_read,
        omitted_errors=errors.omitted,
    )


def _size_message(what: str, max_bytes: int) -> str:
    return (
        f"the file {what}, over the limit of {max_bytes} bytes; use a smaller file "
        "(the limit is a server quota setting)"
    )


def _excerpt(text: str) -> str:
    head = text[:_EXCERPT_CHARS]
    return json.dumps(head, ensure_ascii=False)[:-1] + ('..."' if len(text) > _EXCERPT_CHARS else '"')
