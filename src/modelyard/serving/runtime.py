"""Model runtimes: what turns a DataFrame of features into class probabilities.

A runtime is built from a verified bundle and answers ``predict_proba(frame)`` with one row per input
row and one column per class, in the order of the bundle's ``metadata.classes`` (the order clients see
in ``probabilities``). Two kinds exist:

- ``sklearn``: the bundle's fitted scikit-learn Pipeline, as training left it;
- ``onnx``: ``model.onnx`` run by ONNX Runtime, used only when publishing verified that its
  probabilities match scikit-learn's within tolerance on every holdout row (see
  ``modelyard.onnx_export``), and when the file is listed in the bundle's checksummed manifest.

The input frame is built by the protocol codec: columns exactly ``metadata.feature_names`` in order,
numeric columns float64, categorical and text columns object dtype holding ``str`` (``None`` where
missing). The runtime checks the columns (cheap) but not the values.

``load_runtime(bundle)`` takes a bundle ``load_bundle`` already unpickled; ``open_runtime(folder)``
verifies the folder and unpickles model.joblib only when scikit-learn must answer, so a server on the
ONNX path never imports scikit-learn (a faster cold start, a smaller RSS).

A runtime is called from one worker thread at a time (the micro-batcher's executor), never from the
event loop.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from modelyard.bundle import BundleMetadata, LoadedBundle, OnnxInfo, load_bundle, verify_bundle
from modelyard.cpus import available_cpus
from modelyard.errors import BundleIntegrityError, InvalidInput
from modelyard.spec import FeatureSpec, FeatureType

log = logging.getLogger(__name__)

SKLEARN = "sklearn"
ONNX = "onnx"

ClassLabel = str | int


@runtime_checkable
class ModelRuntime(Protocol):
    """Class probabilities for a frame of features, columns in ``classes`` order."""

    kind: str
    """``"sklearn"`` or ``"onnx"``: which engine answers (shown in metrics and model metadata)."""
    classes: list[ClassLabel]
    """The bundle's class labels: the column order of :meth:`predict_proba`."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """``[len(frame), len(classes)]`` float64 probabilities."""
        ...


def _plain_label(label: Any) -> Any:
    """A numpy scalar as its Python value, so ``np.int64(1)`` and ``1`` compare and hash alike."""
    return label.item() if hasattr(label, "item") else label


def class_order(model_classes: Any, expected: Sequence[ClassLabel], *, label: str) -> np.ndarray | None:
    """Column indices that reorder the model's predict_proba columns into the ``expected`` class order.

    None when the orders already agree (the usual case: training records ``model.classes_``).
    BundleIntegrityError when the model knows other classes than the metadata lists.
    """
    found = [_plain_label(c) for c in np.asarray(model_classes).tolist()]
    expected = list(expected)
    if found == expected:
        return None
    if len(found) != len(expected) or set(found) != set(expected):
        raise BundleIntegrityError(
            f"bundle {label}: the model predicts classes {found} but metadata.json lists {expected}",
            file="metadata.json",
        )
    position = {value: index for index, value in enumerate(found)}
    return np.array([position[value] for value in expected], dtype=np.intp)


def check_columns(frame: pd.DataFrame, metadata: BundleMetadata) -> None:
    """InvalidInput naming missing, unknown or misordered columns; the codec should never send those."""
    check_columns_named(frame, metadata.feature_names)


def check_columns_named(frame: pd.DataFrame, expected: Sequence[str]) -> None:
    expected = list(expected)
    columns = [str(column) for column in frame.columns]
    if columns == expected:
        return
    missing = [name for name in expected if name not in columns]
    unknown = [name for name in columns if name not in expected]
    problems = []
    if missing:
        problems.append(f"missing feature(s): {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown feature(s): {', '.join(unknown)}")
    if not problems:
        problems.append(f"features must come in the order {expected}, got {columns}")
    raise InvalidInput("; ".join(problems))


