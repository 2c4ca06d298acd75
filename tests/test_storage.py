"""The object store on both backends: a local folder (file://) and a real S3 (SeaweedFS)."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from modelyard.errors import Conflict, InvalidInput, NotFound, StorageError
from modelyard.settings import S3Settings, Settings
from modelyard.storage import (
    MANIFEST_NAME,
    FileStore,
    ObjectStore,
    S3Store,
    atomic_write,
    open_store,
    open_store_from_uri,
    split_uri,
)

from .conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, S3Service


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_store(settings.store_uri, settings.s3)


def make_folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return path


VERSION_FILES = {
    "model.joblib": b"model bytes",
    "report.html": b"<html></html>",
    "nested/extra.bin": b"\x00\x01\x02",
    MANIFEST_NAME: b'{"format_version": 1}',
}


# ---------------------------------------------------------------- basic operations


def test_put_get_exists_round_trip(store: ObjectStore, settings: Settings) -> None:
    uri = store.put_bytes("iris/1/model.joblib", b"first")
    assert uri == f"{settings.store_uri}/iris/1/model.joblib"
    assert store.uri_for("iris/1/model.joblib") == uri
    assert store.get_bytes("iris/1/model.joblib") == b"first"
    assert store.exists("iris/1/model.joblib")
    assert not store.exists("iris/1/other")
    assert not store.exists("iris/1")  # a folder is not an object

    store.put_bytes("iris/1/model.joblib", b"second")  # put replaces, like S3
    assert store.get_bytes("iris/1/model.joblib") == b"second"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_list_treats_the_prefix_as_a_folder(store: ObjectStore) -> None:
    for key in ["iris/1/a", "iris/1/b/c", "iris/10/a", "other/x"]:
        store.put_bytes(key, key.encode())
    assert store.list("iris/1") == ["iris/1/a", "iris/1/b/c"]  # never iris/10
    assert store.list("iris/1/") == ["iris/1/a", "iris/1/b/c"]
    assert store.list("iris") == ["iris/1/a", "iris/1/b/c", "iris/10/a"]
    assert store.list() == ["iris/1/a", "iris/1/b/c", "iris/10/a", "other/x"]
    assert store.list("missing") == []


def test_delete_prefix_removes_one_folder_only(store: ObjectStore) -> None:
    for key in ["iris/1/a", "iris/1/b/c", "iris/10/a"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("iris/1") == 2
    assert store.list() == ["iris/10/a"]
    assert store.delete_prefix("iris/1") == 0
    with pytest.raises(InvalidInput, match="refusing to delete the whole store"):
        store.delete_prefix("")


def test_download_dir_copies_a_folder(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("iris/1/a.txt", b"a")
    store.put_bytes("iris/1/sub/b.txt", b"b")
    store.put_bytes("iris/10/c.txt", b"c")
    local = store.download_dir("iris/1", tmp_path / "out")
    assert local == tmp_path / "out"
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "a.txt",
        "sub/b.txt",
    ]
    assert (local / "sub" / "b.txt").read_bytes() == b"b"
    with pytest.raises(NotFound, match=re.escape(f"nothing found under {store.uri_for('iris/2')}")):
        store.download_dir("iris/2", tmp_path / "none")


def test_missing_key_is_not_found_naming_the_uri(store: ObjectStore) -> None:
    with pytest.raises(NotFound, match=re.escape(f"object not found: {store.uri_for('nope/x')}")):
        store.get_bytes("nope/x")


BAD_KEYS = [
    ("../escape", "must not contain '..'"),
    ("iris/../../escape", "must not contain '..'"),
    ("/etc/passwd", "remove the leading '/'"),
    ("", "must not be empty"),
    ("iris//1", "empty or '.' segment"),
    ("iris/./1", "empty or '.' segment"),
    ("iris/.partial-x/1", "segments starting with '.partial-' are reserved"),
    ("iris\\1", "must not contain '\\' or NUL characters"),
]


def test_bad_keys_are_refused_by_every_operation(store: ObjectStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "v", VERSION_FILES)
    for key, message in BAD_KEYS:
        expected = re.escape(message)
        with pytest.raises(InvalidInput, match=expected):
            store.put_bytes(key, b"x")
        with pytest.raises(InvalidInput, match=expected):
            store.get_bytes(key)
        with pytest.raises(InvalidInput, match=expected):
            store.exists(key)
        with pytest.raises(InvalidInput, match=expected):
            store.publish_dir(folder, key)
        if key:  # '' is the root: a valid prefix for list() and uri_for()
            with pytest.raises(InvalidInput, match=expected):
                store.uri_for(key)
            with pytest.raises(InvalidInput, match=expected):
                store.list(key)
            with pytest.raises(InvalidInput, match=expected):
                store.delete_prefix(key)
    assert store.list() == []


# ---------------------------------------------------------------- publishing


def test_publish_dir_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "v", VERSION_FILES)
    assert not store.is_published("iris/1")
    uri = store.publish_dir(folder, "iris/1")
    assert uri == store.uri_for("iris/1")
    assert store.is_published("iris/1")
    assert store.list("iris/1") == sorted(f"iris/1/{name}" for name in VERSION_FILES)
    local = store.download_dir("iris/1", tmp_path / "back")
    for name, content in VERSION_FILES.items():
        assert (local / name).read_bytes() == content


def test_publish_refuses_to_overwrite(store: ObjectStore, tmp_path: Path) -> None:
    store.publish_dir(make_folder(tmp_path / "v1", VERSION_FILES), "iris/1")
    changed = make_folder(tmp_path / "v2", {**VERSION_FILES, "model.joblib": b"other model"})
    with pytest.raises(Conflict, match=re.escape(f"{store.uri_for('iris/1')} already exists")):
        store.publish_dir(changed, "iris/1")
    assert store.get_bytes("iris/1/model.joblib") == b"model bytes"


def test_publish_needs_a_folder_with_a_manifest(store: ObjectStore, tmp_path: Path) -> None:
    no_manifest = make_folder(tmp_path / "v", {"model.joblib": b"m"})
    with pytest.raises(InvalidInput, match=f"it has no {MANIFEST_NAME}"):
        store.publish_dir(no_manifest, "iris/1")
    with pytest.raises(InvalidInput, match="not a directory"):
        store.publish_dir(tmp_path / "absent", "iris/1")
    broken = make_folder(tmp_path / "broken", VERSION_FILES)
    (broken / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInput, match="dangling is not a regular file"):
        store.publish_dir(broken, "iris/1")
    assert store.list() == []


def test_readers_never_see_a_half_published_folder(store: ObjectStore, tmp_path: Path) -> None:
    files = {f"part-{i:02d}.bin": bytes([i]) * 50_000 for i in range(24)}
    files[MANIFEST_NAME] = b"{}"
    folder = make_folder(tmp_path / "v", files)
    expected = sorted(f"iris/7/{name}" for name in files)
    snapshots: list[list[str]] = []
    bad_reads: list[str] = []
    started = threading.Event()
    done = threading.Event()

    def reader() -> None:
        while True:
            finished = done.is_set()  # one more look after the publisher returns
            if store.is_published("iris/7"):
                # The manifest is visible: every other file must already be there, complete.
                listing = store.list("iris/7")
                snapshots.append(listing)
                for name, content in files.items():
                    if store.get_bytes(f"iris/7/{name}") != content:
                        bad_reads.append(name)
            else:
                snapshots.append([])
            started.set()
            if finished:
                return

    thread = threading.Thread(target=reader)
    thread.start()
    assert started.wait(30)
    store.publish_dir(folder, "iris/7")
    done.set()
    thread.join(60)

    assert snapshots[0] == []  # the reader looked before the publish began
    assert snapshots[-1] == expected
    assert all(snapshot in ([], expected) for snapshot in snapshots)
    assert bad_reads == []


def test_file_store_publish_appears_whole_and_ignores_partials(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    # What a crashed publish leaves behind: a hidden partial sibling, never listed.
    make_folder(tmp_path / "store" / "iris" / ".partial-dead-3", VERSION_FILES)
    assert store.list() == []
    folder = make_folder(tmp_path / "v", VERSION_FILES)
    seen: list[list[str]] = []
    done = threading.Event()

    def watcher() -> None:
        while not done.is_set():
            path = tmp_path / "store" / "iris" / "3"
            seen.append(sorted(p.name for p in path.iterdir()) if path.exists() else [])

    thread = threading.Thread(target=watcher)
    thread.start()
    store.publish_dir(folder, "iris/3")
    done.set()
    thread.join(30)
    top_level = sorted({name.split("/")[0] for name in VERSION_FILES})
    assert all(entry in ([], top_level) for entry in seen)
    assert sorted(p.name for p in (tmp_path / "store" / "iris").iterdir()) == [".partial-dead-3", "3"]


def test_file_store_concurrent_publishes_one_wins(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    folders = [make_folder(tmp_path / f"v{i}", {**VERSION_FILES, "who": str(i).encode()}) for i in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(folders))

    def publish(folder: Path) -> None:
        barrier.wait()
        try:
            store.publish_dir(folder, "iris/1")
            outcomes.append("published")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=publish, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "published"]
    winner = store.get_bytes("iris/1/who")
    assert store.list("iris/1") == sorted(f"iris/1/{n}" for n in [*VERSION_FILES, "who"])
    assert winner in {b"0", b"1", b"2", b"3"}
    assert [p.name for p in (tmp_path / "store" / "iris").iterdir()] == ["1"]  # no partials left


def test_s3_publish_clears_leftovers_of_a_failed_publish(s3_env: S3Service, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_env.create_bucket()}/models")
    # A publish that died before its manifest: invisible, but its files linger.
    store.put_bytes("iris/1/model.joblib", b"stale")
    store.put_bytes("iris/1/stale.bin", b"stale")
    assert not store.is_published("iris/1")
    store.publish_dir(make_folder(tmp_path / "v", VERSION_FILES), "iris/1")
    assert store.list("iris/1") == sorted(f"iris/1/{name}" for name in VERSION_FILES)
    assert store.get_bytes("iris/1/model.joblib") == b"model bytes"


# ---------------------------------------------------------------- URIs


def _leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.startswith(".partial-")]


def test_atomic_write_replaces_a_file_only_when_the_block_ends_well(tmp_path: Path) -> None:
    target = tmp_path / "out" / "scores.csv"
    with atomic_write(target) as partial:
        partial.write_text("first")
        assert not target.exists()  # the folder is made; the file appears only at the end
    assert target.read_text() == "first"
    with atomic_write(target) as partial:
        partial.write_text("second")
        assert target.read_text() == "first"  # readers see the old file until the rename
    assert target.read_text() == "second"
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as partial:
        partial.write_text("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "second"
    assert _leftovers(target.parent) == []


def test_atomic_write_puts_a_folder_in_place_but_never_over_a_full_one(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with atomic_write(target) as partial:
        make_folder(partial, {"a.txt": b"a", "sub/b.txt": b"b"})
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.txt")) == ["a.txt", "sub/b.txt"]
    with pytest.raises(Conflict, match=r"^taken$"), atomic_write(target, refused="taken") as partial:
        make_folder(partial, {"c.txt": b"c"})
    refused = re.escape(f"cannot replace {target}: it exists and is not empty")
    with pytest.raises(Conflict, match=refused), atomic_write(target) as partial:
        make_folder(partial, {"c.txt": b"c"})
    assert not (target / "c.txt").exists()
    assert _leftovers(tmp_path) == []


def test_split_uri() -> None:
    assert split_uri("s3://bucket/models/iris/3") == ("s3", "bucket", "models/iris/3")
    assert split_uri("s3://bucket") == ("s3", "bucket", "")
    assert split_uri("file:///data/store/") == ("file", "/", "data/store")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://example.com/x", "must start with file:// or s3://, not http://"),
        ("/plain/path", "must start with file:// or s3://"),
        ("s3:///models", "needs a bucket"),
        ("s3://Bad_Bucket/models", "'Bad_Bucket' is not a valid bucket name"),
        ("file://relative/path", "must be file:///absolute/path"),
        ("s3://bucket/a/../b", "must not contain '..'"),
        ("s3://bucket/models?x=1", "must not have a query"),
    ],
)
def test_bad_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        open_store(uri)


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    file_store = open_store(f"file://{tmp_path}/store")
    assert isinstance(file_store, FileStore)
    assert file_store.root == tmp_path / "store"
    assert file_store.root_uri == f"file://{tmp_path}/store"
    s3_store = open_store("s3://bucket/models/", S3Settings(endpoint_url="http://127.0.0.1:1"))
    assert isinstance(s3_store, S3Store)
    assert s3_store.uri_for("iris/1") == "s3://bucket/models/iris/1"


def test_open_store_from_uri_splits_off_the_last_segment(store: ObjectStore, settings: Settings) -> None:
    store.put_bytes("iris/3/metadata.json", b"{}")
    parent, key = open_store_from_uri(store.uri_for("iris/3"), settings.s3)
    assert key == "3"
    assert parent.uri_for(key) == store.uri_for("iris/3")
    assert parent.get_bytes("3/metadata.json") == b"{}"
    with pytest.raises(InvalidInput, match="names a store root"):
        open_store_from_uri("s3://bucket")


# ---------------------------------------------------------------- S3 failures


def test_s3_missing_bucket_is_a_storage_error(s3: S3Service, tmp_path: Path) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}/models", S3Settings(**{k.lower()[4:]: v for k, v in s3.env().items()}))
    expected = f"bucket '{bucket}' does not exist at {s3.endpoint_url}"
    with pytest.raises(StorageError, match=re.escape(f"cannot read s3://{bucket}/models/a: {expected}")):
        store.get_bytes("a")
    with pytest.raises(StorageError, match=re.escape(expected)):
        store.exists("a")
    with pytest.raises(StorageError, match=re.escape(expected)):
        store.list("iris")
    with pytest.raises(StorageError, match=re.escape(expected)):
        store.download_dir("iris", tmp_path / "out")
    # Some servers (SeaweedFS among them) create a bucket on PUT; a typo in the URI must not do that.
    with pytest.raises(StorageError, match=re.escape(expected)):
        store.put_bytes("a", b"x")
    with pytest.raises(StorageError, match=re.escape(expected)):
        store.publish_dir(make_folder(tmp_path / "v", VERSION_FILES), "iris/1")
    assert bucket not in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


def test_s3_unreachable_endpoint_is_a_storage_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="k",
        secret_access_key="s",
        region="us-east-1",
    )
    store = open_store("s3://bucket/models", settings)
    started = time.monotonic()
    with pytest.raises(
        StorageError,
        match=re.escape(
            f"cannot read s3://bucket/models/a: cannot reach S3 endpoint http://127.0.0.1:{port}"
        ),
    ):
        store.get_bytes("a")
    assert time.monotonic() - started < 20  # retries are bounded


def test_s3_wrong_credentials_are_a_storage_error(s3: S3Service) -> None:
    bucket = s3.create_bucket()
    settings = S3Settings(
        endpoint_url=s3.endpoint_url, access_key_id="nobody", secret_access_key="wrong", region=S3_REGION
    )
    store = open_store(f"s3://{bucket}/models", settings)
    with pytest.raises(
        StorageError, match=r"cannot read s3://.*/models/a: access denied \(InvalidAccessKeyId"
    ):
        store.get_bytes("a")
    good = open_store(
        f"s3://{bucket}/models",
        S3Settings(
            endpoint_url=s3.endpoint_url,
            access_key_id=S3_ACCESS_KEY,
            secret_access_key=S3_SECRET_KEY,
            region=S3_REGION,
        ),
    )
    with pytest.raises(NotFound, match=re.escape(f"object not found: s3://{bucket}/models/a")):
        good.get_bytes("a")
