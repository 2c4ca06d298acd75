"""Object store: a local folder (``file://``) or S3-compatible storage (``s3://bucket/prefix``).

Keys are ``/``-separated paths relative to the store's root (``iris/3/model.joblib``). A key never has a
leading ``/``, an empty segment, ``.`` or ``..``, so no key can escape the root. A *prefix* names a
folder: ``list("iris/3")`` returns the keys under ``iris/3/``, never those under ``iris/30/``.

Publishing a folder is atomic for readers, so nobody ever sees a half-written model version:

* ``FileStore`` copies the folder into a hidden sibling (``.partial-<id>-<name>``, on the same file
  system, ignored by every read) and then renames it into place, which is atomic (``atomic_write``,
  the project's one way to write a file or folder in place).
* ``S3Store`` cannot rename, so it relies on a convention: the *manifest* (``metadata.json``) is uploaded
  LAST, after every other file of the folder. **A folder counts as published only when its manifest
  exists.** Readers check for the manifest before reading anything else; a folder without one is an
  unfinished (or failed) publish and does not exist. The manifest is written with ``If-None-Match: *``,
  so of two racing publishers only one can create it.

Neither store overwrites a published folder: publishing to a key whose manifest exists raises Conflict.
On S3, two publishers racing for the same key both upload their files before one manifest wins, so the
files may be mixed; keys are meant to be unique per version (the registry allocates them), and readers
verify every file against the manifest's sha256 (``modelyard.bundle``), so a mix is refused, never served.
Failures of the backend (no such bucket, access denied, unreachable endpoint) raise StorageError naming
the URI and the cause; a missing object raises NotFound naming its URI.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from modelyard.errors import Conflict, InvalidInput, ModelyardError, NotFound, StorageError
from modelyard.settings import S3Settings

MANIFEST_NAME = "metadata.json"
"""The file whose presence marks a published folder; uploaded last."""

_PARTIAL_PREFIX = ".partial-"  # names of unfinished publishes and writes; reserved, never listed
_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

KeyList = list[str]  # `list` is also a method name of the stores, so annotations use this alias


def check_key(key: str, *, what: str = "object key") -> str:
    """Return ``key`` if it is a safe relative key, else raise InvalidInput naming the problem."""
    if not isinstance(key, str):
        raise InvalidInput(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidInput(f"{what} must not be empty")
    if key.startswith("/"):
        raise InvalidInput(f"{what} {key!r} must be relative to the store root: remove the leading '/'")
    if "\\" in key or "\x00" in key:
        raise InvalidInput(f"{what} {key!r} must not contain '\\' or NUL characters")
    for segment in key.split("/"):
        if segment == "..":
            raise InvalidInput(f"{what} {key!r} must not contain '..'")
        if segment in ("", "."):
            raise InvalidInput(f"{what} {key!r} has an empty or '.' segment; use single '/' separators")
        if segment.startswith(_PARTIAL_PREFIX):
            raise InvalidInput(f"{what} {key!r}: segments starting with {_PARTIAL_PREFIX!r} are reserved")
    return key


def _check_prefix(prefix: str) -> str:
    """A prefix is a folder key; '' is the store root and a trailing '/' is allowed."""
    if prefix == "":
        return ""
    return check_key(prefix.rstrip("/") if prefix != "/" else prefix, what="prefix")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def split_uri(uri: str) -> tuple[str, str, str]:
    """Split a store URI into ``(scheme, bucket_or_root, key)``.

    ``s3://bucket/a/b`` -> ``("s3", "bucket", "a/b")``; ``file:///data/a/b`` -> ``("file", "/", "data/a/b")``.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidInput(f"store URI {uri!r} must start with file:// or s3://")
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "file"):
        raise InvalidInput(f"store URI {uri!r} must start with file:// or s3://, not {parsed.scheme}://")
    if parsed.query or parsed.fragment or parsed.params:
        raise InvalidInput(f"store URI {uri!r} must not have a query or fragment ('?', '#', ';')")
    path = parsed.path.strip("/")
    if path:
        check_key(path, what=f"path of {uri!r}")
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not bucket:
            raise InvalidInput(f"store URI {uri!r} needs a bucket: s3://BUCKET/prefix")
        if not _BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket:
            raise InvalidInput(
                f"store URI {uri!r}: {bucket!r} is not a valid bucket name "
                "(3-63 lowercase letters, digits, '.' or '-')"
            )
        return "s3", bucket, path
    if parsed.netloc not in ("", "localhost"):
        raise InvalidInput(
            f"store URI {uri!r} must be file:///absolute/path (found host {parsed.netloc!r}; "
            "a relative path like file://data parses as a host)"
        )
    return "file", "/", path


