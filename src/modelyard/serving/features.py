"""Feature handling, numpy only: the model's schema, a request's tensors or instances as a batch of
features, and a prediction as output tensors.

Every client mistake raises ``InvalidInput`` with a message naming the tensor, feature, row or field at
fault. Nothing here knows a wire format or a transport: the REST and gRPC codecs hand in typed tensors
(``types.Tensor``) or V1 instances already parsed from JSON.

**Inputs** (V2). A request carries either

- one input per feature, named like the feature, shape ``[N]`` or ``[N, 1]``: numeric features take any
  integer or float datatype; categorical features take BYTES (or BOOL / integers / floats, turned into
  strings as training does: ``1`` becomes ``"1"``); text features take BYTES; or
- one numeric tensor of shape ``[N, n_features]`` (any name, e.g. ``input-0``), columns in the model's
  feature order. Only for models whose features are all numeric: a model with categorical or text
  features takes one input per feature.

**Missing values and non-finite numbers.** A numeric feature may be missing: JSON ``null`` or a NaN in a
binary tensor, since the training pipeline imputes it (the median). Infinity is refused. A missing
categorical or text value is JSON ``null`` (imputed, or the empty text).

**Outputs**. ``label`` (BYTES ``[N]``, the class names) and ``probabilities`` (FP64 ``[N, n_classes]``,
columns in the order of the model's classes, listed in its metadata). ``"parameters": {"labels_only":
true}`` returns ``label`` alone; ``outputs`` selects outputs explicitly (and then takes precedence).

**V1** ``{"instances": [...]}``: each instance is a list of values in feature order, or an object keyed by
feature name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.bundle import BundleMetadata
from modelyard.errors import InvalidInput
from modelyard.serving.types import (
    LABEL_OUTPUT,
    OUTPUT_NAMES,
    PROBABILITIES_OUTPUT,
    Datatype,
    InferenceRequest,
    Prediction,
    RequestedOutput,
    Tensor,
    TensorMetadata,
)
from modelyard.spec import FeatureType

_MAX_SHOWN = 5


# ---------------------------------------------------------------- the model's schema


class FeatureSchema:
    """The input schema of one bundle: feature names and types, in column order, and its classes."""

    def __init__(self, metadata: BundleMetadata) -> None:
        self.names: list[str] = metadata.feature_names
        self.types: dict[str, FeatureType] = {f.name: f.type for f in metadata.features}
        self.numeric_names = [n for n in self.names if self.types[n] is FeatureType.NUMERIC]
        self.numeric_index = {name: i for i, name in enumerate(self.numeric_names)}
        self.all_numeric = len(self.numeric_names) == len(self.names)
        self.classes: list[str | int] = list(metadata.classes)
        self.class_names: list[str] = [str(c) for c in self.classes]

    def input_metadata(self) -> list[TensorMetadata]:
        """One input per feature: FP64 for numeric features, BYTES for categorical and text ones."""
        return [
            TensorMetadata(name, Datatype.FP64 if kind is FeatureType.NUMERIC else Datatype.BYTES, [-1])
            for name, kind in self.types.items()
        ]

    def output_metadata(self) -> list[TensorMetadata]:
        return [
            TensorMetadata(LABEL_OUTPUT, Datatype.BYTES, [-1]),
            TensorMetadata(PROBABILITIES_OUTPUT, Datatype.FP64, [-1, len(self.classes)]),
        ]


# ---------------------------------------------------------------- features, ready for the model


class MatrixColumns(Mapping[str, Any]):
    """The columns of a [rows, len(names)] matrix by name, plus ``other`` columns, sliced only when read.

    The data plane hands the prediction log its request's columns this way: building it costs nothing
    per column on the event loop, and the log packs ``matrix`` whole or writes :meth:`tolist`.
    """

    def __init__(
        self, names: Sequence[str], matrix: np.ndarray, other: Mapping[str, Any] | None = None
    ) -> None:
        self.names = names
        self.matrix = matrix
        self.other: Mapping[str, Any] = other if other is not None else {}
        self._index: dict[str, int] | None = None

    def __getitem__(self, name: str) -> Any:
        if self._index is None:
            self._index = {column: i for i, column in enumerate(self.names)}
        column = self._index.get(name)
        return self.matrix[:, column] if column is not None else self.other[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.names
        yield from self.other

    def __len__(self) -> int:
        return len(self.names) + len(self.other)

    def tolist(self) -> dict[str, list[Any]]:
        """Every column as a plain list (as numpy's ``tolist``), in one conversion of the matrix."""
        columns: dict[str, list[Any]] = dict(zip(self.names, self.matrix.T.tolist(), strict=True))
        for name, column in self.other.items():
            columns[name] = column.tolist() if isinstance(column, np.ndarray) else list(column)
        return columns


@dataclass(frozen=True)
class FeatureBatch:
    """Rows of features: numeric ones as one float64 matrix, the others as object columns of str/None.

    Concatenating batches and building the model's DataFrame are cheap on this layout, and both happen
    once per micro-batch in the prediction thread, not once per request on the event loop.
    """

    n_rows: int
    numeric: np.ndarray
    """[n_rows, len(schema.numeric_names)] float64, NaN where missing."""
    other: dict[str, np.ndarray]
    """categorical and text features: object arrays [n_rows] of str, None where missing."""

    @staticmethod
    def concat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
        if len(batches) == 1:
            return batches[0]
        numeric = np.concatenate([b.numeric for b in batches])
        other = {name: np.concatenate([b.other[name] for b in batches]) for name in batches[0].other}
        return FeatureBatch(sum(b.n_rows for b in batches), numeric, other)

    def select(self, rows: slice | list[int]) -> FeatureBatch:
        """The rows ``rows`` as a batch of their own (a copy for a list, a view for a slice)."""
        numeric = self.numeric[rows]
        return FeatureBatch(
            len(numeric), numeric, {name: column[rows] for name, column in self.other.items()}
        )

    def with_numeric(self, row: int, columns: Sequence[int], value: float) -> FeatureBatch:
        """Row ``row`` alone, with the numeric ``columns`` set to ``value``."""
        single = self.select([row])
        single.numeric[0, list(columns)] = value
        return single

    def to_frame(self, schema: FeatureSchema) -> Any:
        """The pandas DataFrame the runtime takes: columns exactly ``schema.names``, in order."""
        import pandas as pd

        if schema.all_numeric:
            return pd.DataFrame(self.numeric, columns=schema.names, copy=False)
        columns: dict[str, np.ndarray] = {}
        for name in schema.names:
            index = schema.numeric_index.get(name)
            columns[name] = self.numeric[:, index] if index is not None else self.other[name]
        return pd.DataFrame(columns, copy=False)

    def first_missing(self, schema: FeatureSchema) -> tuple[str, int] | None:
        """(feature, row) of the first missing value, in column order; None when every value is there."""
        for name in schema.names:
            column = schema.numeric_index.get(name)
            if column is None:
                missing = np.flatnonzero([value is None for value in self.other[name].tolist()])
            else:
                missing = np.flatnonzero(np.isnan(self.numeric[:, column]))
            if missing.size:
                return name, int(missing[0])
        return None

    def check_text_length(self, limit: int, setting: str) -> None:
        """InvalidInput naming the feature and row of the first categorical or text value longer than
        ``limit`` characters (``setting`` names the limit's setting)."""
        for name, column in self.other.items():
            values = column.tolist()
            # one pass in C over the lengths; the row is looked for only when one is too long
            if max(map(len, filter(None, values)), default=0) <= limit:
                continue
            row = next(i for i, value in enumerate(values) if value is not None and len(value) > limit)
            raise InvalidInput(
                f"feature {name!r} row {row} is {len(values[row])} characters long, more than the limit "
                f"of {limit} ({setting})"
            )

    def row(self, schema: FeatureSchema, index: int) -> dict[str, Any]:
        """One row as plain JSON values (NaN becomes None), for the prediction log."""
        values: dict[str, Any] = {}
        for name in schema.names:
            column = schema.numeric_index.get(name)
            if column is None:
                values[name] = self.other[name][index]
            else:
                number = float(self.numeric[index, column])
                values[name] = None if math.isnan(number) else number
        return values


def _check_rows(n_rows: int, max_rows: int) -> None:
    if n_rows == 0:
        raise InvalidInput("the batch is empty: send at least one row")
    if n_rows > max_rows:
        raise InvalidInput(f"the batch has {n_rows} rows, more than the maximum of {max_rows} per request")


def shown(names: Sequence[str]) -> str:
    listed = ", ".join(repr(n) for n in names[:_MAX_SHOWN])
    return listed + (f" and {len(names) - _MAX_SHOWN} more" if len(names) > _MAX_SHOWN else "")


def _check_finite(values: np.ndarray, feature: str) -> None:
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.argmax(infinite))
        raise InvalidInput(
            f"feature {feature!r} row {row}: infinity is not allowed "
            "(a missing value is null, or NaN in a binary tensor)"
        )


