"""The model bundle: the one contract between training (which writes it) and serving (which reads it).

A bundle is a folder::

    model.joblib     the fitted estimator (a scikit-learn Pipeline), joblib-pickled
    metadata.json    BundleMetadata: input schema, class labels, metrics, provenance, library versions,
                     drift reference statistics, and the sha256 of every other file
    model-card.md    the human summary
    report.html      the evaluation report
    evaluation.json  the holdout evaluation and the run's candidates, as data (training writes it)
    ...              optional extra files (e.g. model.onnx), listed in metadata.json like the rest

``metadata.json`` is the manifest: it is written last, and published last (see ``modelyard.storage``),
so a bundle without it is unfinished. Readers verify every file against its sha256 BEFORE anything is
unpickled, and refuse a bundle with a missing, altered or unlisted file, naming the file: unpickling is
code execution, so only the exact bytes training wrote may ever reach ``joblib.load``.

``format_version`` changes whenever a reader of the previous version could misread a bundle (a new
required field, a changed meaning); readers refuse versions they do not know.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.errors import BundleIntegrityError, Conflict, InvalidInput, NotFound
from modelyard.settings import S3Settings
from modelyard.spec import NAME_PATTERN, FeatureSpec
from modelyard.storage import (
    MANIFEST_NAME,
    FileStore,
    ObjectStore,
    atomic_write,
    check_key,
    open_store_from_uri,
)

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})

MODEL_FILE = "model.joblib"
MODEL_CARD_FILE = "model-card.md"
REPORT_FILE = "report.html"
EVALUATION_FILE = "evaluation.json"
"""Optional: the holdout evaluation (confusion matrix, ROC curves) and the run's candidates, as JSON."""
REQUIRED_FILES = (MODEL_FILE, MODEL_CARD_FILE, REPORT_FILE)
"""Files every bundle has besides metadata.json."""

_SHA256_HEX = frozenset("0123456789abcdef")
_LIBRARIES = ("modelyard", "scikit-learn", "numpy", "scipy", "pandas", "joblib", "optuna")


def current_library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a pickled model depends on, in this process."""
    versions = {"python": platform.python_version()}
    for distribution in _LIBRARIES:
        try:
            versions[distribution] = version(distribution)
        except PackageNotFoundError:
            versions[distribution] = "not installed"
    return versions


def _plain(value: Any, where: str) -> Any:
    """Turn numpy scalars/arrays, enums, paths, dates and tuples into plain JSON values."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return _plain(value.value, where)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return _plain(value.tolist(), where)
    raise ValueError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def _plain_params(value: Any) -> Any:
    """Hyper-parameters may hold estimator objects (nested Pipelines); record those by their repr."""
    if isinstance(value, Mapping):
        return {str(k): _plain_params(v) for k, v in value.items()}
    try:
        return _plain(value, "params")
    except ValueError:
        return repr(value)