class ObjectStore(ABC):
    """A flat namespace of objects under one root URI, with an atomic folder publish."""

    @property
    @abstractmethod
    def root_uri(self) -> str:
        """The URI of the store's root, without a trailing '/'."""

    def uri_for(self, key: str) -> str:
        """The full ``file://`` or ``s3://`` URI of ``key``."""
        return _join(self.root_uri, _check_prefix(key))

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write one object (replacing any previous content) and return its URI."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read one object; NotFound when it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at exactly ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> KeyList:
        """Every object key under the folder ``prefix`` ('' for all), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder ``prefix``; return how many were deleted."""

    @abstractmethod
    def download_dir(self, prefix: str, local_dir: Path | str) -> Path:
        """Copy every object under ``prefix`` into ``local_dir``, keeping relative paths; NotFound if none."""

    @abstractmethod
    def publish_dir(self, local_dir: Path | str, key: str) -> str:
        """Publish a local folder at ``key`` atomically for readers; return its URI.

        The folder must contain the manifest (``metadata.json``). Conflict when ``key`` is already published.
        """

    def is_published(self, key: str) -> bool:
        """Whether a folder was completely published at ``key`` (its manifest exists)."""
        return self.exists(_join(check_key(key), MANIFEST_NAME))


def _files_to_publish(local_dir: Path | str, key: str) -> tuple[Path, KeyList]:
    """Validate a folder to publish; return it and its files as relative '/'-paths (manifest included)."""
    check_key(key)
    source = Path(local_dir)
    if not source.is_dir():
        raise InvalidInput(f"cannot publish {source}: not a directory")
    relative: KeyList = []
    for folder, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(folder, name)
            rel = path.relative_to(source).as_posix()
            if not path.is_file():
                raise InvalidInput(f"cannot publish {source}: {rel} is not a regular file (broken link?)")
            check_key(rel, what=f"file name in {source}")
            relative.append(rel)
    if MANIFEST_NAME not in relative:
        raise InvalidInput(
            f"cannot publish {source}: it has no {MANIFEST_NAME}; "
            "a folder is published only with its manifest"
        )
    return source, relative


# ---------------------------------------------------------------- file://


class FileStore(ObjectStore):
    """A folder on a local (or mounted) file system."""

    def __init__(self, root: Path | str) -> None:
        root_path = Path(root)
        if not root_path.is_absolute():
            raise InvalidInput(f"file store root {str(root)!r} must be an absolute path")
        self.root = root_path

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @property
    def root_uri(self) -> str:
        return "file://" + (self.root.as_posix().rstrip("/") or "")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/")) if key else self.root

    @contextmanager
    def _os_errors(self, key: str, action: str) -> Iterator[None]:
        try:
            yield
        except ModelyardError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot {action} {self.uri_for(key)}: {exc.strerror or exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> str:
        check_key(key)
        target = self._path(key)
        with self._os_errors(key, "write"), atomic_write(target) as partial:
            partial.write_bytes(data)
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        check_key(key)
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object not found: {self.uri_for(key)}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_for(key)}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        check_key(key)
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> KeyList:
        prefix = _check_prefix(prefix)
        base = self._path(prefix)
        if not base.is_dir():
            return []
        keys: KeyList = []
        for folder, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(_PARTIAL_PREFIX)]
            rel_folder = Path(folder).relative_to(self.root).as_posix()
            for name in filenames:
                if not name.startswith(_PARTIAL_PREFIX):
                    keys.append(name if rel_folder == "." else f"{rel_folder}/{name}")
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        prefix = _check_prefix(prefix)
        if not prefix:
            raise InvalidInput(f"refusing to delete the whole store {self.root_uri}: give a prefix")
        base = self._path(prefix)
        if not base.is_dir():
            return 0
        count = len(self.list(prefix))
        with self._os_errors(prefix, "delete"):
            # Rename first so the folder disappears at once, then remove it at leisure.
            doomed = hidden_sibling(base)
            base.rename(doomed)
            shutil.rmtree(doomed)
        return count

    def download_dir(self, prefix: str, local_dir: Path | str) -> Path:
        prefix = _check_prefix(prefix)
        keys = self.list(prefix)
        if not keys:
            raise NotFound(f"nothing found under {self.uri_for(prefix)}")
        destination = Path(local_dir)
        with self._os_errors(prefix, "download"):
            for key in keys:
                target = destination / (key[len(prefix) + 1 :] if prefix else key)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self._path(key), target)
        return destination

    def publish_dir(self, local_dir: Path | str, key: str) -> str:
        source, files = _files_to_publish(local_dir, key)
        final = self._path(key)
        uri = self.uri_for(key)
        refused = f"{uri} already exists; a published version is never overwritten"
        if final.exists():
            raise Conflict(refused)
        with self._os_errors(key, "publish to"), atomic_write(final, refused=refused) as partial:
            for rel in files:
                (partial / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, partial / rel)
        return uri