class BooleanTokens:
    """Whether numbers numpy read from a JSON text in one call may hide a boolean: numpy reads ``true`` as 1
    and ``false`` as 0, so only values that hold a 0 or a 1 may, and then only when the text has such a
    token. The text is looked through once, and only when asked: the look is a pass over the whole text,
    which for a large batch costs about as much as parsing it. Without a text (None), any 0 or 1 may be one.
    """

    def __init__(self, text: bytes | None) -> None:
        # bytes, not a memoryview: ``in`` on a memoryview looks for one byte value, not for a substring.
        # No text is taken as one that has a boolean.
        self._text = b"true" if text is None else text
        self._present: bool | None = None

    def may_hide_boolean(self, numbers: np.ndarray) -> bool:
        if not ((numbers == 0).any() or (numbers == 1).any()):
            return False
        if self._present is None:
            self._present = b"true" in self._text or b"false" in self._text
        return self._present


NO_TEXT = BooleanTokens(None)
"""For numbers whose JSON text is not known: any 0 or 1 among them may have been a boolean."""


def value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# ---------------------------------------------------------------- V2: tensors -> features


def features_from_tensors(inputs: Sequence[Tensor], schema: FeatureSchema, max_rows: int) -> FeatureBatch:
    """Check the request's tensors against the schema and turn them into a FeatureBatch."""
    if not inputs:
        raise InvalidInput("the request has no inputs")
    by_name: dict[str, Tensor] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidInput(f"input {tensor.name!r} is given more than once")
        by_name[tensor.name] = tensor
    if len(inputs) == 1 and inputs[0].name not in schema.types:
        return _features_from_matrix(inputs[0], schema, max_rows)
    unknown = [name for name in by_name if name not in schema.types]
    missing = [name for name in schema.names if name not in by_name]
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing feature(s): {shown(missing)}")
        if unknown:
            problems.append(f"unknown input(s): {shown(unknown)}")
        raise InvalidInput(
            "; ".join(problems)
            + f". The model takes one input per feature ({shown(schema.names)})"
            + (" or one [N, n_features] numeric tensor" if schema.all_numeric else "")
        )
    n_rows: int | None = None
    for name in schema.names:
        tensor = by_name[name]
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInput(
                f"input {name!r} has shape {list(tensor.shape)}: a per-feature input has shape [N] or [N, 1]"
            )
        if n_rows is None:
            n_rows = tensor.shape[0]
        elif tensor.shape[0] != n_rows:
            raise InvalidInput(
                f"input {name!r} has {tensor.shape[0]} rows but {schema.names[0]!r} has {n_rows}: "
                "every input must have the same number of rows"
            )
    assert n_rows is not None
    _check_rows(n_rows, max_rows)
    numeric = np.empty((n_rows, len(schema.numeric_names)), dtype=np.float64)
    other: dict[str, np.ndarray] = {}
    for name in schema.names:
        tensor = by_name[name]
        kind = schema.types[name]
        if kind is FeatureType.NUMERIC:
            numeric[:, schema.numeric_index[name]] = _numeric_column(tensor, name)
        else:
            other[name] = _string_column(tensor, name, kind)
    return FeatureBatch(n_rows, numeric, other)


