"""Decide a frame's features, and check the frame can train a classifier before any fitting starts.

:func:`validate_frame` collects every problem it finds and raises them together in one
:class:`~modelyard.errors.DataValidationError`, one line per problem, each naming the column and the
cause, so a user fixes their data in one round instead of one error at a time.

Rows are counted from 1 over the data rows, in the order the source returned them: "row 1" is the
first row after a CSV's header (line 2 of the file).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from modelyard.data.loading import MISSING_TOKENS
from modelyard.errors import DataValidationError
from modelyard.spec import FeatureSpec, FeatureType, ModelSpec

# Inference thresholds (see infer_features).
TEXT_MEDIAN_TOKENS = 4
TEXT_MIN_DISTINCT = 20
TEXT_MIN_DISTINCT_SHARE = 0.5
IDENTIFIER_MIN_ROWS = 20
# How many offending values or classes a problem line quotes before summarising the rest.
MAX_EXAMPLES = 3
MAX_CLASS_LINES = 5

_ID_NAME = re.compile(r"^(id|uuid|guid|key|index)$|[_\-. ](id|uuid|guid|key)$|[a-z0-9]I[dD]$", re.IGNORECASE)


# ---------------------------------------------------------------- feature inference


def infer_features(df: pd.DataFrame, target: str) -> list[FeatureSpec]:
    """Guess each column's feature type from its values, in column order, leaving out the target.

    Rules, in order:

    - columns with no value at all are left out (they carry no information);
    - identifier columns are left out: every non-null value is distinct and either the name looks like
      an id (``id``, ``uuid``, ``key``, ``*_id``, ``userId``, pandas' ``Unnamed: 0`` index column) or,
      with at least 20 rows, it is a text column of single words (uuids, e-mails, order numbers);
    - dates and durations are left out (no feature type fits them; derive numbers from them first);
    - booleans and pandas categoricals are ``categorical``; other numbers are ``numeric``;
    - text columns are ``text`` when they read as prose: the median value has at least 4 words, or at
      least 20 distinct values that are mostly distinct (> 50 % of rows) and mostly contain a space;
      otherwise they are ``categorical`` (codes, labels, short names).

    Declare ``features`` in the spec to override any of this.
    """
    features: list[FeatureSpec] = []
    for column in df.columns:
        name = str(column)
        if name == target:
            continue
        feature_type = _infer_type(name, df[column])
        if feature_type is not None:
            features.append(FeatureSpec(name=name, type=feature_type))
    return features


def resolve_features(spec: ModelSpec, df: pd.DataFrame) -> list[FeatureSpec]:
    """The spec's declared features, or, when it declares none, those inferred from ``df``."""
    if spec.features is not None:
        return list(spec.features)
    return infer_features(df, spec.target)


def _infer_type(name: str, values: pd.Series) -> FeatureType | None:
    present = values.dropna()
    if present.empty:
        return None
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return FeatureType.CATEGORICAL
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return None
    if pd.api.types.is_numeric_dtype(dtype):
        return None if _is_identifier(name, present, numeric=True) else FeatureType.NUMERIC
    # object columns: a mix of Python values (bools with gaps, Decimals from a database, strings)
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return FeatureType.CATEGORICAL
    if all(isinstance(v, (int, float, Decimal, np.number)) and not isinstance(v, bool) for v in present):
        return FeatureType.NUMERIC
    texts = present.astype(str)
    if _is_identifier(name, texts, numeric=False):
        return None
    if _reads_as_prose(texts):
        return FeatureType.TEXT
    return FeatureType.CATEGORICAL


def _is_identifier(name: str, present: pd.Series, *, numeric: bool) -> bool:
    if not present.is_unique:
        return False
    if _ID_NAME.search(name) or name.startswith("Unnamed: "):
        return not numeric or pd.api.types.is_integer_dtype(present.dtype)
    if numeric or len(present) < IDENTIFIER_MIN_ROWS:
        return False
    return not bool(present.str.contains(r"\s", regex=True).any())


def _reads_as_prose(texts: pd.Series) -> bool:
    word_counts = texts.str.count(r"\S+")  # the tokens str.split() gives, without a list per row
    if float(word_counts.median()) >= TEXT_MEDIAN_TOKENS:
        return True
    distinct = texts.nunique()
    with_space = float(texts.str.contains(r"\s", regex=True).mean())
    return (
        distinct >= TEXT_MIN_DISTINCT and distinct / len(texts) > TEXT_MIN_DISTINCT_SHARE and with_space > 0.5
    )


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationSummary:
    """What a valid frame holds, for the CLI and the training report."""

    rows: int
    target: str
    features: list[FeatureSpec]
    class_counts: dict[str, int] = field(default_factory=dict)  # label (as text) -> rows, largest first

    def describe(self) -> str:
        classes = ", ".join(f"{label}: {count}" for label, count in self.class_counts.items())
        return (
            f"{self.rows} rows, {len(self.features)} features, "
            f"{len(self.class_counts)} classes of {self.target!r} ({classes})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "target": self.target,
            "features": [f.model_dump(mode="json") for f in self.features],
            "class_counts": dict(self.class_counts),
        }


def min_rows_per_class(cv_folds: int, holdout: float) -> int:
    """Fewest rows a class needs so that, after the stratified holdout split, training keeps
    ``cv_folds`` rows of it (one per cross-validation fold). Conservative: assumes the holdout's share
    of the class is rounded up."""
    rows = cv_folds
    while math.floor(rows * (1.0 - holdout) + 1e-9) < cv_folds:
        rows += 1
    return rows


def validate_frame(df: pd.DataFrame, spec: ModelSpec, features: Sequence[FeatureSpec]) -> ValidationSummary:
    """Check ``df`` can train ``spec`` with ``features``; raise every problem found at once.

    Checks: the frame has rows; no column name repeats; the target and every feature exist; no column
    used is entirely null; the target has no nulls, holds classes rather than measurements, has at
    least two classes, and each class has enough rows for the holdout split and ``cv_folds``-fold
    cross-validation (see :func:`min_rows_per_class`); the holdout gets at least one row per class;
    numeric features hold only numbers (missing-value tokens such as ``NA`` count as missing) and
    no infinities.

    Returns a :class:`ValidationSummary`; raises :class:`DataValidationError` listing the problems.
    """
    problems: list[str] = []
    df = df.reset_index(drop=True)  # index label + 1 is now the row number used in messages
    rows = len(df)
    if rows == 0:
        problems.append("the data has no rows")

    columns = [str(c) for c in df.columns]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    problems.extend(
        f"column {name!r} appears {columns.count(name)} times; column names must be unique"
        for name in repeated
    )

    class_counts: dict[str, int] = {}
    target = spec.target
    if target not in columns:
        problems.append(f"target column {target!r} is missing{_did_you_mean(target, columns)}")
    elif target not in repeated and rows:
        class_counts = _check_target(df[target], spec, problems)

    for feature in features:
        if feature.name not in columns:
            hint = _did_you_mean(feature.name, columns)
            problems.append(f"feature column {feature.name!r} does not exist{hint}")
            continue
        if feature.name in repeated or not rows:
            continue
        values = df[feature.name]
        if values.isna().all():
            problems.append(f"feature column {feature.name!r} is entirely null")
        elif feature.type is FeatureType.NUMERIC:
            problems.extend(_check_numeric(feature.name, values))

    if problems:
        raise DataValidationError(problems, source=f"data {spec.data.describe()!r} for model {spec.name!r}")
    return ValidationSummary(rows=rows, target=target, features=list(features), class_counts=class_counts)


def _check_target(values: pd.Series, spec: ModelSpec, problems: list[str]) -> dict[str, int]:
    target = spec.target
    nulls = values.isna()
    if nulls.all():
        problems.append(f"target column {target!r} is entirely null")
        return {}
    if nulls.any():
        problems.append(
            f"target column {target!r} has {int(nulls.sum())} null value(s) ({_rows(nulls)}); "
            "rows without a label cannot be used for training: drop or label them"
        )
    labels = values[~nulls]
    if pd.api.types.is_float_dtype(labels.dtype):
        fractional = labels[labels != np.floor(labels)]
        if not fractional.empty:
            problems.append(
                f"target column {target!r} holds non-integer numbers "
                f"(e.g. {float(fractional.iloc[0])!r} at row {fractional.index[0] + 1}): "
                "modelyard trains classifiers, so the target must be classes; bin it first"
            )
            return {}
    counts = labels.value_counts()
    class_counts = {str(label): int(count) for label, count in counts.items()}
    if len(counts) == 1:
        only = next(iter(class_counts))
        problems.append(
            f"target column {target!r} has only one class ({only!r}); a classifier needs at least two"
        )
        return class_counts

    needed = min_rows_per_class(spec.cv_folds, spec.holdout)
    small = [(label, count) for label, count in class_counts.items() if count < needed]
    small.sort(key=lambda item: item[1])
    rule = (
        f"with holdout {spec.holdout:g} and cv_folds {spec.cv_folds} each class needs at least {needed} rows "
        f"so that the training part keeps >= {spec.cv_folds}"
    )
    for label, count in small[:MAX_CLASS_LINES]:
        problems.append(f"class {label!r} of target {target!r} has {count} row(s); {rule}")
    if len(small) > MAX_CLASS_LINES:
        rest = ", ".join(f"{label!r} ({count})" for label, count in small[MAX_CLASS_LINES:][:20])
        more = " ..." if len(small) > MAX_CLASS_LINES + 20 else ""
        problems.append(
            f"{len(small) - MAX_CLASS_LINES} more classes of target {target!r} are too small: {rest}{more}"
        )

    holdout_rows = math.ceil(spec.holdout * len(labels))
    if holdout_rows < len(counts):
        problems.append(
            f"the holdout ({spec.holdout:g} of {len(labels)} labelled rows = {holdout_rows}) is smaller "
            f"than the number of classes of {target!r} ({len(counts)}); "
            "a stratified holdout needs one row per class"
        )
    return class_counts


def _check_numeric(name: str, values: pd.Series) -> list[str]:
    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        kind = "dates" if pd.api.types.is_datetime64_any_dtype(dtype) else "durations"
        return [f"numeric feature {name!r} holds {kind}, not numbers; derive numbers from them first"]
    if pd.api.types.is_bool_dtype(dtype):
        return []
    if pd.api.types.is_numeric_dtype(dtype):
        numbers = values.astype("float64")
        problems: list[str] = []
    else:
        present = values[values.notna()].astype(object)
        present = present[~present.map(lambda v: isinstance(v, str) and v.strip() in MISSING_TOKENS)]
        numbers = pd.to_numeric(present, errors="coerce")
        bad = present[numbers.isna()]
        problems = []
        if not bad.empty:
            examples = ", ".join(
                f"{value!r} at row {index + 1}" for index, value in bad.iloc[:MAX_EXAMPLES].items()
            )
            problems.append(
                f"numeric feature {name!r} has {len(bad)} value(s) that are not numbers, e.g. {examples}"
            )
    infinite = numbers[np.isinf(numbers.to_numpy(dtype="float64", na_value=np.nan))]
    if not infinite.empty:
        problems.append(
            f"numeric feature {name!r} has {len(infinite)} infinite value(s) ({_rows(infinite.index)}); "
            "replace them with a finite number or leave the cell empty"
        )
    return problems


# ---------------------------------------------------------------- message helpers


def _rows(selection: pd.Series | pd.Index) -> str:
    """'row 3' or 'rows 3, 7, 9, ...' for a boolean mask or the labels of a position-indexed frame."""
    if isinstance(selection, pd.Series):
        positions = [int(p) + 1 for p in np.flatnonzero(selection.to_numpy(dtype=bool))]
    else:
        positions = [int(label) + 1 for label in selection]
    shown = ", ".join(str(p) for p in positions[:MAX_EXAMPLES])
    suffix = ", ..." if len(positions) > MAX_EXAMPLES else ""
    return f"row{'s' if len(positions) > 1 else ''} {shown}{suffix}"


def _did_you_mean(name: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(name, columns, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    listed = ", ".join(repr(c) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
    return f"; the columns are: {listed}" if columns else "; the data has no columns"
