"""Secret keys kept in the data directory: created once, shared by every process that uses it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def read_or_create_key(path: Path) -> bytes:
    """The key in ``path``, created (32 random bytes, mode 0600) on first use.

    Kept in the data directory so that what it signs stays valid across restarts and between the
    processes that share it. Created through a link from a private temporary file, so two processes
    starting at once agree on one key and neither reads a half-written file.
    """
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_bytes()
