"""Reference statistics of the training data: what the model server compares live traffic with.

:func:`reference_statistics` returns plain JSON (no NaN, no numpy types) that training stores in the
bundle's ``metadata.json``. Format ``modelyard.reference/v1``::

    {
      "format": "modelyard.reference/v1",
      "rows": 150,                                   # rows profiled (missing cells included)
      "features": {
        "<numeric feature>": {
          "type": "numeric",
          "count": 148,                              # finite numbers
          "null_fraction": 0.0133,                   # missing (or not-a-number) cells / rows
          "mean": 5.84, "std": 0.83, "min": 4.3, "max": 7.9,   # std: sample (ddof=1); null if count < 2
          "quantiles": {"0.01": 4.4, "0.05": 4.6, "0.1": 4.8, "0.25": 5.1, "0.5": 5.8,
                        "0.75": 6.4, "0.9": 6.9, "0.95": 7.3, "0.99": 7.7},
          "histogram": {"edges": [4.3, 4.8, ..., 7.9], "counts": [16, 14, ...]}
        },
        "<categorical feature>": {
          "type": "categorical",
          "count": 150, "null_fraction": 0.0,
          "distinct": 3,
          "frequencies": {"red": 0.5, "blue": 0.3},  # top_k most frequent, share of non-missing cells
          "other": 0.2                               # share of every value not listed
        },
        "<text feature>": {
          "type": "text",
          "count": 150, "null_fraction": 0.0,
          "characters": {"mean": ..., "std": ..., "min": ..., "max": ..., "quantiles": {...}},
          "words": {"mean": ..., "std": ..., "min": ..., "max": ..., "quantiles": {...}},
          "vocabulary_size": 1234,                   # distinct lower-cased words
          "top_words": {"great": 0.031, ...}         # top_k words, share of all word occurrences
        }
      },
      "target": {"name": "species", "count": 150, "classes": {"setosa": 0.333, ...}}   # when asked for
    }

Conventions a drift computation must follow to compare like with like:

- Histogram edges are the deciles of the training values (taken among the observed values) with
  repeats removed, so each bin holds about a tenth of the training rows and none is empty; a discrete
  feature gets fewer bins, a constant one has edges ``[v, v]`` and one bin. Bin ``i`` holds
  ``edges[i] <= x < edges[i+1]``, the last bin also ``x == edges[-1]``; live values below ``edges[0]``
  count in the first bin and values above ``edges[-1]`` in the last. :func:`histogram_counts` does
  exactly this: use it on live data.
- Category and class keys are ``str(value)`` of the raw value (``True``, ``3``, ``2.5``), so key live
  values with ``str()`` too. Words are ``str.lower().split()`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import InvalidInput
from modelyard.spec import FeatureSpec, FeatureType

REFERENCE_FORMAT = "modelyard.reference/v1"
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def reference_statistics(
    df: pd.DataFrame,
    features: Sequence[FeatureSpec],
    *,
    target: str | None = None,
    bins: int = 10,
    top_k: int = 20,
) -> dict[str, Any]:
    """Profile each feature (and, when named, the target's class shares); format in the module doc."""
    if bins < 1 or top_k < 1:
        raise InvalidInput(f"bins and top_k must be at least 1, got bins={bins}, top_k={top_k}")
    wanted = [f.name for f in features] + ([target] if target is not None else [])
    missing = [name for name in wanted if name not in df.columns]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise InvalidInput(f"cannot profile columns that are not in the data: {names}")
    profiles: dict[str, Any] = {}
    for feature in features:
        values = df[feature.name]
        if feature.type is FeatureType.NUMERIC:
            profiles[feature.name] = _numeric_profile(values, bins)
        elif feature.type is FeatureType.CATEGORICAL:
            profiles[feature.name] = _categorical_profile(values, top_k)
        else:
            profiles[feature.name] = _text_profile(values, top_k)
    result: dict[str, Any] = {"format": REFERENCE_FORMAT, "rows": len(df), "features": profiles}
    if target is not None:
        labels = df[target].dropna()
        shares = labels.map(str).value_counts(normalize=True)
        result["target"] = {
            "name": target,
            "count": len(labels),
            "classes": {str(label): float(share) for label, share in shares.sort_index().items()},
        }
    return result


def histogram_counts(values: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray) -> list[int]:
    """Count finite ``values`` into the bins of ``edges`` (see the module docstring for the rule)."""
    boundaries = np.asarray(edges, dtype="float64")
    if boundaries.ndim != 1 or len(boundaries) < 2 or np.any(np.diff(boundaries) < 0):
        raise InvalidInput(f"histogram edges must be at least two non-decreasing numbers, got {list(edges)}")
    numbers = np.asarray(values, dtype="float64")
    numbers = numbers[np.isfinite(numbers)]
    bin_count = len(boundaries) - 1
    positions = np.clip(np.searchsorted(boundaries, numbers, side="right") - 1, 0, bin_count - 1)
    return [int(c) for c in np.bincount(positions, minlength=bin_count)]


def _numeric_profile(values: pd.Series, bins: int) -> dict[str, Any]:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    finite = numbers[np.isfinite(numbers)]
    profile: dict[str, Any] = {"type": FeatureType.NUMERIC.value, **_presence(len(finite), len(values))}
    if finite.size == 0:
        profile.update(mean=None, std=None, min=None, max=None, quantiles={}, histogram=None)
        return profile
    # "lower" picks edges among the observed values, so no edge falls between two discrete values and
    # every bin holds at least the value at its left edge (no empty reference bin for PSI to divide by).
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1), method="lower"))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    profile.update(
        mean=_number(finite.mean()),
        std=_number(finite.std(ddof=1)) if finite.size > 1 else None,
        min=_number(finite.min()),
        max=_number(finite.max()),
        quantiles=_quantiles(finite),
        histogram={"edges": [_number(e) for e in edges], "counts": histogram_counts(finite, edges)},
    )
    return profile


