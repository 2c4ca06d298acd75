"""The drift reference: how the training data and the holdout predictions fall into bins, for online drift.

:func:`drift_reference` returns plain JSON that training stores in the bundle's metadata as
``reference_stats["drift"]`` (format ``modelyard.drift/v1``)::

    {
      "format": "modelyard.drift/v1",
      "rows": 1200, "holdout_rows": 300,
      "features": {
        "<numeric>":     {"type": "numeric", "edges": [e0, ..., em], "bins": ["<e0", "e0..e1", ..., ">em",
                          "(missing)"], "shares": [...]},
        "<categorical>": {"type": "categorical", "values": ["red", ...], "bins": ["red", ..., "(other)",
                          "(missing)"], "shares": [...]},
        "<text>":        {"type": "text", "edges": [...], "bins": [...], "shares": [...],   # tokens per row
                          "vocabulary": ["the", ...], "oov_rate": 0.04}
      },
      "outputs": {"class": {"type": "categorical", ...}, "confidence": {"type": "numeric", ...}},
      "calibration": {"accuracy": [...], "holdout_accuracy": 0.93}
    }

Numeric edges are the observed quantiles 0, 0.1, ..., 1 of the reference (repeats removed). A value
falls in the interior bin ``[e(i-1), e(i))`` (the last one closed), below ``e0`` in the low tail, above
``em`` in the high tail, and a missing value in its own bin; so a live value outside the training range
is visible rather than folded into an end bin. Categoricals keep their ``top_k`` values; text is binned by
tokens per row (``str.split()``) and its out-of-vocabulary rate is the share of lower-cased tokens not in
``vocabulary`` (the ``vocabulary_size`` most frequent reference tokens). The outputs are the predicted
class and the confidence (the highest probability) on the holdout. ``calibration.accuracy`` is the
holdout accuracy of the rows in each confidence bin, which turns a window of live confidences into a
confidence-based estimate of accuracy (CBPE) where no labels exist.

:class:`Binning` compiles a reference into one flat vector of bins and counts a batch of rows into it
with a few numpy operations; it computes the reference shares here and the live counts in the server, so
both sides bin alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import InvalidInput
from modelyard.spec import FeatureSpec, FeatureType

DRIFT_FORMAT = "modelyard.drift/v1"
OTHER_BIN = "(other)"
MISSING_BIN = "(missing)"
CLASS_OUTPUT = "class"
CONFIDENCE_OUTPUT = "confidence"
# Longer category values are labelled by rank: label values must stay short and safe to display.
MAX_BIN_LABEL = 60


def drift_reference(
    frame: pd.DataFrame,
    features: Sequence[FeatureSpec],
    *,
    holdout_probabilities: np.ndarray | None = None,
    holdout_labels: Sequence[Any] | None = None,
    classes: Sequence[Any] | None = None,
    bins: int = 10,
    top_k: int = 20,
    vocabulary_size: int = 5000,
) -> dict[str, Any]:
    """Bin ``frame``'s features and, when given, the holdout's predictions (format in the module doc).

    ``holdout_probabilities`` is ``predict_proba`` of the holdout ([rows, classes], columns in ``classes``
    order) and ``holdout_labels`` its true labels; without them the reference has no outputs and no
    calibration, and the server reports feature drift only.
    """
    if bins < 1 or top_k < 1 or vocabulary_size < 1:
        raise InvalidInput(
            f"bins, top_k and vocabulary_size must be at least 1, got bins={bins}, top_k={top_k}, "
            f"vocabulary_size={vocabulary_size}"
        )
    missing = [f.name for f in features if f.name not in frame.columns]
    if missing:
        raise InvalidInput(
            f"cannot profile columns that are not in the data: {', '.join(map(repr, missing))}"
        )
    described: dict[str, Any] = {}
    for feature in features:
        column = frame[feature.name]
        if feature.type is FeatureType.NUMERIC:
            numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            described[feature.name] = _numeric_bins(numbers, bins)
        elif feature.type is FeatureType.CATEGORICAL:
            described[feature.name] = _categorical_bins(column.dropna().map(str), top_k)
        else:
            texts = column.dropna().map(str)
            tokens = texts.map(lambda text: len(text.split())).to_numpy(dtype="float64")
            described[feature.name] = _numeric_bins(tokens, bins, kind=FeatureType.TEXT.value)
            words = texts.str.lower().str.split().explode().dropna().value_counts()
            ranked = sorted(words.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))[:vocabulary_size]
            described[feature.name]["vocabulary"] = [str(word) for word, _ in ranked]
    reference: dict[str, Any] = {"format": DRIFT_FORMAT, "rows": len(frame), "features": described}
    numeric_names = [f.name for f in features if f.type is FeatureType.NUMERIC]
    binning = Binning(reference, numeric_names)
    counts = binning.count(_numeric_matrix(frame, numeric_names), _other_columns(frame, features))
    _store_shares(binning, counts, described)
    for name in binning.text_features:
        tokens, oov = binning.token_counts(counts, name)
        described[name]["oov_rate"] = oov / tokens if tokens else 0.0
    if holdout_probabilities is not None and holdout_labels is not None and classes is not None:
        reference.update(_output_reference(holdout_probabilities, holdout_labels, classes, bins))
    return reference


def _numeric_bins(numbers: np.ndarray, bins: int, kind: str = FeatureType.NUMERIC.value) -> dict[str, Any]:
    finite = numbers[np.isfinite(numbers)]
    if finite.size == 0:
        return {"type": kind, "edges": [], "bins": [MISSING_BIN], "shares": []}
    # "lower" keeps every edge an observed value: no edge falls between two discrete values.
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1), method="lower"))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    values = [float(edge) for edge in edges]
    labels = [f"<{values[0]:.4g}"]
    labels += [f"{lo:.4g}..{hi:.4g}" for lo, hi in itertools.pairwise(values)]
    labels += [f">{values[-1]:.4g}", MISSING_BIN]
    return {"type": kind, "edges": values, "bins": _unique_labels(labels), "shares": []}


def _categorical_bins(values: pd.Series, top_k: int) -> dict[str, Any]:
    counts = values.value_counts()
    ranked = sorted(((str(key), int(count)) for key, count in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    kept = [value for value, _ in ranked[:top_k]]
    labels = [
        value if len(value) <= MAX_BIN_LABEL and value.isprintable() else f"#{i + 1}"
        for i, value in enumerate(kept)
    ]
    return {
        "type": FeatureType.CATEGORICAL.value,
        "values": kept,
        "bins": _unique_labels([*labels, OTHER_BIN, MISSING_BIN]),
        "shares": [],
    }


def _unique_labels(labels: list[str]) -> list[str]:
    seen: set[str] = set()
    unique = []
    for i, label in enumerate(labels):
        unique.append(label if label not in seen else f"{label}#{i + 1}")
        seen.add(unique[-1])
    return unique


def _store_shares(binning: Binning, counts: np.ndarray, described: Mapping[str, Any]) -> None:
    for name, window in binning.slices.items():
        part = counts[window]
        total = int(part.sum())
        described[name]["shares"] = [float(c) / total if total else 0.0 for c in part]


def _output_reference(
    probabilities: np.ndarray, labels: Sequence[Any], classes: Sequence[Any], bins: int
) -> dict[str, Any]:
    matrix = np.asarray(probabilities, dtype="float64")
    if matrix.ndim != 2 or matrix.shape != (len(labels), len(classes)):
        raise InvalidInput(
            f"holdout probabilities must be [rows, classes] = [{len(labels)}, {len(classes)}], "
            f"got {list(matrix.shape)}"
        )
    names = [str(c) for c in classes]
    predicted = np.array(names, dtype=object)[np.argmax(matrix, axis=1)]
    correct = predicted == np.array([str(label) for label in labels], dtype=object)
    confidence = matrix.max(axis=1)
    outputs = {
        CLASS_OUTPUT: _categorical_bins(pd.Series(predicted, dtype=object), len(names)),
        CONFIDENCE_OUTPUT: _numeric_bins(confidence, bins),
    }
    outputs[CLASS_OUTPUT]["values"] = names  # every class, predicted on the holdout or not
    outputs[CLASS_OUTPUT]["bins"] = _unique_labels([*names, OTHER_BIN, MISSING_BIN])
    reference = {"holdout_rows": len(labels), "features": {}, "outputs": outputs}
    binning = Binning(reference, [])
    counts = binning.count_outputs(matrix)
    _store_shares(binning, counts, outputs)
    # Accuracy per confidence bin, pulled towards the overall accuracy by one pseudo-row so a bin of one
    # row does not claim 0% or 100%. The tails (confidences the holdout never had) take their neighbour's.
    overall = float(correct.mean()) if correct.size else 0.0
    confidence_bins = binning.bin_numeric_output(confidence)
    size = len(outputs[CONFIDENCE_OUTPUT]["bins"])
    rows = np.bincount(confidence_bins, minlength=size).astype("float64")
    hits = np.bincount(confidence_bins, weights=correct.astype("float64"), minlength=size)
    accuracy = (hits + overall) / (rows + 1.0)
    if size > 3:
        accuracy[0], accuracy[size - 2] = accuracy[1], accuracy[size - 3]
    accuracy[size - 1] = overall
    return {
        "holdout_rows": len(labels),
        "outputs": outputs,
        "calibration": {"accuracy": [float(a) for a in accuracy], "holdout_accuracy": overall},
    }


def _numeric_matrix(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    if not names:
        return np.empty((len(frame), 0), dtype="float64")
    columns = [
        pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for name in names
    ]
    return np.column_stack(columns)


def _other_columns(frame: pd.DataFrame, features: Sequence[FeatureSpec]) -> dict[str, np.ndarray]:
    return {
        f.name: np.array([None if pd.isna(v) else str(v) for v in frame[f.name]], dtype=object)
        for f in features
        if f.type is not FeatureType.NUMERIC
    }


@dataclass(frozen=True)
class _Lookup:
    name: str
    offset: int
    index: dict[str, int]
    other: int
    missing: int


@dataclass(frozen=True)
class _Text:
    name: str
    offset: int
    compiled: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    vocabulary: frozenset[str]
    tokens_slot: int


class Binning:
    """A drift reference compiled for counting: one flat vector holds every tracked feature's bins.

    ``slices[name]`` is where a feature's (or an output's, keyed ``class`` and ``confidence``) bins sit in
    the vector; each text feature also has two slots after all bins, its tokens and its unknown tokens.
    ``numeric_columns`` names the columns of the numeric matrix :meth:`count` takes, in order.
    """

    def __init__(self, reference: Mapping[str, Any], numeric_columns: Sequence[str]) -> None:
        features: Mapping[str, Any] = reference.get("features", {})
        outputs: Mapping[str, Any] = reference.get("outputs", {})
        self.slices: dict[str, slice] = {}
        self.bin_labels: dict[str, list[str]] = {}
        offset = 0

        def place(name: str, labels: list[str]) -> int:
            nonlocal offset
            start = offset
            self.slices[name] = slice(start, start + len(labels))
            self.bin_labels[name] = labels
            offset += len(labels)
            return start

        # numeric features: the matrix columns that have edges (a feature never seen finite has none)
        self._numeric_columns: list[int] = []
        numeric_edges: list[list[float]] = []
        numeric_offsets: list[int] = []
        for column, name in enumerate(numeric_columns):
            described = features.get(name)
            if not described or described.get("type") != FeatureType.NUMERIC.value or not described["edges"]:
                continue
            self._numeric_columns.append(column)
            numeric_edges.append(described["edges"])
            numeric_offsets.append(place(name, list(described["bins"])))
        self._edges, self._last, self._interior, self._offsets = _compile_edges(
            numeric_edges, numeric_offsets
        )
        self._lookups: list[_Lookup] = []
        texts: list[tuple[str, int, dict[str, Any]]] = []
        for name, described in features.items():
            kind = described.get("type")
            if kind == FeatureType.CATEGORICAL.value:
                start = place(name, list(described["bins"]))
                self._lookups.append(_lookup(name, start, described))
            elif kind == FeatureType.TEXT.value and described["edges"]:
                texts.append((name, place(name, list(described["bins"])), described))
        self._outputs: dict[str, Any] = {}
        if CLASS_OUTPUT in outputs:
            self._outputs[CLASS_OUTPUT] = place(CLASS_OUTPUT, list(outputs[CLASS_OUTPUT]["bins"]))
        confidence = outputs.get(CONFIDENCE_OUTPUT)
        if confidence and confidence["edges"]:
            start = place(CONFIDENCE_OUTPUT, list(confidence["bins"]))
            self._outputs[CONFIDENCE_OUTPUT] = _compile_edges([confidence["edges"]], [start])
        self._texts: list[_Text] = []
        for name, start, described in texts:
            compiled = _compile_edges([described["edges"]], [start])
            vocabulary = frozenset(described.get("vocabulary", ()))
            self._texts.append(_Text(name, start, compiled, vocabulary, offset))
            offset += 2
        self.size = offset

    @property
    def features(self) -> list[str]:
        return [name for name in self.slices if name not in self._outputs]

    @property
    def outputs(self) -> list[str]:
        return list(self._outputs)

    @property
    def text_features(self) -> list[str]:
        return [text.name for text in self._texts]

    def count(
        self,
        numeric: np.ndarray,
        other: Mapping[str, np.ndarray],
        probabilities: np.ndarray | None = None,
    ) -> np.ndarray:
        """The bin counts of one batch: ``numeric`` [rows, numeric_columns] with NaN where missing,
        ``other`` the categorical and text columns (str, None where missing), ``probabilities`` the
        model's [rows, classes] answer."""
        positions: list[np.ndarray] = []
        if self._numeric_columns:
            matrix = (
                numeric
                if len(self._numeric_columns) == numeric.shape[1]
                else numeric[:, self._numeric_columns]
            )
            positions.append(
                _bin_matrix(matrix, self._edges, self._last, self._interior, self._offsets).ravel()
            )
        for lookup in self._lookups:
            column = other.get(lookup.name)
            if column is None:
                continue
            index, missing, fallback = lookup.index, lookup.missing, lookup.other
            positions.append(
                np.fromiter(
                    (missing if v is None else index.get(v, fallback) for v in column),
                    dtype=np.intp,
                    count=len(column),
                )
            )
        extra = np.zeros(self.size, dtype=np.int64)
        for text in self._texts:
            column = other.get(text.name)
            if column is None:
                continue
            positions.append(self._bin_text(text, column, extra))
        counts = np.bincount(np.concatenate(positions), minlength=self.size) if positions else extra
        if positions:
            counts = counts + extra
        if probabilities is not None and self._outputs:
            counts = counts + self.count_outputs(probabilities)
        return counts

    def count_outputs(self, probabilities: np.ndarray) -> np.ndarray:
        matrix = np.asarray(probabilities, dtype="float64")
        positions = []
        if matrix.ndim == 2 and matrix.shape[0] and matrix.shape[1]:
            start = self._outputs.get(CLASS_OUTPUT)
            if start is not None:
                positions.append(np.argmax(matrix, axis=1) + start)
            if CONFIDENCE_OUTPUT in self._outputs:
                positions.append(
                    self.bin_numeric_output(matrix.max(axis=1)) + self.slices[CONFIDENCE_OUTPUT].start
                )
        if not positions:
            return np.zeros(self.size, dtype=np.int64)
        return np.bincount(np.concatenate(positions), minlength=self.size)

    def bin_numeric_output(self, confidence: np.ndarray) -> np.ndarray:
        """Bin indices (within the confidence output's bins) of confidence values."""
        edges, last, interior, _ = self._outputs[CONFIDENCE_OUTPUT]
        return _bin_matrix(
            confidence.reshape(-1, 1), edges, last, interior, np.zeros(1, dtype=np.intp)
        ).ravel()

    def token_counts(self, counts: np.ndarray, name: str) -> tuple[int, int]:
        """(tokens, out-of-vocabulary tokens) of text feature ``name`` in ``counts``."""
        for text in self._texts:
            if text.name == name:
                return int(counts[text.tokens_slot]), int(counts[text.tokens_slot + 1])
        raise KeyError(name)

    def _bin_text(self, text: _Text, column: np.ndarray, extra: np.ndarray) -> np.ndarray:
        lengths = np.empty(len(column), dtype="float64")
        tokens = unknown = 0
        vocabulary = text.vocabulary
        for i, value in enumerate(column):
            if value is None:
                lengths[i] = np.nan
                continue
            words = value.lower().split()
            lengths[i] = len(words)
            tokens += len(words)
            unknown += sum(1 for word in words if word not in vocabulary)
        extra[text.tokens_slot] += tokens
        extra[text.tokens_slot + 1] += unknown
        return _bin_matrix(lengths.reshape(-1, 1), *text.compiled).ravel()