class OnnxInput(BaseModel):
    """One input of model.onnx: which feature columns feed it, and as what tensor type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the ONNX graph's input name")
    columns: list[str] = Field(min_length=1, description="feature columns, in order, as [N, len(columns)]")
    type: Literal["double", "string"] = Field(description="double for numeric, string for categorical")


class OnnxInfo(BaseModel):
    """How publishing fared exporting the model to ONNX: verified (``file`` set) or ``skipped`` (why).

    A verified export's probabilities matched scikit-learn's within ``tolerance`` on every one of
    ``rows_checked`` holdout rows; only then may a server run it instead of the pickled model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = Field(default=None, description="the ONNX file in the bundle, when verified")
    skipped: str | None = Field(default=None, description="why there is no ONNX model")
    max_abs_diff: float | None = Field(default=None, ge=0, description="largest |onnx - sklearn| seen")
    rows_checked: int | None = Field(default=None, ge=0, description="holdout rows compared")
    tolerance: float | None = Field(default=None, gt=0, description="the largest difference allowed")
    opset: dict[str, int] = Field(default_factory=dict, description="opset version by domain")
    inputs: list[OnnxInput] = Field(default_factory=list, description="the graph's inputs, in order")
    probabilities: str | None = Field(default=None, description="name of the [N, n_classes] output")
    classes: list[str | int] = Field(default_factory=list, description="column order of that output")
    missing_category: str | None = Field(
        default=None, description="the string that stands for a missing categorical value"
    )
    converter_versions: dict[str, str] = Field(default_factory=dict, description="skl2onnx, onnx, ...")

    @field_validator("classes", mode="before")
    @classmethod
    def _plain_classes(cls, value: Any) -> Any:
        return _plain(value, "onnx.classes")

    @model_validator(mode="after")
    def _verified_or_skipped(self) -> OnnxInfo:
        if (self.file is None) == (self.skipped is None):
            raise ValueError("exactly one of file (a verified export) or skipped (the reason) must be set")
        if self.file is not None:
            try:
                check_key(self.file, what="onnx file name")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
            needed = {
                "max_abs_diff": self.max_abs_diff,
                "rows_checked": self.rows_checked,
                "tolerance": self.tolerance,
                "probabilities": self.probabilities,
            }
            missing = [name for name, value in needed.items() if value is None]
            if not self.inputs:
                missing.append("inputs")
            if not self.classes:
                missing.append("classes")
            if missing:
                raise ValueError(f"a verified export needs {', '.join(missing)}")
            if self.rows_checked == 0:
                raise ValueError("a verified export must have checked at least one holdout row")
            if any(i.type == "string" for i in self.inputs) and self.missing_category is None:
                raise ValueError("a verified export with string inputs needs missing_category")
            if (
                self.max_abs_diff is not None
                and self.tolerance is not None
                and self.max_abs_diff > self.tolerance
            ):
                raise ValueError(
                    f"max_abs_diff {self.max_abs_diff} exceeds the tolerance {self.tolerance}: "
                    "such an export must be skipped, not kept"
                )
        return self

    @property
    def verified(self) -> bool:
        return self.file is not None