def hidden_sibling(path: Path) -> Path:
    """A new name beside ``path`` that every listing of a store skips (``.partial-<id>-<name>``)."""
    return path.with_name(f"{_PARTIAL_PREFIX}{uuid.uuid4().hex}-{path.name}")


@contextmanager
def atomic_write(target: Path, *, refused: str | None = None) -> Iterator[Path]:
    """A hidden sibling of ``target`` to write, a file or a folder, put in place when the block ends well.

    Everything written is flushed to disk, then the sibling is renamed over ``target`` (same folder, same
    file system: one atomic rename), so readers see the old content or the new, never part of it. A file
    replaces a file; a folder takes the place of an absent or empty folder only, else Conflict(``refused``).
    When the block raises, or the rename fails, the sibling is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = hidden_sibling(target)
    try:
        yield partial
        _flush_tree(partial)
        try:
            partial.replace(target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise Conflict(refused or f"cannot replace {target}: it exists and is not empty") from None
            raise
        fsync_dir(target.parent)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def _flush_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder, so a rename never exposes lost data."""
    if not path.is_dir():
        _fsync(path)
        return
    for folder, _dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            _fsync(Path(folder) / name)
        fsync_dir(Path(folder))


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so a rename into it survives a crash."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------- s3://


class S3Store(ObjectStore):
    """A bucket (and optional key prefix) on S3 or an S3-compatible service (MinIO, SeaweedFS, ...)."""

    def __init__(self, bucket: str, prefix: str = "", s3: S3Settings | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = _check_prefix(prefix)
        settings = s3 if s3 is not None else S3Settings()
        self.endpoint_url = settings.endpoint_url
        config = Config(
            # S3-compatible servers (MinIO, SeaweedFS) are addressed by path, not by virtual host.
            s3={"addressing_style": "path"} if settings.endpoint_url else {},
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
        )
        # Values left unset fall through to boto3's own chain (env, ~/.aws, instance roles).
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
            config=config,
        )
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r}, endpoint={self.endpoint_url!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{_join(self.bucket, self.prefix)}"

    def _full_key(self, key: str) -> str:
        return _join(self.prefix, key)

    # -- errors

    def _raise(self, exc: Exception, uri: str, action: str) -> NoReturn:
        """Turn a boto3/botocore failure into StorageError (or NotFound) naming the URI and the cause."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        cause: BaseException = exc
        if isinstance(exc, S3UploadFailedError | S3TransferFailedError) and isinstance(
            exc.__context__, ClientError
        ):
            cause = exc.__context__  # managed transfers wrap the real ClientError
        endpoint = self.endpoint_url or "the AWS default endpoint"
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message") or str(cause)
            if code == "NoSuchBucket":
                raise StorageError(
                    f"cannot {action} {uri}: bucket {self.bucket!r} does not exist at {endpoint}"
                ) from exc
            if code == "NoSuchKey":
                raise NotFound(f"object not found: {uri}") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                raise StorageError(
                    f"cannot {action} {uri}: access denied ({code}: {message}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
                ) from exc
            raise StorageError(f"cannot {action} {uri}: S3 error {code}: {message}") from exc
        if isinstance(cause, NoCredentialsError):
            raise StorageError(
                f"cannot {action} {uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or configure boto3's credential chain)"
            ) from exc
        if isinstance(cause, EndpointConnectionError | ConnectTimeoutError | ConnectionError):
            raise StorageError(
                f"cannot {action} {uri}: cannot reach S3 endpoint {endpoint}: {cause}"
            ) from exc
        if isinstance(cause, ReadTimeoutError):
            raise StorageError(f"cannot {action} {uri}: S3 endpoint {endpoint} timed out: {cause}") from exc
        raise StorageError(f"cannot {action} {uri}: {type(cause).__name__}: {cause}") from exc

    @contextmanager
    def _s3_errors(self, uri: str, action: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            self._raise(exc, uri, action)

    def _is_not_found(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def _ensure_bucket(self, uri: str, action: str) -> None:
        """Fail clearly on a missing bucket: HEAD answers a bare 404, and some servers create on PUT."""
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if self._is_not_found(exc) or exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                endpoint = self.endpoint_url or "the AWS default endpoint"
                raise StorageError(
                    f"cannot {action} {uri}: bucket {self.bucket!r} does not exist at {endpoint}"
                ) from exc
            self._raise(exc, uri, action)
        except Exception as exc:
            with self._s3_errors(uri, action):
                raise exc
        self._bucket_checked = True

    # -- operations

    def put_bytes(self, key: str, data: bytes) -> str:
        uri = self.uri_for(check_key(key))
        self._ensure_bucket(uri, "write")
        with self._s3_errors(uri, "write"):
            self._client.put_object(Bucket=self.bucket, Key=self._full_key(key), Body=data)
        return uri

    def get_bytes(self, key: str) -> bytes:
        uri = self.uri_for(check_key(key))
        with self._s3_errors(uri, "read"):
            response = self._client.get_object(Bucket=self.bucket, Key=self._full_key(key))
            body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        uri = self.uri_for(check_key(key))
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except ClientError as exc:
            if self._is_not_found(exc):
                self._ensure_bucket(uri, "check")
                return False
            self._raise(exc, uri, "check")
        except Exception as exc:
            with self._s3_errors(uri, "check"):
                raise exc
        return True

    def list(self, prefix: str = "") -> KeyList:
        prefix = _check_prefix(prefix)
        folder = self._full_key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: KeyList = []
        with self._s3_errors(self.uri_for(prefix), "list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{folder}/" if folder else ""
            )
            for page in pages:
                for item in page.get("Contents", []):
                    full: str = item["Key"]
                    if not full.endswith("/"):  # skip "directory marker" objects
                        keys.append(full[strip:])
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        prefix = _check_prefix(prefix)
        if not prefix:
            raise InvalidInput(f"refusing to delete the whole store {self.root_uri}: give a prefix")
        keys = self.list(prefix)
        # Manifests go first, so a published folder stops existing before any of its files vanish.
        keys.sort(key=lambda k: (k.rsplit("/", 1)[-1] != MANIFEST_NAME, k))
        with self._s3_errors(self.uri_for(prefix), "delete"):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": self._full_key(k)} for k in keys[start : start + 1000]]
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                failed = response.get("Errors", [])
                if failed:
                    first = failed[0]
                    raise StorageError(
                        f"cannot delete {self.root_uri}/{first.get('Key')}: "
                        f"{first.get('Code')}: {first.get('Message')} ({len(failed)} object(s) not deleted)"
                    )
        return len(keys)

    def _download_file(self, key: str, target: Path) -> None:
        uri = self.uri_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(self.bucket, self._full_key(key), str(target))
        except Exception as exc:
            if self._is_not_found(exc):
                self._ensure_bucket(uri, "download")
                raise NotFound(f"object not found: {uri}") from None
            with self._s3_errors(uri, "download"):
                raise exc

    def download_dir(self, prefix: str, local_dir: Path | str) -> Path:
        prefix = _check_prefix(prefix)
        keys = self.list(prefix)
        if not keys:
            raise NotFound(f"nothing found under {self.uri_for(prefix)}")
        destination = Path(local_dir)
        for key in keys:
            relative = key[len(prefix) + 1 :] if prefix else key
            # A listing can hold keys no local path should take (e.g. 'a/../b' written by another tool).
            try:
                check_key(relative)
            except InvalidInput as exc:
                raise StorageError(f"refusing to download {self.uri_for(prefix)}: {exc.message}") from None
            self._download_file(key, destination.joinpath(*relative.split("/")))
        return destination

    def publish_dir(self, local_dir: Path | str, key: str) -> str:
        source, files = _files_to_publish(local_dir, key)
        uri = self.uri_for(key)
        self._ensure_bucket(uri, "publish to")
        if self.is_published(key):
            raise Conflict(f"{uri} already exists; a published version is never overwritten")
        # Leftovers of an earlier, failed publish are unpublished garbage: clear them so none linger.
        if self.list(key):
            self.delete_prefix(key)
        uploaded: KeyList = []
        try:
            for rel in files:
                if rel == MANIFEST_NAME:
                    continue
                full = self._full_key(_join(key, rel))
                with self._s3_errors(self.uri_for(_join(key, rel)), "upload"):
                    self._client.upload_file(str(source / rel), self.bucket, full)
                uploaded.append(_join(key, rel))
            self._put_manifest(source / MANIFEST_NAME, key)
        except Conflict:
            raise  # the files at key may now be the winner's: leave them alone
        except ModelyardError:
            self._forget(uploaded)
            raise
        return uri

    def _put_manifest(self, path: Path, key: str) -> None:
        from botocore.exceptions import ClientError

        manifest_key = _join(key, MANIFEST_NAME)
        uri = self.uri_for(manifest_key)
        body = path.read_bytes()
        try:
            # If-None-Match makes creation exclusive where the server supports it (AWS, MinIO, SeaweedFS).
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=self._full_key(manifest_key), Body=body, IfNoneMatch="*"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NotImplemented":
                    raise
                # An older server without conditional writes: the is_published check must do.
                self._client.put_object(Bucket=self.bucket, Key=self._full_key(manifest_key), Body=body)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise Conflict(
                    f"{self.uri_for(key)} was published by someone else meanwhile; "
                    "a published version is never overwritten"
                ) from None
            self._raise(exc, uri, "upload")
        except Exception as exc:
            with self._s3_errors(uri, "upload"):
                raise exc

    def _forget(self, keys: KeyList) -> None:
        """Best-effort removal of a failed publish's files (without a manifest they are invisible anyway)."""
        if not keys:
            return
        # The original error matters more than a failed cleanup; readers ignore these files anyway.
        with suppress(Exception):
            self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._full_key(k)} for k in keys], "Quiet": True},
            )


