from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.moto_s3 import MotoS3
from tuneforge.settings import Settings
from tuneforge.storage import LocalObjectBackend, ObjectStore, StorageError, parse_uri
from tuneforge.storage.s3 import S3ObjectBackend


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    objects = tmp_path / "objects"
    local = tmp_path / "local"
    objects.mkdir()
    local.mkdir()
    return objects, local


@pytest.fixture
def store(roots: tuple[Path, Path], tmp_path: Path) -> ObjectStore:
    objects, local = roots
    return ObjectStore(LocalObjectBackend(objects, [local]), cache_dir=tmp_path / "cache")


@pytest.fixture(scope="module")
def s3_backend(moto_server: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ObjectBackend]:
    """One S3 backend (one boto3 client) for the module, pointed at moto by the AWS chain's variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in moto_server.environment().items():
            patch.setenv(name, value)
        yield S3ObjectBackend(s3_settings(tmp_path_factory.mktemp("s3")))


def s3_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, object_store="s3", s3_max_attempts=2, **overrides)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, roots: tuple[Path, Path], tmp_path: Path) -> ObjectStore:
    """The same store interface over the local object root, or over S3 (moto's server on loopback)."""
    objects, local = roots
    if request.param == "local":
        return ObjectStore(LocalObjectBackend(objects, [local]), cache_dir=tmp_path / "cache")
    return s3_store(request.getfixturevalue("moto_server"), request.getfixturevalue("s3_backend"), roots, tmp_path)


def s3_store(moto: MotoS3, backend: S3ObjectBackend, roots: tuple[Path, Path], tmp_path: Path) -> ObjectStore:
    """An empty moto with the bucket ``bkt``; absolute local paths still go to the local backend."""
    moto.reset()
    backend.client.create_bucket(Bucket="bkt")
    return ObjectStore(LocalObjectBackend(roots[0], [roots[1]]), backend, tmp_path / "cache")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to, not inside, the storage roots, holding a file nobody may reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret").write_bytes(b"top secret")
    return folder


# -- parse_uri ---------------------------------------------------------------------------------


def test_parse_uri_splits_s3_uri_into_bucket_and_key() -> None:
    parsed = parse_uri("s3://my-bucket.v2/data/train.jsonl")
    assert (parsed.scheme, parsed.bucket, parsed.key) == ("s3", "my-bucket.v2", "data/train.jsonl")


def test_parse_uri_accepts_absolute_local_path() -> None:
    parsed = parse_uri("/srv/data/train.jsonl")
    assert (parsed.scheme, parsed.path) == ("file", "/srv/data/train.jsonl")


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/../../etc/passwd", "s3://bucket/a/../b", "s3://bucket/a/./b", "s3://bucket/.", "s3://bucket/.."],
)
def test_parse_uri_refuses_dot_segments_in_s3_keys(uri: str) -> None:
    with pytest.raises(StorageError, match=r"must not contain '\.' or '\.\.' segments"):
        parse_uri(uri)


def test_parse_uri_refuses_dot_dot_in_local_path() -> None:
    with pytest.raises(StorageError, match=r"must not contain '\.\.' segments"):
        parse_uri("/srv/data/../../etc/passwd")


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [("file:///etc/passwd", "file"), ("http://x", "http"), ("https://x/y", "https"), ("gs://bucket/k", "gs")],
)
def test_parse_uri_refuses_foreign_scheme_naming_it(uri: str, scheme: str) -> None:
    with pytest.raises(StorageError, match=f"unsupported URI scheme '{scheme}'"):
        parse_uri(uri)


def test_parse_uri_refuses_relative_local_path() -> None:
    with pytest.raises(StorageError, match="must be absolute"):
        parse_uri("data/train.jsonl")


@pytest.mark.parametrize("uri", ["s3://bucket/a\x00b", "/srv/data\x00/x"])
def test_parse_uri_refuses_nul_byte(uri: str) -> None:
    with pytest.raises(StorageError, match="NUL byte"):
        parse_uri(uri)


def test_parse_uri_refuses_empty_uri() -> None:
    with pytest.raises(StorageError, match="empty URI"):
        parse_uri("")


@pytest.mark.parametrize(
    "bucket",
    ["", "ab", "Bucket", "bucket_name", "-bucket", "bucket-", ".bucket", "a" * 64, "bu cket"],
)
def test_parse_uri_refuses_invalid_bucket_names(bucket: str) -> None:
    with pytest.raises(StorageError, match="invalid bucket name"):
        parse_uri(f"s3://{bucket}/key")