def _single_threaded(model: Any) -> None:
    """Make a fitted estimator predict on the calling thread.

    Serving calls predict_proba on small batches from one executor thread; ``n_jobs != 1`` would start
    a joblib pool per call, costing milliseconds for a request that needs microseconds.
    """
    get_params = getattr(model, "get_params", None)
    if get_params is None:
        return
    try:
        params = get_params(deep=True)
    except Exception:  # a foreign estimator whose get_params fails: leave it as it is
        return
    updates = {name: 1 for name, value in params.items() if name.rsplit("__", 1)[-1] == "n_jobs"}
    updates = {name: value for name, value in updates.items() if params[name] not in (1, None)}
    if updates:
        model.set_params(**updates)


class SklearnRuntime:
    """The bundle's fitted scikit-learn estimator (a Pipeline: preprocess, then model)."""

    kind = SKLEARN

    def __init__(self, model: Any, metadata: BundleMetadata, *, label: str = "model") -> None:
        if not callable(getattr(model, "predict_proba", None)):
            raise BundleIntegrityError(
                f"bundle {label}: the {type(model).__name__} has no predict_proba(), "
                "so it cannot report class probabilities",
                file="model.joblib",
            )
        model_classes = getattr(model, "classes_", None)
        if model_classes is None:
            raise BundleIntegrityError(
                f"bundle {label}: the {type(model).__name__} has no classes_: is it fitted?",
                file="model.joblib",
            )
        self._order = class_order(model_classes, metadata.classes, label=label)
        _single_threaded(model)
        self._model = model
        self._metadata = metadata
        self.classes: list[ClassLabel] = list(metadata.classes)
        self.onnx_unused: str | None = None
        """Why ONNX Runtime is not answering instead (set by :func:`load_runtime`), for model metadata."""

    @property
    def model(self) -> Any:
        return self._model

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        check_columns(frame, self._metadata)
        proba = np.asarray(self._model.predict_proba(frame), dtype=np.float64)
        if self._order is not None:
            proba = proba[:, self._order]
        return proba


# Estimator families whose ONNX graph is a tree ensemble: ONNX Runtime splits a large batch of one over
# threads (a RandomForest(100) on merged 256-row requests served 40-90% more rows), while more threads
# only slow a small graph such as a linear model's (about 10% fewer single-row requests).
TREE_ENSEMBLES = frozenset({"random_forest", "hist_gradient_boosting"})
MAX_AUTO_ONNX_THREADS = 4


def onnx_threads_for(metadata: BundleMetadata, requested: int) -> int:
    """``requested`` ONNX Runtime threads, or for 0 (automatic): the CPUs this process may use (at most
    4) for a tree ensemble, one thread for any other model."""
    if requested < 0:
        raise ValueError(f"onnx_threads must be >= 0 (0: automatic), got {requested}")
    if requested:
        return requested
    if metadata.algorithm in TREE_ENSEMBLES:
        return min(MAX_AUTO_ONNX_THREADS, available_cpus())
    return 1


def load_runtime(bundle: LoadedBundle, *, prefer_onnx: bool, onnx_threads: int = 1) -> ModelRuntime:
    """The runtime for a loaded (already verified) bundle.

    With ``prefer_onnx`` the ONNX runtime is used when the bundle's metadata records that publishing
    verified ``model.onnx`` against scikit-learn on the holdout and the file is listed in the manifest
    (its bytes are hashed again as they are loaded); otherwise, or if ONNX Runtime cannot load it,
    scikit-learn. ``runtime.kind`` tells which one answers; a SklearnRuntime's ``onnx_unused`` says why.
    """
    label = str(bundle.path)
    reason = "prefer_onnx is off"
    if prefer_onnx:
        onnx_runtime, reason = _try_onnx(bundle.metadata, bundle.path, label, onnx_threads)
        if onnx_runtime is not None:
            return onnx_runtime
    runtime = SklearnRuntime(bundle.model, bundle.metadata, label=label)
    runtime.onnx_unused = reason
    return runtime