def _lookup(name: str, start: int, described: Mapping[str, Any]) -> _Lookup:
    values = list(described["values"])
    return _Lookup(
        name,
        start,
        {v: start + i for i, v in enumerate(values)},
        start + len(values),
        start + len(values) + 1,
    )


def _compile_edges(
    edges: Sequence[Sequence[float]], offsets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges padded with +inf into one [columns, most edges] matrix, each column's last edge, its number of
    interior bins, and its offset in the flat vector."""
    widest = max((len(e) for e in edges), default=0)
    matrix = np.full((len(edges), widest), np.inf)
    for row, values in enumerate(edges):
        matrix[row, : len(values)] = values
    last = np.array([values[-1] for values in edges], dtype="float64")
    interior = np.array([len(values) - 1 for values in edges], dtype=np.intp)
    return matrix, last, interior, np.asarray(offsets, dtype=np.intp)


def _bin_matrix(
    values: np.ndarray, edges: np.ndarray, last: np.ndarray, interior: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Flat-vector positions of every value of ``values`` [rows, columns]: low tail 0, interior bins
    1..m, high tail m+1, missing m+2 (see the module docstring)."""
    reached = np.empty(values.shape, dtype=np.intp)
    for column in range(values.shape[1]):
        # edges <= x, by binary search (a +inf pad is reached only by +inf, which min() caps)
        reached[:, column] = np.searchsorted(edges[column], values[:, column], side="right")
    with np.errstate(invalid="ignore"):
        bins = np.minimum(reached, interior) + (values > last)
    positions: np.ndarray = np.where(np.isnan(values), interior + 2, bins) + offsets
    return positions
