from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Protocol

from tuneforge.settings import Settings

PRIVATE_FOLDERS = ("logs", "engines")
"""State folders under the data directory that hold logs and engine sockets/ports, never data."""
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
Manifest = list[tuple[str, int, str]]
"""(relative name, size, version) of every file of an object or a folder: what a cached copy was made from."""


class StorageError(ValueError):
    """A URI that cannot be used; the message says which and why."""


class EndpointUnreachable(StorageError):
    """The object store's endpoint did not answer within its retry budget; the message names it."""


class ObjectMissing(StorageError):
    """Nothing, neither an object nor a folder of them, exists at a URI."""


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    """'s3' or 'file' (an absolute local path)."""
    bucket: str
    key: str
    path: str
    """For 'file': the absolute path as given."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    version: str
    """Changes whenever the bytes may have: the ETag on S3, mtime and size locally."""


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


class AtomicWriter:
    """A binary file to write an object through: the object appears whole on :meth:`close`, or never.

    The bytes go to a local temporary file first; ``commit`` publishes it (a rename on the local
    root, an upload on S3). Leaving a ``with`` block by an exception, or :meth:`abort`, discards
    them, so a failed or cut-short write never leaves half an object under the URI.
    """

    def __init__(self, tmp: Path, commit: Callable[[Path], None]) -> None:
        self._tmp = tmp
        self._commit = commit
        self._handle = tmp.open("wb")
        self.closed = False

    def write(self, data: bytes) -> int:
        return self._handle.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._handle.close()
        try:
            self._commit(self._tmp)
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._handle.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class ObjectBackend(Protocol):
    """Where the bytes of ``s3://`` URIs live: the local object root, or a real S3 endpoint.

    Every method gets the parsed URI and the URI as the caller spelled it (for messages and for the
    URIs :meth:`list` yields, which keep the caller's spelling of the prefix).
    """

    def check(self, parsed: ParsedUri, uri: str) -> None: ...

    def open_read(self, parsed: ParsedUri, uri: str) -> BinaryIO: ...

    def open_write(self, parsed: ParsedUri, uri: str) -> AtomicWriter: ...

    def info(self, parsed: ParsedUri, uri: str) -> ObjectInfo | None: ...

    def list(self, parsed: ParsedUri, uri: str) -> Iterator[ObjectInfo]: ...

    def copy(self, source: ParsedUri, source_uri: str, target: ParsedUri, target_uri: str) -> None: ...

    def delete_prefix(self, parsed: ParsedUri, uri: str) -> None: ...

    def upload_file(self, local: Path, parsed: ParsedUri, uri: str) -> None: ...

    def download_file(self, parsed: ParsedUri, uri: str, local: Path) -> None: ...

    def manifest(self, parsed: ParsedUri, uri: str) -> tuple[str, Manifest] | None: ...

    def stage(self, parsed: ParsedUri, uri: str, target: Path) -> None: ...


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


def _local_version(path: Path) -> tuple[int, str]:
    stat = path.lstat()
    target = os.readlink(path) if path.is_symlink() else ""
    return stat.st_size, f"{stat.st_mtime_ns}:{stat.st_size}:{target}"


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class LocalObjectBackend:
    """``s3://bucket/key`` -> ``<object_root>/<bucket>/<key>`` and confined absolute paths.

    The only backend that knows local paths; it keeps them to itself.
    """

    def __init__(self, object_root: Path, local_roots: list[Path], state_dir: Path | None = None) -> None:
        self.object_root = object_root.resolve()
        self.local_roots = [root.resolve() for root in local_roots]
        self.state_dir = state_dir.resolve() if state_dir is not None else None

    def resolve(self, uri: ParsedUri) -> Path:
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

    def _file(self, parsed: ParsedUri, uri: str) -> Path:
        path = self.resolve(parsed)
        if not path.is_file():
            raise StorageError(f"{uri} does not exist")
        return path

    def check(self, parsed: ParsedUri, uri: str) -> None:
        self.resolve(parsed)

    def open_read(self, parsed: ParsedUri, uri: str) -> BinaryIO:
        return self._file(parsed, uri).open("rb")

    def open_write(self, parsed: ParsedUri, uri: str) -> AtomicWriter:
        path = self.resolve(parsed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return AtomicWriter(tmp, lambda written: os.replace(written, path))

    def info(self, parsed: ParsedUri, uri: str) -> ObjectInfo | None:
        path = self.resolve(parsed)
        if not path.is_file():
            return None
        stat = path.stat()
        return ObjectInfo(uri, stat.st_size, f"{stat.st_mtime_ns}:{stat.st_size}")

    def list(self, parsed: ParsedUri, uri: str) -> Iterator[ObjectInfo]:
        root = self.resolve(parsed)
        if root.is_file():
            info = self.info(parsed, uri)
            if info is not None:
                yield info
            return
        if not root.is_dir():
            return
        base = uri.rstrip("/")
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            child = f"{base}/{file.relative_to(root).as_posix()}"
            info = self.info(parse_uri(child), child)  # refuses a symlink that leaves the root
            if info is not None:
                yield info

    def copy(self, source: ParsedUri, source_uri: str, target: ParsedUri, target_uri: str) -> None:
        self.upload_file(self._file(source, source_uri), target, target_uri)

    def delete_prefix(self, parsed: ParsedUri, uri: str) -> None:
        root = self.resolve(parsed)
        if root.is_dir():
            shutil.rmtree(root)
        elif root.exists():
            root.unlink()

    def upload_file(self, local: Path, parsed: ParsedUri, uri: str) -> None:
        with self.open_write(parsed, uri) as out, local.open("rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)

    def download_file(self, parsed: ParsedUri, uri: str, local: Path) -> None:
        source = self._file(parsed, uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, local)

    def manifest(self, parsed: ParsedUri, uri: str) -> tuple[str, Manifest] | None:
        """Symbolic links are listed, not followed: a staged copy keeps them as links, so the checks
        that refuse links inside a model folder (imports) see them as they are."""
        path = self.resolve(parsed)
        if path.is_file():
            return "object", [(path.name, *_local_version(path))]
        if not path.is_dir():
            return None
        entries: Manifest = []
        for directory, subdirs, files in os.walk(path, followlinks=False):
            for name in sorted(subdirs + files):
                entry = Path(directory) / name
                if entry.is_symlink() or entry.is_file():
                    entries.append((entry.relative_to(path).as_posix(), *_local_version(entry)))
        return "tree", sorted(entries)

    def stage(self, parsed: ParsedUri, uri: str, target: Path) -> None:
        """Hard links where the cache shares the source's file system (no bytes copied: a model
        folder, or a sparse file whose header says 1 TiB, stages at once), copies elsewhere."""
        path = self.resolve(parsed)
        if path.is_file():
            target.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, target / path.name)
        else:
            shutil.copytree(path, target, symlinks=True, copy_function=_link_or_copy)


class ObjectStore:
    """The one storage interface callers use: URIs in, streams and staged copies out.

    ``s3://`` URIs go to the configured backend (the local object root, or real S3); absolute
    local paths are an extension the local backend always serves. No caller gets a path into the
    store: readers stream (:meth:`open_read`) or stage a copy into a folder of their own
    (:meth:`download_file`, :meth:`download_tree`, :meth:`cached`).
    """

    def __init__(self, backend: LocalObjectBackend, remote: ObjectBackend | None = None, cache_dir: Path | None = None):
        self.backend = backend
        self.remote = remote
        self._cache_dir = cache_dir

    @property
    def cache_dir(self) -> Path:
        """``<data_dir>/cache`` from settings; a store built without one gets a private temporary
        folder on first use, never a shared, guessable one."""
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix="tuneforge-cache-"))
        return self._cache_dir

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        local = LocalObjectBackend(settings.objects_dir, settings.allowed_local_roots, settings.data_dir)
        remote: ObjectBackend | None = None
        if settings.object_store == "s3":
            from tuneforge.storage.s3 import S3ObjectBackend

            remote = S3ObjectBackend(settings)
        return cls(local, remote, settings.data_dir / "cache")

    def _route(self, uri: str) -> tuple[ObjectBackend, ParsedUri]:
        parsed = parse_uri(uri)
        if parsed.scheme == "s3" and self.remote is not None:
            return self.remote, parsed
        return self.backend, parsed

    def check(self, uri: str) -> None:
        """Validate a URI without touching its bytes (used on the API edge; no network call)."""
        backend, parsed = self._route(uri)
        backend.check(parsed, uri)

    def is_local_file(self, uri: str) -> bool:
        """Whether ``uri`` is an absolute local path (the local backend's extension), not an object."""
        return parse_uri(uri).scheme == "file"

    def open_read(self, uri: str) -> BinaryIO:
        """A binary file that streams the object; StorageError when it does not exist."""
        backend, parsed = self._route(uri)
        return backend.open_read(parsed, uri)

    def open_write(self, uri: str) -> AtomicWriter:
        backend, parsed = self._route(uri)
        return backend.open_write(parsed, uri)

    def info(self, uri: str) -> ObjectInfo | None:
        backend, parsed = self._route(uri)
        return backend.info(parsed, uri)

    def exists(self, uri: str) -> bool:
        return self.info(uri) is not None

    def size(self, uri: str) -> int:
        info = self.info(uri)
        if info is None:
            raise StorageError(f"{uri} does not exist")
        return info.size

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as handle:
            return handle.read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open_write(uri) as out:
            out.write(data)

    def upload_file(self, local: Path, uri: str) -> None:
        backend, parsed = self._route(uri)
        backend.upload_file(local, parsed, uri)

    def download_file(self, uri: str, local: Path) -> None:
        backend, parsed = self._route(uri)
        backend.download_file(parsed, uri, local)

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
        base = prefix_uri.rstrip("/")
        children = [uri for uri in self.list(base) if uri != base]
        if not children:
            raise StorageError(f"{prefix_uri} holds no objects")
        for uri in children:
            self.download_file(uri, local_dir / uri[len(base) + 1 :])

    def list(self, prefix_uri: str) -> Iterator[str]:
        """The object itself, or every object under the folder ``prefix_uri`` (``run1`` never lists ``run10``)."""
        return (info.uri for info in self.list_info(prefix_uri))

    def list_info(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        backend, parsed = self._route(prefix_uri.rstrip("/"))
        return backend.list(parsed, prefix_uri)

    def copy(self, source_uri: str, target_uri: str) -> None:
        """Server-side on one backend; streamed through this process between two."""
        source, source_parsed = self._route(source_uri)
        target, target_parsed = self._route(target_uri)
        if source is target:
            source.copy(source_parsed, source_uri, target_parsed, target_uri)
            return
        with source.open_read(source_parsed, source_uri) as reader, target.open_write(target_parsed, target_uri) as out:
            shutil.copyfileobj(reader, out, 1 << 20)

    def delete(self, uri: str) -> None:
        """Delete one object (nothing when there is none); a folder goes only through :meth:`delete_prefix`."""
        if self.exists(uri):
            self.delete_prefix(uri)

    def delete_prefix(self, prefix_uri: str) -> None:
        backend, parsed = self._route(prefix_uri.rstrip("/"))
        backend.delete_prefix(parsed, prefix_uri.rstrip("/"))

    def cached(self, uri: str) -> Path:
        """A local copy of the object or folder at ``uri`` in the cache folder, made again when it changed.

        For callers that need a real folder (a model's files for the catalog's checks, an import, an
        engine), and only to read: on the local root the copy is hard links to the same files. A
        manifest of names, sizes and versions decides whether the last copy is still current; copies
        are made in a temporary folder and renamed into place under a lock, so two processes never
        see half a copy.
        """
        backend, parsed = self._route(uri.rstrip("/") or uri)
        found = backend.manifest(parsed, uri)
        if found is None:
            raise ObjectMissing(f"nothing exists at {uri}")
        kind, manifest = found
        slot = self.cache_dir / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
        slot.mkdir(parents=True, exist_ok=True)
        content = slot / "content"
        result = content / manifest[0][0] if kind == "object" else content
        wanted = json.dumps([kind, manifest])
        with (slot / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = slot / "manifest.json"
            if content.exists() and record.is_file() and record.read_text() == wanted:
                return result
            staging = slot / f".staging-{uuid.uuid4().hex}"
            try:
                backend.stage(parsed, uri, staging)
                if content.exists():
                    old = slot / f".old-{uuid.uuid4().hex}"
                    content.rename(old)
                    shutil.rmtree(old, ignore_errors=True)
                staging.rename(content)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            record.write_text(wanted)
        return result
