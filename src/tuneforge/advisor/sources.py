"""Read the data the advisor profiles, from ``s3://`` (the server's object store) or a local file.

One function for the API and the CLI, so both see the same records: a URI ending in ``/`` is a
prefix, and every ``.jsonl`` object under it is read, in name order (a documents folder).
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.advisor.profile import Example, read_examples
from tuneforge.errors import ValidationException
from tuneforge.storage import ObjectStore
from tuneforge.storage.store import StorageError


def read_source(store: ObjectStore, location: str, *, local_files: bool = False) -> list[Example]:
    """``local_files``: the CLI may also read local files and folders; the API edge may not."""
    try:
        if location.startswith("s3://"):
            if location.endswith("/"):
                keys = sorted(uri for uri in store.list(location) if uri.endswith(".jsonl"))
                if not keys:
                    raise ValidationException(f"{location}: no .jsonl objects under this prefix")
                return [example for key in keys for example in _read(store.read_bytes(key), key)]
            return _read(store.read_bytes(location), location)
        if not local_files:
            raise ValidationException(f"{location}: expected an s3:// URI")
        path = Path(location)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise ValidationException(f"{location}: no .jsonl files in this folder")
            return [example for file in files for example in _read(file.read_bytes(), str(file))]
        if not path.is_file():
            raise ValidationException(f"{location} does not exist")
        return _read(path.read_bytes(), location)
    except StorageError as exc:
        raise ValidationException(str(exc)) from None


def _read(data: bytes, name: str) -> list[Example]:
    try:
        return read_examples(data)
    except ValidationException as exc:
        raise ValidationException(f"{name}: {exc.message}") from None
