"""URIs -> bytes.

Callers speak only in URIs (``s3://bucket/key`` or, as an extension, an absolute local path) and
call :class:`ObjectStore` methods, which stream (``open_read``/``open_write``) or stage copies into
folders of the caller's own; no caller receives a path into the store. ``s3://`` maps onto the local
object root by default, or onto a real S3 endpoint (:mod:`tuneforge.storage.s3`, boto3) with
``TUNEFORGE_OBJECT_STORE=s3``. Every local resolution is confined to its configured root: ``..``
segments, symlinks that leave the root and foreign schemes are refused with :class:`StorageError`.
"""

from tuneforge.storage.store import (
    AtomicWriter,
    EndpointUnreachable,
    LocalObjectBackend,
    ObjectInfo,
    ObjectMissing,
    ObjectStore,
    StorageError,
    parse_uri,
)

__all__ = [
    "AtomicWriter",
    "EndpointUnreachable",
    "LocalObjectBackend",
    "ObjectInfo",
    "ObjectMissing",
    "ObjectStore",
    "StorageError",
    "parse_uri",
]