def open_runtime(
    local_dir: Path | str, *, prefer_onnx: bool, onnx_threads: int = 1
) -> tuple[ModelRuntime, BundleMetadata]:
    """Verify the bundle in ``local_dir`` and build its runtime, unpickling the model only if needed.

    Same choice as :func:`load_runtime`, but a bundle served by ONNX Runtime never has model.joblib
    unpickled: scikit-learn and scipy are not even imported. For a RandomForest(100) bundle that is
    about 1.2 s of cold start and 100 MB of RSS saved. Every file is verified against the manifest first.
    """
    root = Path(local_dir)
    metadata = verify_bundle(root)
    reason = "prefer_onnx is off"
    if prefer_onnx:
        onnx_runtime, reason = _try_onnx(metadata, root, str(root), onnx_threads)
        if onnx_runtime is not None:
            return onnx_runtime, metadata
    bundle = load_bundle(root)
    runtime = SklearnRuntime(bundle.model, bundle.metadata, label=str(root))
    runtime.onnx_unused = reason
    return runtime, bundle.metadata


def onnx_unavailable_reason(metadata: BundleMetadata) -> str | None:
    """Why this bundle cannot be served by ONNX Runtime, or None when it can."""
    info = metadata.onnx
    if info is None:
        return "the bundle records no ONNX export (published before ONNX support, or without it)"
    if info.file is None:
        return f"publishing skipped the ONNX export: {info.skipped}"
    if info.file not in metadata.files:
        return f"{info.file} is not listed in the bundle's manifest"
    return None


def _try_onnx(
    metadata: BundleMetadata, root: Path, label: str, threads: int
) -> tuple[ModelRuntime | None, str]:
    reason = onnx_unavailable_reason(metadata)
    if reason is not None:
        return None, reason
    try:
        runtime = OnnxRuntime.from_dir(root, metadata, threads=onnx_threads_for(metadata, threads))
    except BundleIntegrityError:
        raise  # a tampered model.onnx is a bad bundle, not a reason to quietly use the other model
    except Exception as exc:  # onnxruntime missing, or too old for the opset: serve with sklearn
        reason = f"onnxruntime could not load the bundle's ONNX model: {type(exc).__name__}: {exc}"
        log.warning("bundle %s: %s; serving with scikit-learn", label, reason)
        return None, reason
    return runtime, ""


def served_frame(frame: pd.DataFrame, features: Sequence[FeatureSpec]) -> pd.DataFrame:
    """``frame``'s feature columns as the protocol codec builds them: numeric float64 with NaN for
    missing, categorical and text as object columns of ``str`` with None for missing.

    Used to compare runtimes on exactly the inputs a server would give them.
    """
    columns: dict[str, Any] = {}
    for feature in features:
        column = frame[feature.name]
        if feature.type is FeatureType.NUMERIC:
            columns[feature.name] = pd.to_numeric(column, errors="raise").astype(np.float64)
        else:
            values = column.astype(object)
            columns[feature.name] = values.where(values.isna(), values.map(str)).where(values.notna(), None)
    return pd.DataFrame(columns, index=frame.index)