def _features_from_matrix(tensor: Tensor, schema: FeatureSchema, max_rows: int) -> FeatureBatch:
    if not schema.all_numeric:
        non_numeric = [n for n in schema.names if schema.types[n] is not FeatureType.NUMERIC]
        raise InvalidInput(
            f"unknown input {tensor.name!r}: this model has non-numeric features ({shown(non_numeric)}), "
            f"so it takes one input per feature, named {shown(schema.names)}"
        )
    n_features = len(schema.names)
    if len(tensor.shape) != 2 or tensor.shape[1] != n_features:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {list(tensor.shape)}, expected [N, {n_features}]: "
            f"one column per feature ({shown(schema.names)}), or one input per feature named like it"
        )
    if not tensor.datatype.is_numeric:
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype.value}; "
            "expected a numeric one (FP64, FP32, FP16, INT* or UINT*)"
        )
    _check_rows(tensor.shape[0], max_rows)
    matrix = np.ascontiguousarray(tensor.data.reshape(tensor.shape), dtype=np.float64)
    if np.isinf(matrix).any():
        for column, name in enumerate(schema.names):
            _check_finite(matrix[:, column], name)
    return FeatureBatch(tensor.shape[0], matrix, {})


def _numeric_column(tensor: Tensor, name: str) -> np.ndarray:
    if not tensor.datatype.is_numeric:
        raise InvalidInput(
            f"input {name!r} has datatype {tensor.datatype.value}, but feature {name!r} is numeric: "
            "send FP64, FP32, FP16, INT* or UINT*"
        )
    column = tensor.data.reshape(-1).astype(np.float64, copy=False)
    _check_finite(column, name)
    return column