@pytest.mark.parametrize("bucket", ["abc", "a" * 63, "my.bucket-1"])
def test_parse_uri_accepts_bucket_names_at_the_length_limits(bucket: str) -> None:
    assert parse_uri(f"s3://{bucket}/key").bucket == bucket


# -- ObjectStore over s3:// ----------------------------------------------------------------------


def test_write_read_exists_size_round_trip(any_store: ObjectStore) -> None:
    uri = "s3://bkt/dir/obj.bin"
    assert not any_store.exists(uri)
    any_store.write_bytes(uri, b"hello\x00world")
    assert any_store.exists(uri)
    assert any_store.size(uri) == 11
    assert any_store.read_bytes(uri) == b"hello\x00world"


def test_s3_uri_maps_onto_bucket_folder_under_object_root(store: ObjectStore, roots: tuple[Path, Path]) -> None:
    store.write_bytes("s3://bkt/a/b.txt", b"x")
    assert (roots[0] / "bkt" / "a" / "b.txt").read_bytes() == b"x"


def test_write_overwrites_existing_object(any_store: ObjectStore) -> None:
    any_store.write_bytes("s3://bkt/obj", b"old content")
    any_store.write_bytes("s3://bkt/obj", b"new")
    assert any_store.read_bytes("s3://bkt/obj") == b"new"


@pytest.mark.parametrize("operation", ["read_bytes", "size"])
def test_reading_missing_object_raises_storage_error(any_store: ObjectStore, operation: str) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        getattr(any_store, operation)("s3://bkt/missing")