# ---------------------------------------------------------------- opening


def open_store(uri: str, s3: S3Settings | None = None) -> ObjectStore:
    """Open the store rooted at ``uri`` (``file:///path`` or ``s3://bucket[/prefix]``).

    ``s3`` gives the endpoint and credentials; when None they come from the AWS_* environment variables,
    and whatever is still unset from boto3's own chain.
    """
    scheme, bucket_or_root, key = split_uri(uri)
    if scheme == "s3":
        return S3Store(bucket_or_root, key, s3)
    return FileStore(Path("/", *key.split("/")) if key else Path("/"))


def open_store_from_uri(uri: str, s3: S3Settings | None = None) -> tuple[ObjectStore, str]:
    """Open the store holding the object or folder at a full URI; return it and the key within it.

    Serving receives a bundle's full URI such as ``s3://bucket/models/iris/3``: this returns the store at
    ``s3://bucket/models/iris`` and the key ``3``.
    """
    scheme, bucket_or_root, key = split_uri(uri)
    if not key:
        raise InvalidInput(f"URI {uri!r} names a store root, not an object or folder inside one")
    parent, _, name = key.rpartition("/")
    root = f"s3://{_join(bucket_or_root, parent)}" if scheme == "s3" else f"file:///{parent}"
    return open_store(root, s3), name