def _string_column(tensor: Tensor, name: str, kind: FeatureType) -> np.ndarray:
    data = tensor.data.reshape(-1)
    if tensor.datatype is Datatype.BYTES:
        return data  # already str or None (decoded from UTF-8 by the transport codec)
    if kind is FeatureType.TEXT:
        raise InvalidInput(
            f"input {name!r} has datatype {tensor.datatype.value}, but feature {name!r} is text: send BYTES"
        )
    # A categorical feature sent as numbers: categories compare as strings, as in training (1 -> "1").
    column = np.empty(len(data), dtype=object)
    for i, value in enumerate(data.tolist()):
        column[i] = None if isinstance(value, float) and math.isnan(value) else str(value)
    return column


# ---------------------------------------------------------------- V1: instances -> features


def features_from_instances(
    instances: list[Any],
    schema: FeatureSchema,
    max_rows: int,
    *,
    boolean_tokens: BooleanTokens = NO_TEXT,
) -> FeatureBatch:
    """V1 rows (lists in feature order, or objects keyed by feature name) as a FeatureBatch.

    Rows of plain numbers for an all-numeric model take one numpy call, unless ``boolean_tokens`` (of the
    body the rows were parsed from) says a boolean may hide among them; then they are read row by row.
    """
    n_rows = len(instances)
    _check_rows(n_rows, max_rows)
    if schema.all_numeric and isinstance(instances[0], list):
        fast = _numeric_rows_fast(instances, len(schema.names))
        if fast is not None and not boolean_tokens.may_hide_boolean(fast):
            for column, name in enumerate(schema.names):
                _check_finite(fast[:, column], name)
            return FeatureBatch(n_rows, fast, {})
    numeric = np.empty((n_rows, len(schema.numeric_names)), dtype=np.float64)
    other = {
        name: np.empty(n_rows, dtype=object) for name in schema.names if name not in schema.numeric_index
    }
    for row, instance in enumerate(instances):
        values = _instance_values(instance, row, schema)
        for name, value in zip(schema.names, values, strict=True):
            position = schema.numeric_index.get(name)
            if position is not None:
                numeric[row, position] = _v1_number(value, name, row)
            else:
                other[name][row] = _v1_string(value, name, row, schema.types[name])
    return FeatureBatch(n_rows, numeric, other)