def test_upload_file_then_download_file_round_trips(any_store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "src.jsonl"
    source.write_bytes(b'{"prompt": "a", "completion": "b"}\n')
    any_store.upload_file(source, "s3://bkt/in/train.jsonl")
    target = tmp_path / "fresh" / "nested" / "copy.jsonl"
    any_store.download_file("s3://bkt/in/train.jsonl", target)
    assert target.read_bytes() == source.read_bytes()


def test_download_file_of_missing_object_raises_storage_error(any_store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        any_store.download_file("s3://bkt/nothing", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {"config.json": b"{}", "weights/a.safetensors": b"AAAA", "weights/deep/b.bin": b"BB"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_upload_tree_list_download_tree_round_trip(any_store: ObjectStore, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "model")
    written = any_store.upload_tree(tmp_path / "model", "s3://bkt/models/m1/")
    expected = sorted(f"s3://bkt/models/m1/{rel}" for rel in files)
    assert written == expected
    assert list(any_store.list("s3://bkt/models/m1")) == expected
    assert list(any_store.list("s3://bkt/models/m1/")) == expected

    any_store.download_tree("s3://bkt/models/m1", tmp_path / "back")
    back = tmp_path / "back"
    assert {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files


def test_list_of_single_object_yields_that_object(any_store: ObjectStore) -> None:
    any_store.write_bytes("s3://bkt/one.txt", b"1")
    assert list(any_store.list("s3://bkt/one.txt")) == ["s3://bkt/one.txt"]


def test_list_of_missing_prefix_is_empty(any_store: ObjectStore) -> None:
    assert list(any_store.list("s3://bkt/nothing/here")) == []


def test_download_tree_of_missing_prefix_raises_storage_error(any_store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="holds no objects"):
        any_store.download_tree("s3://bkt/nothing", tmp_path / "dst")


def test_delete_prefix_removes_tree_but_not_sibling_with_same_string_prefix(
    any_store: ObjectStore, tmp_path: Path
) -> None:
    _make_tree(tmp_path / "model")
    any_store.upload_tree(tmp_path / "model", "s3://bkt/run1")
    any_store.write_bytes("s3://bkt/run10/keep.txt", b"keep")
    any_store.delete_prefix("s3://bkt/run1/")
    assert list(any_store.list("s3://bkt/run1")) == []
    assert any_store.read_bytes("s3://bkt/run10/keep.txt") == b"keep"


def test_delete_prefix_removes_single_object(any_store: ObjectStore) -> None:
    any_store.write_bytes("s3://bkt/single", b"1")
    any_store.delete_prefix("s3://bkt/single")
    assert not any_store.exists("s3://bkt/single")


# -- atomic writes -----------------------------------------------------------------------------


def test_write_bytes_leaves_no_temporary_file(store: ObjectStore, roots: tuple[Path, Path]) -> None:
    store.write_bytes("s3://bkt/d/obj", b"1")
    store.write_bytes("s3://bkt/d/obj", b"2")
    assert [p.name for p in (roots[0] / "bkt" / "d").iterdir()] == ["obj"]


def test_upload_file_leaves_no_temporary_file(store: ObjectStore, roots: tuple[Path, Path], tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"data")
    store.upload_file(source, "s3://bkt/d/obj")
    assert [p.name for p in (roots[0] / "bkt" / "d").iterdir()] == ["obj"]


def test_write_bytes_replaces_the_file_instead_of_truncating_it_in_place(
    store: ObjectStore, roots: tuple[Path, Path]
) -> None:
    """A reader holding the old object open keeps seeing complete old bytes (rename, not rewrite)."""
    store.write_bytes("s3://bkt/obj", b"old complete content")
    with (roots[0] / "bkt" / "obj").open("rb") as reader:
        store.write_bytes("s3://bkt/obj", b"new")
        assert reader.read() == b"old complete content"
    assert store.read_bytes("s3://bkt/obj") == b"new"


# -- confinement -------------------------------------------------------------------------------


def test_symlink_in_object_root_to_outside_folder_is_refused(
    store: ObjectStore, roots: tuple[Path, Path], outside: Path
) -> None:
    (roots[0] / "bkt").mkdir()
    os.symlink(outside, roots[0] / "bkt" / "link")
    with pytest.raises(StorageError, match="outside its storage root"):
        store.read_bytes("s3://bkt/link/secret")
    with pytest.raises(StorageError, match="outside its storage root"):
        store.write_bytes("s3://bkt/link/secret", b"overwritten")
    assert (outside / "secret").read_bytes() == b"top secret"


def test_symlink_in_object_root_to_etc_is_refused(store: ObjectStore, roots: tuple[Path, Path]) -> None:
    (roots[0] / "bkt").mkdir()
    os.symlink("/etc", roots[0] / "bkt" / "etc")
    with pytest.raises(StorageError, match="outside its storage root"):
        store.exists("s3://bkt/etc/passwd")


def test_symlinked_bucket_pointing_outside_is_refused(
    store: ObjectStore, roots: tuple[Path, Path], outside: Path
) -> None:
    os.symlink(outside, roots[0] / "evil")
    with pytest.raises(StorageError, match="outside its storage root"):
        store.read_bytes("s3://evil/secret")


def test_empty_key_segment_cannot_turn_key_into_absolute_path(store: ObjectStore) -> None:
    with pytest.raises(StorageError):
        store.read_bytes("s3://bkt//etc/passwd")


def test_download_tree_refuses_symlink_that_leaves_the_object_root(
    store: ObjectStore, roots: tuple[Path, Path], outside: Path, tmp_path: Path
) -> None:
    store.write_bytes("s3://bkt/p/ok", b"ok")
    os.symlink(outside / "secret", roots[0] / "bkt" / "p" / "leak")
    dst = tmp_path / "dst"
    with pytest.raises(StorageError):
        store.download_tree("s3://bkt/p", dst)
    assert not (dst / "leak").exists()


# -- absolute local paths ----------------------------------------------------------------------


def test_absolute_path_inside_allowed_local_root_round_trips(store: ObjectStore, roots: tuple[Path, Path]) -> None:
    uri = str(roots[1] / "sub" / "train.jsonl")
    store.write_bytes(uri, b"line\n")
    assert store.read_bytes(uri) == b"line\n"
    assert (roots[1] / "sub" / "train.jsonl").read_bytes() == b"line\n"


def test_absolute_path_outside_allowed_roots_is_refused_naming_the_setting(store: ObjectStore, outside: Path) -> None:
    with pytest.raises(StorageError, match="TUNEFORGE_LOCAL_ROOTS"):
        store.read_bytes(str(outside / "secret"))


def test_object_root_itself_is_not_an_allowed_local_root(store: ObjectStore, roots: tuple[Path, Path]) -> None:
    with pytest.raises(StorageError, match="TUNEFORGE_LOCAL_ROOTS"):
        store.check(str(roots[0] / "bkt" / "obj"))


def test_symlink_inside_local_root_pointing_outside_is_refused(
    store: ObjectStore, roots: tuple[Path, Path], outside: Path
) -> None:
    os.symlink(outside, roots[1] / "link")
    with pytest.raises(StorageError, match="outside the allowed roots"):
        store.read_bytes(str(roots[1] / "link" / "secret"))


def test_from_settings_maps_s3_to_data_dir_objects_and_allows_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store = ObjectStore.from_settings(settings)
    store.write_bytes("s3://bkt/k", b"mapped")
    assert (tmp_path / "data" / "objects" / "bkt" / "k").read_bytes() == b"mapped"
    store.check(str(tmp_path / "data" / "inputs" / "train.jsonl"))
    with pytest.raises(StorageError, match="TUNEFORGE_LOCAL_ROOTS"):
        store.check(str(tmp_path / "elsewhere" / "train.jsonl"))


def test_symlink_loop_in_object_root_is_a_storage_error_naming_the_uri(
    store: ObjectStore, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    (roots[0] / "bkt").mkdir()
    os.symlink(roots[0] / "bkt" / "b", roots[0] / "bkt" / "a")
    os.symlink(roots[0] / "bkt" / "a", roots[0] / "bkt" / "b")
    with pytest.raises(StorageError, match=re.escape("s3://bkt/a/train.jsonl cannot be resolved")):
        store.check("s3://bkt/a/train.jsonl")
    with pytest.raises(StorageError, match="cannot be resolved"):
        store.download_file("s3://bkt/a", tmp_path / "copy")


def test_tuneforges_own_state_files_are_never_data_though_the_data_dir_is_an_allowed_root(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    private = [data_dir / "tuneforge.db", data_dir / "tuneforge.db-wal", data_dir / "console.key"]
    private += [data_dir / "logs" / "server.log", data_dir / "engines" / "e1" / "port"]
    for path in private:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"secret")
    (data_dir / "my-data").mkdir()
    (data_dir / "my-data" / "train.jsonl").write_text("{}\n")
    (data_dir / "my-data" / "db-link").symlink_to(data_dir / "tuneforge.db")
    store = ObjectStore.from_settings(settings)
    for path in [*private, data_dir / "my-data" / "db-link"]:
        with pytest.raises(StorageError, match="own state files"):
            store.read_bytes(str(path))
    assert store.read_bytes(str(data_dir / "my-data" / "train.jsonl")) == b"{}\n"


# -- streams, copies and staged copies (both backends) ------------------------------------------


def test_open_read_streams_lines_and_open_write_publishes_on_close(any_store: ObjectStore) -> None:
    with any_store.open_write("s3://bkt/s/data.jsonl") as out:
        out.write(b"first\n")
        assert not any_store.exists("s3://bkt/s/data.jsonl")  # nothing visible before close
        out.write(b"second\n")
    with any_store.open_read("s3://bkt/s/data.jsonl") as handle:
        assert handle.readline() == b"first\n"
        assert handle.read() == b"second\n"


def test_a_write_cut_short_by_an_error_leaves_no_object(any_store: ObjectStore) -> None:
    any_store.write_bytes("s3://bkt/kept", b"old")
    with pytest.raises(RuntimeError), any_store.open_write("s3://bkt/kept") as out:
        out.write(b"half of the new")
        raise RuntimeError("writer crashed")
    assert any_store.read_bytes("s3://bkt/kept") == b"old"
    with any_store.open_write("s3://bkt/never") as out:
        out.write(b"x")
        out.abort()
    assert not any_store.exists("s3://bkt/never")
    assert list(any_store.list("s3://bkt")) == ["s3://bkt/kept"]


def test_open_read_of_missing_object_raises_storage_error(any_store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        any_store.open_read("s3://bkt/missing")


def test_copy_and_delete(any_store: ObjectStore) -> None:
    any_store.write_bytes("s3://bkt/a/one", b"1")
    any_store.copy("s3://bkt/a/one", "s3://bkt/b/two")
    assert any_store.read_bytes("s3://bkt/b/two") == b"1"
    any_store.delete("s3://bkt/a/one")
    assert list(any_store.list("s3://bkt")) == ["s3://bkt/b/two"]


def test_cached_stages_a_folder_once_and_again_when_it_changed(any_store: ObjectStore, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "model")
    any_store.upload_tree(tmp_path / "model", "s3://bkt/models/m")
    folder = any_store.cached("s3://bkt/models/m/")
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    marker = folder / "config.json"
    stamp = marker.stat().st_ino
    assert any_store.cached("s3://bkt/models/m") == folder and marker.stat().st_ino == stamp  # still current
    any_store.write_bytes("s3://bkt/models/m/config.json", b'{"changed": 1}')
    assert (any_store.cached("s3://bkt/models/m") / "config.json").read_bytes() == b'{"changed": 1}'
    single = any_store.cached("s3://bkt/models/m/weights/deep/b.bin")
    assert single.name == "b.bin" and single.read_bytes() == b"BB"
    with pytest.raises(StorageError, match="nothing exists at s3://bkt/absent"):
        any_store.cached("s3://bkt/absent")


# -- S3 only: multipart and errors ---------------------------------------------------------------


def test_s3_uploads_a_large_file_in_parts(
    moto_server: MotoS3, roots: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_server.environment().items():
        monkeypatch.setenv(name, value)
    backend = S3ObjectBackend(s3_settings(tmp_path / "data", s3_multipart_bytes=5 * 1024 * 1024))
    store = s3_store(moto_server, backend, roots, tmp_path)
    big = tmp_path / "big.safetensors"
    big.write_bytes(os.urandom(1024) * (6 * 1024))  # 6 MiB: two parts at a 5 MiB threshold
    store.upload_file(big, "s3://bkt/model/big.safetensors")
    info = store.info("s3://bkt/model/big.safetensors")
    assert info is not None and info.size == big.stat().st_size
    assert info.version.strip('"').endswith("-2")  # S3's ETag of a two-part multipart upload
    store.download_file("s3://bkt/model/big.safetensors", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == big.read_bytes()


def test_s3_missing_bucket_is_named(
    moto_server: MotoS3, s3_backend: S3ObjectBackend, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    store = s3_store(moto_server, s3_backend, roots, tmp_path)
    with pytest.raises(StorageError, match="the bucket nobucket does not exist"):
        store.read_bytes("s3://nobucket/key")
    with pytest.raises(StorageError, match="the bucket nobucket does not exist"):
        store.write_bytes("s3://nobucket/key", b"x")
    with pytest.raises(StorageError, match="the bucket nobucket does not exist"):
        list(store.list("s3://nobucket/prefix"))


def test_s3_access_denied_is_named(
    moto_server: MotoS3, s3_backend: S3ObjectBackend, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    """moto grants everything, so the endpoint's refusal is stubbed at botocore's edge, below tuneforge."""
    from botocore.stub import Stubber

    store = s3_store(moto_server, s3_backend, roots, tmp_path)
    with Stubber(s3_backend.client) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(StorageError, match=r"s3://bkt/secret: access denied by http://127\.0\.0\.1"):
            store.read_bytes("s3://bkt/secret")


def test_s3_unreachable_endpoint_fails_after_the_retry_budget_naming_it(
    tmp_path: Path, roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    backend = S3ObjectBackend(s3_settings(tmp_path / "data"))
    store = ObjectStore(LocalObjectBackend(roots[0], [roots[1]]), backend, tmp_path / "cache")
    store.check("s3://bkt/key")  # the edge's check never touches the network
    message = rf"S3 endpoint http://127\.0\.0\.1:{port} is unreachable after 2 attempts \(TUNEFORGE_S3_MAX_ATTEMPTS\)"
    for operation in (lambda: store.read_bytes("s3://bkt/k"), lambda: store.exists("s3://bkt/k")):
        with pytest.raises(StorageError, match=message):
            operation()
    with pytest.raises(StorageError, match=message):
        store.write_bytes("s3://bkt/k", b"x")


def test_delete_removes_one_object_never_a_folder(any_store: ObjectStore) -> None:
    any_store.write_bytes("s3://bkt/f/a", b"a")
    any_store.delete("s3://bkt/f")  # a folder, not an object: left alone
    any_store.delete("s3://bkt/f/missing")
    assert list(any_store.list("s3://bkt/f")) == ["s3://bkt/f/a"]


def test_cached_on_the_local_root_links_instead_of_copying(store: ObjectStore, roots: tuple[Path, Path]) -> None:
    """A 1 TiB sparse weight file (a header saying so) stages at once: the staged file is the same inode."""
    folder = roots[1] / "model"
    folder.mkdir()
    with (folder / "model.safetensors").open("wb") as handle:
        handle.truncate(1 << 40)
    (folder / "tokenizer.json").symlink_to("/etc/hostname")  # kept a link, for the import's own check to refuse
    staged = store.cached(str(folder))
    assert (staged / "model.safetensors").stat().st_ino == (folder / "model.safetensors").stat().st_ino
    assert (staged / "tokenizer.json").is_symlink()
