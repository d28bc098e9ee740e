"""JSONL lines as every reader here splits them: at ``"\\n"`` only, each line strict UTF-8.

``str.splitlines`` also splits at U+2028, U+2029, U+0085, ``\\x1c``-``\\x1e`` and others, which a
JSON string may hold raw (``json.dumps(..., ensure_ascii=False)`` writes them so): it cut valid
records in two invalid halves. Splitting the bytes at ``b"\\n"`` is safe in UTF-8 (the byte never
occurs inside a multi-byte character), and decoding each line on its own lets a reader name the
line that is not UTF-8 instead of replacing its bytes with U+FFFD and reading altered text.
Pre-flight validation (:func:`tuneforge.data.validate.validate_lines`) reads the same way.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class JsonlLine:
    number: int
    """1-based, counting blank lines too, so it is the line an editor shows."""
    text: str
    """The decoded line without its ``"\\n"`` (a trailing ``"\\r"`` stays: JSON ignores it); empty when undecodable."""
    error: str | None = None
    """Why the line could not be decoded, for the reader's own message."""


def jsonl_lines(content: bytes) -> Iterator[JsonlLine]:
    """Every line of ``content`` (a UTF-8 byte order mark before the first is dropped)."""
    if content.startswith(codecs.BOM_UTF8):
        content = content[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(content.split(b"\n"), start=1):
        try:
            yield JsonlLine(number, raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield JsonlLine(number, "", f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8")