def _numeric_rows_fast(instances: list[Any], n_features: int) -> np.ndarray | None:
    """All rows plain numbers of the right length: one numpy call; else None (checked row by row)."""
    try:
        matrix = np.asarray(instances)
    except ValueError:
        return None
    if matrix.ndim != 2 or matrix.shape[1] != n_features or matrix.dtype.kind not in "iuf":
        return None
    return np.ascontiguousarray(matrix, dtype=np.float64)


def _instance_values(instance: Any, row: int, schema: FeatureSchema) -> list[Any]:
    if isinstance(instance, list):
        if len(instance) != len(schema.names):
            raise InvalidInput(
                f"instance {row} has {len(instance)} value(s), expected {len(schema.names)}: "
                f"one per feature, in the order {shown(schema.names)}"
            )
        return instance
    if isinstance(instance, dict):
        missing = [name for name in schema.names if name not in instance]
        unknown = [str(key) for key in instance if key not in schema.types]
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing feature(s): {shown(missing)}")
            if unknown:
                problems.append(f"unknown feature(s): {shown(unknown)}")
            raise InvalidInput(f"instance {row}: " + "; ".join(problems))
        return [instance[name] for name in schema.names]
    raise InvalidInput(
        f"instance {row} is {value_kind(instance)}: each instance is an array of values in feature order "
        "or an object keyed by feature name"
    )


def _v1_number(value: Any, name: str, row: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(
            f"instance {row}: feature {name!r} is numeric, got {value_kind(value)} {_short(value)}"
        )
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInput(f"instance {row}: feature {name!r}: {_short(value)} is out of range") from None
    if math.isinf(number):
        raise InvalidInput(f"feature {name!r} row {row}: infinity is not allowed")
    return number


def _v1_string(value: Any, name: str, row: int, kind: FeatureType) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if kind is FeatureType.CATEGORICAL and isinstance(value, int | float):
        return str(value)  # categories compare as strings, as in training
    expected = "a string" if kind is FeatureType.TEXT else "a string or a number"
    raise InvalidInput(
        f"instance {row}: feature {name!r} is {kind.value}, expected {expected}, got {value_kind(value)}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- predictions -> output tensors


def select_outputs(request: InferenceRequest) -> list[RequestedOutput]:
    """The outputs to send, in order: those requested, else label (+ probabilities unless labels_only)."""
    labels_only = request.parameters.get("labels_only", False)
    if not isinstance(labels_only, bool):
        raise InvalidInput("parameters.labels_only must be true or false")
    if not request.outputs:
        names = [LABEL_OUTPUT] if labels_only else list(OUTPUT_NAMES)
        return [RequestedOutput(name) for name in names]
    seen: set[str] = set()
    for output in request.outputs:
        if output.name not in OUTPUT_NAMES:
            raise InvalidInput(
                f"unknown output {output.name!r}: this model has {', '.join(repr(n) for n in OUTPUT_NAMES)}"
            )
        if output.name in seen:
            raise InvalidInput(f"output {output.name!r} is requested more than once")
        seen.add(output.name)
    return list(request.outputs)


def output_tensors(
    prediction: Prediction, schema: FeatureSchema, outputs: Sequence[RequestedOutput]
) -> list[Tensor]:
    tensors = []
    for output in outputs:
        if output.name == LABEL_OUTPUT:
            labels = prediction.label_names
            tensors.append(Tensor(LABEL_OUTPUT, Datatype.BYTES, (len(labels),), labels))
        else:
            proba = prediction.probabilities
            tensors.append(Tensor(PROBABILITIES_OUTPUT, Datatype.FP64, tuple(proba.shape), proba))
    return tensors


__all__ = [
    "NO_TEXT",
    "BooleanTokens",
    "FeatureBatch",
    "FeatureSchema",
    "MatrixColumns",
    "features_from_instances",
    "features_from_tensors",
    "output_tensors",
    "select_outputs",
    "shown",
    "value_kind",
]
