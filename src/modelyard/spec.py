"""ModelSpec: the classification problem a team declares in YAML.

A spec names its data, its target and (optionally) its features, which algorithms to try, how to search
their hyper-parameters, how to score them and the minimum score a model must reach to be published.
Loading a bad spec raises SpecError with one line per bad field, each naming the field's dotted path.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.errors import SpecError

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS-1123 label: also a valid KServe isvc name


class FeatureType(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    TEXT = "text"


class Algorithm(StrEnum):
    LOGISTIC_REGRESSION = "logistic_regression"
    RANDOM_FOREST = "random_forest"
    HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
    SVM = "svm"
    KNN = "knn"
    NAIVE_BAYES = "naive_bayes"


class SearchStrategy(StrEnum):
    GRID = "grid"
    RANDOM = "random"
    BAYESIAN = "bayesian"


class Metric(StrEnum):
    """Selection metrics; every one is 'higher is better' (log loss is negated, as in sklearn)."""

    F1_MACRO = "f1_macro"
    F1_WEIGHTED = "f1_weighted"
    ACCURACY = "accuracy"
    BALANCED_ACCURACY = "balanced_accuracy"
    PRECISION_MACRO = "precision_macro"
    RECALL_MACRO = "recall_macro"
    ROC_AUC = "roc_auc"
    NEG_LOG_LOSS = "neg_log_loss"


class _Strict(BaseModel):
    # A misspelled key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    name: str = Field(min_length=1)
    type: FeatureType


class DataSource(_Strict):
    """Exactly one of path, table, query or dataset."""

    path: str | None = Field(default=None, description="CSV or Parquet: a local path or an s3:// URI")
    format: str | None = Field(default=None, pattern="^(csv|parquet)$", description="default: from suffix")
    table: str | None = Field(default=None, description="a table in database_url")
    query: str | None = Field(default=None, description="a SELECT run against database_url")
    database_url: str | None = Field(default=None, description="default: MODELYARD_DATABASE_URL")
    dataset: str | None = Field(default=None, description="NAME[@VERSION] loaded with `modelyard data load`")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DataSource:
        given = [key for key in ("path", "table", "query", "dataset") if getattr(self, key)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of path, table, query or dataset (found: {found})")
        return self

    @property
    def file_format(self) -> str:
        if self.format:
            return self.format
        assert self.path is not None
        return "parquet" if self.path.lower().endswith((".parquet", ".pq")) else "csv"

    def describe(self) -> str:
        return self.path or self.table or self.dataset or f"query {self.query!r}"


class SearchSpec(_Strict):
    strategy: SearchStrategy = SearchStrategy.RANDOM
    trials: int = Field(default=20, ge=1, le=10_000, description="candidates tried per algorithm")


class GateSpec(_Strict):
    min_score: float = Field(default=0.0, description="the holdout score (spec metric) a model must reach")
    compare_to_production: bool = Field(
        default=True, description="also require a score no worse than production on the same holdout"
    )


class ModelSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="lowercase letters, digits and '-'")
    description: str = ""
    data: DataSource
    target: str = Field(min_length=1)
    features: list[FeatureSpec] | None = Field(default=None, description="default: inferred from the data")
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(Algorithm), min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    cv_folds: int = Field(default=5, ge=2, le=20)
    metric: Metric = Metric.F1_MACRO
    gate: GateSpec = Field(default_factory=GateSpec)
    holdout: float = Field(default=0.2, gt=0.0, lt=0.9, description="fraction kept for evaluation")
    seed: int = Field(default=42, ge=0)

    @field_validator("algorithms")
    @classmethod
    def _no_repeats(cls, value: list[Algorithm]) -> list[Algorithm]:
        repeated = sorted({a.value for a in value if value.count(a) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _features_are_consistent(self) -> ModelSpec:
        if self.features is None:
            return self
        names = [f.name for f in self.features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"features: declared more than once: {', '.join(repeated)}")
        if self.target in names:
            raise ValueError(f"features: the target {self.target!r} cannot also be a feature")
        return self


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "spec"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines


def parse_spec(raw: Any, *, source: str = "spec", base_dir: Path | None = None) -> ModelSpec:
    """Validate a mapping as a ModelSpec. Relative data paths resolve against ``base_dir``."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        lines = _format_errors(exc)
        raise SpecError(f"{source} is invalid:\n" + "\n".join(f"  - {line}" for line in lines)) from exc
    path = spec.data.path
    if base_dir is not None and path and "://" not in path and not Path(path).is_absolute():
        data = spec.data.model_copy(update={"path": str((base_dir / path).resolve())})
        spec = spec.model_copy(update={"data": data})
    return spec


def _coerce_override(text: str) -> Any:
    return yaml.safe_load(text) if text else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw spec mapping."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise SpecError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. search.trials=10")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {part!r} is not a mapping")
            node = child
        node[leaf] = _coerce_override(value)
    return result


def load_spec(path: str | Path, overrides: list[str] | None = None) -> ModelSpec:
    """Read, override and validate a spec file."""
    spec_path = Path(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {spec_path}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{spec_path} is not valid YAML: {exc}") from exc
    if overrides and isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return parse_spec(raw, source=str(spec_path), base_dir=spec_path.parent)
