"""URIs -> bytes.

Callers speak only in URIs (``s3://bucket/key`` or, as an extension, an absolute local path) and
call :class:`ObjectStore` methods. In embedded mode ``s3://`` maps onto the local object root; a
real S3 endpoint can replace :class:`LocalObjectBackend` behind the same interface without
touching callers. Every resolution is confined to its configured root: ``..`` segments, symlinks
that leave the root and foreign schemes are refused with :class:`StorageError`.
"""

from tuneforge.storage.store import (
    LocalObjectBackend,
    ObjectStore,
    StorageError,
    parse_uri,
)

__all__ = ["LocalObjectBackend", "ObjectStore", "StorageError", "parse_uri"]