class BundleMetadata(BaseModel):
    """metadata.json. Fields serving relies on (name, target, features, classes) are required and typed."""

    # A misspelled or unknown field is refused: new fields come with a new format_version.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")

    format_version: int = Field(default=BUNDLE_FORMAT_VERSION, description="the bundle layout's version")
    name: str = Field(pattern=NAME_PATTERN, description="the model's name (a DNS-1123 label)")
    algorithm: str = Field(min_length=1, description="the estimator family, e.g. random_forest")
    target: str = Field(min_length=1, description="the column the model predicts")
    features: list[FeatureSpec] = Field(min_length=1, description="the input schema, in column order")
    classes: list[str | int] = Field(min_length=1, description="class labels, in predict_proba order")
    metrics: dict[str, float] = Field(default_factory=dict, description="holdout metrics by name")
    params: dict[str, Any] = Field(default_factory=dict, description="the chosen hyper-parameters")
    dataset_fingerprint: str = Field(min_length=1, description="fingerprint of the training data")
    dataset: str | None = Field(
        default=None, pattern=r"^[^@\s]+@[^@\s]+$", description="NAME@VERSION of a registry dataset"
    )
    library_versions: dict[str, str] = Field(
        default_factory=current_library_versions, description="python and library versions at training"
    )
    reference_stats: dict[str, Any] = Field(
        default_factory=dict, description="per-feature drift reference (opaque here)"
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC), description="UTC, ISO 8601")
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 (hex) of every file but metadata.json"
    )
    onnx: OnnxInfo | None = Field(
        default=None, description="the ONNX export: verified against sklearn, or why it was skipped"
    )

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value not in SUPPORTED_FORMAT_VERSIONS:
            known = ", ".join(str(v) for v in sorted(SUPPORTED_FORMAT_VERSIONS))
            raise ValueError(f"format_version {value} is not supported (this modelyard reads: {known})")
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _plain_classes(cls, value: Any) -> Any:
        value = _plain(value, "classes")
        if isinstance(value, list):
            for label in value:
                if isinstance(label, bool) or not isinstance(label, str | int):
                    raise ValueError(f"class labels must be strings or integers, got {label!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"class labels must be unique, got {value}")
        return value

    @field_validator("metrics", mode="before")
    @classmethod
    def _plain_metrics(cls, value: Any) -> Any:
        return _plain(value, "metrics")

    @field_validator("params", mode="before")
    @classmethod
    def _plain_params(cls, value: Any) -> Any:
        return _plain_params(value)

    @field_validator("reference_stats", mode="before")
    @classmethod
    def _plain_reference_stats(cls, value: Any) -> Any:
        return _plain(value, "reference_stats")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a timezone (UTC)")
        return value.astimezone(UTC)

    @field_validator("files")
    @classmethod
    def _safe_files(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            try:
                check_key(name, what="file name")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
            if name == MANIFEST_NAME:
                raise ValueError(f"{MANIFEST_NAME} cannot list itself")
            if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
                raise ValueError(f"{name}: {digest!r} is not a lowercase hex sha256 digest")
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _consistent_schema(self) -> BundleMetadata:
        names = [feature.name for feature in self.features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"features: declared more than once: {', '.join(repeated)}")
        if self.target in names:
            raise ValueError(f"features: the target {self.target!r} cannot also be a feature")
        if self.onnx is not None and self.onnx.file is not None:
            if self.files and self.onnx.file not in self.files:
                raise ValueError(f"onnx: {self.onnx.file} is not among the bundle's files")
            unknown = sorted({c for i in self.onnx.inputs for c in i.columns} - set(names))
            if unknown:
                raise ValueError(f"onnx: inputs read columns that are not features: {', '.join(unknown)}")
            if set(self.onnx.classes) != set(self.classes) or len(self.onnx.classes) != len(self.classes):
                raise ValueError(f"onnx: classes {self.onnx.classes} differ from the bundle's {self.classes}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def to_json_bytes(self) -> bytes:
        """The exact bytes written to metadata.json."""
        return self.model_dump_json(indent=2).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle with its model unpickled."""

    model: Any
    metadata: BundleMetadata
    path: Path


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _check_extra_files(extra_files: Mapping[str, bytes]) -> None:
    reserved = {*REQUIRED_FILES, MANIFEST_NAME}
    for name, content in extra_files.items():
        check_key(name, what="extra file name")
        if name in reserved:
            raise InvalidInput(
                f"extra file {name!r} would replace a standard bundle file; choose another name"
            )
        if not isinstance(content, bytes):
            raise InvalidInput(f"extra file {name!r} must be bytes, got {type(content).__name__}")


def write_bundle(
    dest_dir: Path | str,
    *,
    model: Any,
    metadata: BundleMetadata,
    model_card: str,
    report_html: str,
    extra_files: Mapping[str, bytes] | None = None,
) -> BundleMetadata:
    """Write a bundle into ``dest_dir`` (absent or empty) and return its metadata with ``files`` filled in.

    The files are written into a hidden sibling folder, metadata.json last, and the folder is renamed into
    place: ``dest_dir`` appears complete or not at all. ``metadata.files`` is computed here; any value
    passed in is replaced.
    """
    dest = Path(dest_dir)
    refused = f"cannot write a bundle into {dest}: it exists and is not empty"
    if _is_nonempty(dest):
        raise Conflict(refused)
    extras = dict(extra_files or {})
    _check_extra_files(extras)
    with atomic_write(dest, refused=refused) as partial:
        partial.mkdir()
        import joblib

        try:
            joblib.dump(model, partial / MODEL_FILE)
        except Exception as exc:
            raise InvalidInput(f"cannot pickle the model for {dest}: {type(exc).__name__}: {exc}") from exc
        (partial / MODEL_CARD_FILE).write_bytes(model_card.encode("utf-8"))
        (partial / REPORT_FILE).write_bytes(report_html.encode("utf-8"))
        for name, content in extras.items():
            target = partial.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        names = [*REQUIRED_FILES, *extras]
        digests = {name: _sha256(partial.joinpath(*name.split("/"))) for name in names}
        final = BundleMetadata.model_validate({**metadata.model_dump(), "files": digests})
        (partial / MANIFEST_NAME).write_bytes(final.to_json_bytes())
    return final


def _read_metadata(root: Path, label: str) -> BundleMetadata:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleIntegrityError(
            f"bundle {label} has no {MANIFEST_NAME}: without its manifest a bundle is incomplete",
            file=MANIFEST_NAME,
        )
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleIntegrityError(
            f"bundle {label}: {MANIFEST_NAME} is not valid JSON: {exc}", file=MANIFEST_NAME
        ) from None
    if not isinstance(raw, dict):
        raise BundleIntegrityError(
            f"bundle {label}: {MANIFEST_NAME} must hold a JSON object, got {type(raw).__name__}",
            file=MANIFEST_NAME,
        )
    found = raw.get("format_version")
    if isinstance(found, bool) or not isinstance(found, int):
        raise BundleIntegrityError(
            f"bundle {label}: {MANIFEST_NAME} has no integer format_version (found {found!r})",
            file=MANIFEST_NAME,
        )
    if found not in SUPPORTED_FORMAT_VERSIONS:
        known = ", ".join(str(v) for v in sorted(SUPPORTED_FORMAT_VERSIONS))
        raise BundleIntegrityError(
            f"bundle {label} has format_version {found}, but this modelyard "
            f"({current_library_versions()['modelyard']}) reads only format_version {known}: "
            "upgrade modelyard to load it",
            file=MANIFEST_NAME,
        )
    try:
        return BundleMetadata.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'metadata'}: "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise BundleIntegrityError(
            f"bundle {label}: {MANIFEST_NAME} is invalid: {problems}", file=MANIFEST_NAME
        ) from None


def _unlisted_entries(root: Path, listed: set[str]) -> list[str]:
    """Files (and linked folders) under ``root`` that metadata.json does not list."""
    found: list[str] = []
    for folder, dirnames, filenames in os.walk(root):
        base = Path(folder)
        for name in dirnames:
            if (base / name).is_symlink():
                found.append((base / name).relative_to(root).as_posix())
        for name in filenames:
            rel = (base / name).relative_to(root).as_posix()
            if rel not in listed:
                found.append(rel)
    return sorted(found)


def _verify(root: Path, label: str) -> BundleMetadata:
    if not root.is_dir():
        raise NotFound(f"no bundle at {label}: not a directory")
    metadata = _read_metadata(root, label)
    problems: list[tuple[str, str]] = []
    for name in REQUIRED_FILES:
        if name not in metadata.files:
            problems.append((name, f"{name} is not listed in {MANIFEST_NAME}"))
    for name, expected in metadata.files.items():
        path = root.joinpath(*name.split("/"))
        if not path.is_file():
            problems.append((name, f"{name} is listed in {MANIFEST_NAME} but missing"))
            continue
        actual = _sha256(path)
        if actual != expected:
            problems.append((name, f"{name} was altered: expected sha256 {expected}, found {actual}"))
    for name in _unlisted_entries(root, {*metadata.files, MANIFEST_NAME}):
        problems.append((name, f"{name} is not listed in {MANIFEST_NAME}"))
    if problems:
        details = "; ".join(message for _, message in problems)
        raise BundleIntegrityError(f"bundle {label} failed verification: {details}", file=problems[0][0])
    return metadata


def verify_bundle(local_dir: Path | str) -> BundleMetadata:
    """Check a local bundle against its manifest without unpickling anything; return its metadata.

    BundleIntegrityError (naming the file) when metadata.json is missing or malformed, when a listed file
    is missing or does not match its sha256, or when a file is present but not listed.
    """
    root = Path(local_dir)
    return _verify(root, str(root))


def _warn_on_version_drift(metadata: BundleMetadata, label: str) -> None:
    trained = metadata.library_versions.get("scikit-learn")
    installed = current_library_versions()["scikit-learn"]
    if trained and trained != installed:
        logger.warning(
            "bundle %s was trained with scikit-learn %s but this process has %s; "
            "loading may fail or predictions may differ",
            label,
            trained,
            installed,
        )


def load_bundle(local_dir: Path | str) -> LoadedBundle:
    """Verify a local bundle, then unpickle its model."""
    root = Path(local_dir)
    metadata = verify_bundle(root)
    _warn_on_version_drift(metadata, str(root))
    import joblib

    try:
        model = joblib.load(root / MODEL_FILE)
    except Exception as exc:
        raise BundleIntegrityError(
            f"bundle {root}: {MODEL_FILE} could not be unpickled: {type(exc).__name__}: {exc}",
            file=MODEL_FILE,
        ) from exc
    if not callable(getattr(model, "predict", None)):
        raise BundleIntegrityError(
            f"bundle {root}: {MODEL_FILE} holds a {type(model).__name__}, which has no predict()",
            file=MODEL_FILE,
        )
    return LoadedBundle(model=model, metadata=metadata, path=root)


def manifest_digest(local_dir: Path | str) -> str:
    """sha256 (hex) of metadata.json: one digest that pins every file of the bundle."""
    path = Path(local_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleIntegrityError(f"bundle {local_dir} has no {MANIFEST_NAME}", file=MANIFEST_NAME)
    return _sha256(path)


def publish_bundle(local_dir: Path | str, store: ObjectStore, key: str) -> str:
    """Verify a local bundle, then publish it atomically at ``key`` in ``store``; return its URI."""
    verify_bundle(local_dir)
    return store.publish_dir(local_dir, key)


def fetch_bundle(uri: str, dest_dir: Path | str, s3: S3Settings | None = None) -> Path:
    """Download the bundle published at ``uri`` into ``dest_dir``, verify it and return the local folder.

    A ``file://`` bundle is already local: it is verified where it is and that path is returned
    (``dest_dir`` is unused). An ``s3://`` bundle is downloaded into a hidden sibling of ``dest_dir``,
    verified, then renamed into place, so ``dest_dir`` never holds a partial bundle. ``dest_dir`` must be
    absent or empty, or already hold this very bundle (then nothing is downloaded).
    """
    store, key = open_store_from_uri(uri, s3)
    missing = f"no published bundle at {uri}: {uri}/{MANIFEST_NAME} does not exist"
    if isinstance(store, FileStore):
        local = store.root.joinpath(key)
        if not (local / MANIFEST_NAME).is_file():
            raise NotFound(missing)
        _verify(local, uri)
        return local
    # Only a present manifest makes a version published: it is uploaded after every other file.
    try:
        manifest = store.get_bytes(f"{key}/{MANIFEST_NAME}")
    except NotFound:
        raise NotFound(missing) from None
    dest = Path(dest_dir)
    if _is_nonempty(dest):
        if (dest / MANIFEST_NAME).is_file() and (dest / MANIFEST_NAME).read_bytes() == manifest:
            _verify(dest, str(dest))
            return dest
        raise Conflict(f"cannot fetch {uri} into {dest}: it is not empty and holds something else")
    with atomic_write(dest, refused=f"cannot fetch {uri} into {dest}: it is not empty") as partial:
        store.download_dir(key, partial)
        if (partial / MANIFEST_NAME).read_bytes() != manifest:
            raise BundleIntegrityError(
                f"bundle {uri}: {MANIFEST_NAME} changed while it was downloaded", file=MANIFEST_NAME
            )
        _verify(partial, uri)
    return dest


__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "MODEL_CARD_FILE",
    "MODEL_FILE",
    "REPORT_FILE",
    "REQUIRED_FILES",
    "BundleMetadata",
    "LoadedBundle",
    "OnnxInfo",
    "OnnxInput",
    "current_library_versions",
    "fetch_bundle",
    "load_bundle",
    "manifest_digest",
    "publish_bundle",
    "verify_bundle",
    "write_bundle",
]
