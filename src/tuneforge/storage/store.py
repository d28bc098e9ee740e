from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tuneforge.settings import Settings

PRIVATE_FOLDERS = ("logs", "engines")
"""State folders under the data directory that hold logs and engine sockets/ports, never data."""
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


class StorageError(ValueError):
    """A URI that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    """'s3' or 'file' (an absolute local path)."""
    bucket: str
    key: str
    path: str
    """For 'file': the absolute path as given."""


def parse_uri(uri: str) -> ParsedUri:
    if not isinstance(uri, str) or not uri:
        raise StorageError("empty URI")
    if "\x00" in uri:
        raise StorageError(f"URI {uri!r} contains a NUL byte")
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not BUCKET_PATTERN.fullmatch(bucket):
            raise StorageError(f"invalid bucket name {bucket!r} in {uri}")
        if any(part in ("..", ".") for part in key.split("/")):
            raise StorageError(f"URI {uri} must not contain '.' or '..' segments")
        return ParsedUri("s3", bucket, key, "")
    if "://" in uri or uri.startswith("file:"):
        scheme = uri.split(":", 1)[0]
        raise StorageError(f"unsupported URI scheme '{scheme}' in {uri}: use s3://bucket/key or an absolute local path")
    if not os.path.isabs(uri):
        raise StorageError(f"local path {uri} must be absolute")
    if any(part == ".." for part in PurePosixPath(uri).parts):
        raise StorageError(f"local path {uri} must not contain '..' segments")
    return ParsedUri("file", "", "", uri)


class ObjectBackend(Protocol):
    """Where the bytes of one URI scheme live. The local backend below; real S3 later."""

    def local_path(self, uri: ParsedUri) -> Path: ...


def _confine(path: Path, root: Path, uri: str) -> Path:
    """Resolve symlinks and refuse anything that ends up outside ``root``.

    A symlink loop (``a -> b -> a``) makes ``resolve`` raise RuntimeError (OSError on newer
    Pythons); it is a bad URI like any other, so callers get a StorageError naming it.
    """
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError) as exc:
        raise StorageError(f"{uri} cannot be resolved: {exc}") from None
    root = root.resolve()
    if resolved != root and root not in resolved.parents:
        raise StorageError(f"{uri} resolves outside its storage root")
    return resolved


class LocalObjectBackend:
    """``s3://bucket/key`` -> ``<object_root>/<bucket>/<key>`` and confined absolute paths."""

    def __init__(self, object_root: Path, local_roots: list[Path], state_dir: Path | None = None) -> None:
        self.object_root = object_root.resolve()
        self.local_roots = [root.resolve() for root in local_roots]
        self.state_dir = state_dir.resolve() if state_dir is not None else None

    def local_path(self, uri: ParsedUri) -> Path:
        if uri.scheme == "s3":
            raw = f"s3://{uri.bucket}/{uri.key}"
            return _confine(self.object_root / uri.bucket / uri.key, self.object_root, raw)
        candidate = Path(uri.path)
        for root in self.local_roots:
            try:
                path = _confine(candidate, root, uri.path)
            except StorageError:
                continue
            if self.is_private_state(path):
                raise StorageError(f"local path {uri.path} is one of tuneforge's own state files, not data")
            return path
        raise StorageError(
            f"local path {uri.path} is outside the allowed roots "
            f"({', '.join(str(r) for r in self.local_roots)}); add its folder to TUNEFORGE_LOCAL_ROOTS"
        )

    def is_private_state(self, path: Path) -> bool:
        """The database, its WAL, the signing keys, logs and engine files: the data directory is an
        allowed root (users keep model folders in it), but these are never training data or output."""
        if self.state_dir is None:
            return False
        if path.parent == self.state_dir and (path.name.startswith("tuneforge.db") or path.suffix == ".key"):
            return True
        return any(path == self.state_dir / name or self.state_dir / name in path.parents for name in PRIVATE_FOLDERS)


class ObjectStore:
    """The one storage interface callers use."""

    def __init__(self, backend: LocalObjectBackend) -> None:
        self.backend = backend

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(LocalObjectBackend(settings.objects_dir, settings.allowed_local_roots, settings.data_dir))

    def check(self, uri: str) -> None:
        """Validate a URI without touching it (used on the API edge)."""
        self.path(uri)

    def path(self, uri: str) -> Path:
        return self.backend.local_path(parse_uri(uri))

    def exists(self, uri: str) -> bool:
        return self.path(uri).is_file()

    def size(self, uri: str) -> int:
        path = self.path(uri)
        if not path.is_file():
            raise StorageError(f"{uri} does not exist")
        return path.stat().st_size

    def read_bytes(self, uri: str) -> bytes:
        path = self.path(uri)
        if not path.is_file():
            raise StorageError(f"{uri} does not exist")
        return path.read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = self.path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def upload_file(self, local: Path, uri: str) -> None:
        path = self.path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, path)

    def download_file(self, uri: str, local: Path) -> None:
        source = self.path(uri)
        if not source.is_file():
            raise StorageError(f"{uri} does not exist")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, local)

    def upload_tree(self, local_dir: Path, prefix_uri: str) -> list[str]:
        """Copy every file under ``local_dir`` to ``prefix_uri``; returns the URIs written."""
        written = []
        base = prefix_uri.rstrip("/")
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            uri = f"{base}/{file.relative_to(local_dir).as_posix()}"
            self.upload_file(file, uri)
            written.append(uri)
        return written

    def download_tree(self, prefix_uri: str, local_dir: Path) -> None:
        root = self.path(prefix_uri.rstrip("/"))
        if not root.is_dir():
            raise StorageError(f"{prefix_uri} holds no objects")
        for uri in self.list(prefix_uri):
            self.download_file(uri, local_dir / uri[len(prefix_uri.rstrip("/")) + 1 :])

    def list(self, prefix_uri: str) -> Iterator[str]:
        root = self.path(prefix_uri.rstrip("/"))
        if root.is_file():
            yield prefix_uri
            return
        if not root.is_dir():
            return
        base = prefix_uri.rstrip("/")
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            uri = f"{base}/{file.relative_to(root).as_posix()}"
            self.path(uri)  # refuses a symlink that leaves the root
            yield uri

    def delete_prefix(self, prefix_uri: str) -> None:
        root = self.path(prefix_uri.rstrip("/"))
        if root.is_dir():
            shutil.rmtree(root)
        elif root.exists():
            root.unlink()
