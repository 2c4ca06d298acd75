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

A runtime is called from one worker thread at a time (the micro-batcher's executor), never from the
event loop.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from modelyard.bundle import BundleMetadata, LoadedBundle
from modelyard.errors import BundleIntegrityError, InvalidInput

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


def class_order(model_classes: Any, metadata: BundleMetadata, *, label: str) -> np.ndarray | None:
    """Column indices that reorder the model's predict_proba into ``metadata.classes`` order.

    None when the orders already agree (the usual case: training records ``model.classes_``).
    BundleIntegrityError when the model knows other classes than the metadata lists.
    """
    found = [_plain_label(c) for c in np.asarray(model_classes).tolist()]
    expected = list(metadata.classes)
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
    expected = metadata.feature_names
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
        self._order = class_order(model_classes, metadata, label=label)
        _single_threaded(model)
        self._model = model
        self._metadata = metadata
        self.classes: list[ClassLabel] = list(metadata.classes)

    @property
    def model(self) -> Any:
        return self._model

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        check_columns(frame, self._metadata)
        proba = np.asarray(self._model.predict_proba(frame), dtype=np.float64)
        if self._order is not None:
            proba = proba[:, self._order]
        return proba


def load_runtime(bundle: LoadedBundle, *, prefer_onnx: bool) -> ModelRuntime:
    """The runtime for a loaded (already verified) bundle.

    With ``prefer_onnx`` the ONNX runtime is used when the bundle's metadata records that publishing
    verified ``model.onnx`` against scikit-learn on the holdout and the file is listed in the manifest
    (so its checksum was verified with the rest of the bundle); otherwise, or if ONNX Runtime cannot
    load it, scikit-learn. ``runtime.kind`` tells which one answered.
    """
    label = str(bundle.path)
    if prefer_onnx:
        onnx_runtime = _try_onnx(bundle, label)
        if onnx_runtime is not None:
            return onnx_runtime
    return SklearnRuntime(bundle.model, bundle.metadata, label=label)


def _try_onnx(bundle: LoadedBundle, label: str) -> ModelRuntime | None:
    # The ONNX path arrives with modelyard.onnx_export; until then every bundle is served by sklearn.
    return None


__all__ = [
    "ONNX",
    "SKLEARN",
    "ModelRuntime",
    "SklearnRuntime",
    "check_columns",
    "class_order",
    "load_runtime",
]