class OnnxRuntime:
    """A ``model.onnx`` whose probabilities publishing verified against scikit-learn, run by ONNX Runtime.

    Sequential execution, ``threads`` intra-op threads (default 1) that sleep rather than spin between
    calls: the server calls it from one thread, and a spinning pool would take the CPU the event loop
    needs. More than one thread pays off on large batches of tree ensembles (a RandomForest(100) on
    1,024 rows), and costs a little on single rows.
    """

    kind = ONNX

    def __init__(
        self,
        model: bytes,
        info: OnnxInfo,
        classes: Sequence[ClassLabel],
        *,
        feature_names: Sequence[str],
        label: str = "model",
        threads: int = 1,
    ) -> None:
        import onnxruntime

        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")

        if info.file is None or info.probabilities is None:
            raise BundleIntegrityError(
                f"bundle {label}: the ONNX export was not verified ({info.skipped})", file="metadata.json"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the graph's unused label output is not a warning
        self._session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._check_signature(info, label)
        self._inputs = [(i.name, list(i.columns), i.type) for i in info.inputs]
        self._all_columns = list(feature_names)
        self._output = [info.probabilities]
        self._missing = info.missing_category
        self._feature_names = list(feature_names)
        self._order = class_order(info.classes, classes, label=label)
        self.classes: list[ClassLabel] = list(classes)
        # One float64 input over every feature in order: the server can feed its feature matrix as is.
        only = self._inputs[0] if len(self._inputs) == 1 else None
        self.takes_numeric_matrix = only is not None and only[1] == self._all_columns and only[2] == "double"

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle, *, threads: int = 1) -> OnnxRuntime:
        return cls.from_dir(bundle.path, bundle.metadata, threads=threads)

    @classmethod
    def from_dir(cls, root: Path, metadata: BundleMetadata, *, threads: int = 1) -> OnnxRuntime:
        """Read model.onnx once, check it against the manifest's sha256, and load it from those bytes."""
        info = metadata.onnx
        label = str(root)
        if info is None or info.file is None:
            raise BundleIntegrityError(f"bundle {label} has no verified ONNX model", file="metadata.json")
        expected = metadata.files.get(info.file)
        path = root.joinpath(*info.file.split("/"))
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise BundleIntegrityError(
                f"bundle {label}: cannot read {info.file}: {exc}", file=info.file
            ) from None
        actual = hashlib.sha256(content).hexdigest()
        if actual != expected:
            raise BundleIntegrityError(
                f"bundle {label}: {info.file} was altered: expected sha256 {expected}, found {actual}",
                file=info.file,
            )
        names = metadata.feature_names
        return cls(content, info, metadata.classes, feature_names=names, label=label, threads=threads)

    def _check_signature(self, info: OnnxInfo, label: str) -> None:
        tensor_types = {"double": "tensor(double)", "string": "tensor(string)"}
        found = [(i.name, i.type) for i in self._session.get_inputs()]
        expected = [(i.name, tensor_types[i.type]) for i in info.inputs]
        outputs = [o.name for o in self._session.get_outputs()]
        if found != expected or info.probabilities not in outputs:
            raise BundleIntegrityError(
                f"bundle {label}: model.onnx takes {found} and gives {outputs}, but metadata.json "
                f"describes inputs {expected} and output {info.probabilities!r}",
                file=info.file,
            )

    def _feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, columns, kind in self._inputs:
            if kind == "double":
                if columns == self._all_columns:
                    feeds[name] = frame.to_numpy(dtype=np.float64)
                else:
                    feeds[name] = frame[columns].to_numpy(dtype=np.float64)
            else:
                values = frame[columns].to_numpy(dtype=object)
                missing = pd.isna(values)
                if missing.any():
                    values = values.copy()
                    values[missing] = self._missing
                feeds[name] = values
        return feeds

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        check_columns_named(frame, self._feature_names)
        return self._run(self._feeds(frame))

    def predict_proba_numeric(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for a float64 ``[rows, features]`` matrix, columns in feature order, with no
        DataFrame in between (building one cost more than the prediction on single rows).

        Only for a model that :attr:`takes_numeric_matrix`.
        """
        if not self.takes_numeric_matrix:
            raise InvalidInput("this ONNX model does not take one numeric matrix of every feature")
        if matrix.ndim != 2 or matrix.shape[1] != len(self._all_columns):
            raise InvalidInput(
                f"expected a matrix of {len(self._all_columns)} feature column(s), got shape {matrix.shape}"
            )
        return self._run({self._inputs[0][0]: np.ascontiguousarray(matrix, dtype=np.float64)})

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (proba,) = self._session.run(self._output, feeds)
        proba = np.asarray(proba, dtype=np.float64)
        if self._order is not None:
            proba = proba[:, self._order]
        return proba


__all__ = [
    "ONNX",
    "SKLEARN",
    "ModelRuntime",
    "OnnxRuntime",
    "SklearnRuntime",
    "check_columns",
    "class_order",
    "load_runtime",
    "onnx_unavailable_reason",
    "open_runtime",
    "served_frame",
]
