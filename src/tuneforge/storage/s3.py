"""The S3 backend: ``s3://`` URIs on a real S3 endpoint (or an S3-compatible server), through boto3.

The client comes from the usual AWS configuration chain: ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, credentials from the environment,
``~/.aws`` or an instance role. botocore retries in its ``standard`` mode up to
``TUNEFORGE_S3_MAX_ATTEMPTS`` attempts; files past ``TUNEFORGE_S3_MULTIPART_BYTES`` go up and down
in parts through boto3's transfer manager. Every failure becomes a :class:`StorageError` whose
message says what went wrong in words a job's failure reason can carry.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from tuneforge.settings import Settings
from tuneforge.storage.store import (
    AtomicWriter,
    EndpointUnreachable,
    Manifest,
    ObjectInfo,
    ObjectMissing,
    ParsedUri,
    StorageError,
)

UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class _BodyReader(io.RawIOBase):
    """get_object's streaming body as a raw file, so :class:`io.BufferedReader` can add ``readline``."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3ObjectBackend:
    """``s3://bucket/key`` on S3. Keys are plain names here: no local path is ever involved except
    the temporary file an :class:`AtomicWriter` fills before its single upload."""

    def __init__(self, settings: Settings) -> None:
        session = boto3.session.Session()
        self.max_attempts = settings.s3_max_attempts
        config = Config(
            retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
            connect_timeout=settings.s3_timeout_seconds,
            read_timeout=settings.s3_timeout_seconds,
        )
        self.client: Any = session.client("s3", region_name=session.region_name or settings.region, config=config)
        self.endpoint = str(self.client.meta.endpoint_url)
        self.transfer = TransferConfig(
            multipart_threshold=settings.s3_multipart_bytes, multipart_chunksize=settings.s3_multipart_bytes
        )
        self.spool_dir = settings.data_dir / "cache" / "uploads"

    @contextmanager
    def _errors(self, parsed: ParsedUri, uri: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, parsed, uri) from None
        except S3UploadFailedError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError):
                raise self._client_error(cause, parsed, uri) from None
            if isinstance(cause, UNREACHABLE):
                raise self._unreachable(cause) from None
            raise StorageError(f"{uri}: the upload failed: {exc}") from None
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from None
        except NoCredentialsError:
            raise StorageError(
                f"{uri}: no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws or a role)"
            ) from None
        except BotoCoreError as exc:
            raise StorageError(f"{uri}: S3 request failed: {exc}") from None

    def _unreachable(self, exc: Exception) -> StorageError:
        return EndpointUnreachable(
            f"the S3 endpoint {self.endpoint} is unreachable after {self.max_attempts} attempts "
            f"(TUNEFORGE_S3_MAX_ATTEMPTS): {exc}"
        )

    def _client_error(self, exc: ClientError, parsed: ParsedUri, uri: str) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: the bucket {parsed.bucket} does not exist at {self.endpoint}")
        if code in DENIED_CODES:
            return StorageError(f"{uri}: access denied by {self.endpoint} ({code})")
        if code in MISSING_CODES:
            return StorageError(f"{uri} does not exist")
        return StorageError(f"{uri}: S3 error {code}: {error.get('Message', exc)}")

    def check(self, parsed: ParsedUri, uri: str) -> None:
        """Nothing beyond :func:`parse_uri`: the edge never waits on the network."""

    def open_read(self, parsed: ParsedUri, uri: str) -> BinaryIO:
        with self._errors(parsed, uri):
            body = self.client.get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"]
        return cast(BinaryIO, io.BufferedReader(_BodyReader(body), 1 << 20))

    def open_write(self, parsed: ParsedUri, uri: str) -> AtomicWriter:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.spool_dir / uuid.uuid4().hex
        return AtomicWriter(tmp, lambda written: self.upload_file(written, parsed, uri))

    def info(self, parsed: ParsedUri, uri: str) -> ObjectInfo | None:
        if not parsed.key or parsed.key.endswith("/"):
            return None
        try:
            with self._errors(parsed, uri):
                head = self.client.head_object(Bucket=parsed.bucket, Key=parsed.key)
        except StorageError as exc:
            if str(exc) == f"{uri} does not exist":
                return None
            raise
        return ObjectInfo(uri, int(head["ContentLength"]), str(head.get("ETag", "")))

    def list(self, parsed: ParsedUri, uri: str) -> Iterator[ObjectInfo]:
        """Folder semantics, as on the local root: the object itself, else the keys under ``key/``."""
        key = parsed.key.rstrip("/")
        base = uri.rstrip("/")
        if key:
            single = self.info(ParsedUri("s3", parsed.bucket, key, ""), base)
            if single is not None:
                yield ObjectInfo(uri, single.size, single.version)
                return
        prefix = f"{key}/" if key else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors(parsed, uri):
            for page in paginator.paginate(Bucket=parsed.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    name = str(item["Key"])
                    if name.endswith("/"):
                        continue
                    child = f"{base}/{name[len(prefix) :]}" if key else f"s3://{parsed.bucket}/{name}"
                    yield ObjectInfo(child, int(item["Size"]), str(item.get("ETag", "")))

    def copy(self, source: ParsedUri, source_uri: str, target: ParsedUri, target_uri: str) -> None:
        with self._errors(source, f"{source_uri} -> {target_uri}"):
            self.client.copy(
                {"Bucket": source.bucket, "Key": source.key}, target.bucket, target.key, Config=self.transfer
            )

    def delete_prefix(self, parsed: ParsedUri, uri: str) -> None:
        names = [info.uri.removeprefix(f"s3://{parsed.bucket}/") for info in self.list(parsed, uri)]
        with self._errors(parsed, uri):
            for start in range(0, len(names), 1000):
                batch = [{"Key": name} for name in names[start : start + 1000]]
                self.client.delete_objects(Bucket=parsed.bucket, Delete={"Objects": batch, "Quiet": True})

    def upload_file(self, local: Path, parsed: ParsedUri, uri: str) -> None:
        """One PUT, or a multipart upload past the threshold: either way the object appears whole."""
        with self._errors(parsed, uri):
            self.client.upload_file(str(local), parsed.bucket, parsed.key, Config=self.transfer)

    def download_file(self, parsed: ParsedUri, uri: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            with self._errors(parsed, uri):
                self.client.download_file(parsed.bucket, parsed.key, str(tmp), Config=self.transfer)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def manifest(self, parsed: ParsedUri, uri: str) -> tuple[str, Manifest] | None:
        infos = list(self.list(parsed, uri.rstrip("/")))
        if not infos:
            return None
        if infos[0].uri == uri.rstrip("/"):
            return "object", [(parsed.key.rsplit("/", 1)[-1], infos[0].size, infos[0].version)]
        base = uri.rstrip("/")
        return "tree", sorted((info.uri[len(base) + 1 :], info.size, info.version) for info in infos)

    def stage(self, parsed: ParsedUri, uri: str, target: Path) -> None:
        found = self.manifest(parsed, uri)
        if found is None:
            raise ObjectMissing(f"nothing exists at {uri}")
        kind, entries = found
        base = uri.rstrip("/")
        if kind == "object":
            self.download_file(parsed, uri, target / entries[0][0])
            return
        key = parsed.key.rstrip("/")
        for name, _, _ in entries:
            child = ParsedUri("s3", parsed.bucket, f"{key}/{name}" if key else name, "")
            self.download_file(child, f"{base}/{name}", target / name)