def _categorical_profile(values: pd.Series, top_k: int) -> dict[str, Any]:
    present = values.dropna()
    profile: dict[str, Any] = {"type": FeatureType.CATEGORICAL.value, **_presence(len(present), len(values))}
    counts = present.map(str).value_counts()
    profile["distinct"] = len(counts)
    profile["frequencies"], profile["other"] = _top_shares(counts, top_k)
    return profile


def _text_profile(values: pd.Series, top_k: int) -> dict[str, Any]:
    texts = values.dropna().map(str).astype("str")
    profile: dict[str, Any] = {"type": FeatureType.TEXT.value, **_presence(len(texts), len(values))}
    profile["characters"] = _summary(texts.str.len().to_numpy(dtype="float64"))
    # r"\S+" counts the same tokens as str.split(), without building a list per row
    profile["words"] = _summary(texts.str.count(r"\S+").to_numpy(dtype="float64"))
    vocabulary = texts.str.lower().str.split().explode().dropna().value_counts()
    profile["vocabulary_size"] = len(vocabulary)
    profile["top_words"], _ = _top_shares(vocabulary, top_k)
    return profile


def _presence(count: int, rows: int) -> dict[str, Any]:
    return {"count": count, "null_fraction": (rows - count) / rows if rows else 0.0}


def _top_shares(counts: pd.Series, top_k: int) -> tuple[dict[str, float], float]:
    """The ``top_k`` most frequent keys of a value_counts() result with their shares, and the rest's share."""
    total = int(counts.sum())
    if not total:
        return {}, 0.0
    # Ties break on the value so that the same data always lists the same keys.
    ranked = sorted(((str(key), int(count)) for key, count in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    kept = ranked[:top_k]
    shares = {value: count / total for value, count in kept}
    return shares, max(0.0, 1.0 - sum(count for _, count in kept) / total)


def _summary(numbers: np.ndarray) -> dict[str, Any]:
    if numbers.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "quantiles": {}}
    return {
        "mean": _number(numbers.mean()),
        "std": _number(numbers.std(ddof=1)) if numbers.size > 1 else None,
        "min": _number(numbers.min()),
        "max": _number(numbers.max()),
        "quantiles": _quantiles(numbers),
    }


def _quantiles(numbers: np.ndarray) -> dict[str, float | None]:
    return {f"{q:g}": _number(v) for q, v in zip(QUANTILES, np.quantile(numbers, QUANTILES), strict=True)}


def _number(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None
