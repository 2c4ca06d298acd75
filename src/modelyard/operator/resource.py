"""The Model custom resource's spec: a ModelSpec (less its name, which is the resource's) and the policies
for training, serving and rollout.

The spec's fields keep the spec file's snake_case, so a spec.yaml pastes into a Model unchanged. The API
server checks what a schema can say (types, ranges, enums, patterns); ``parse_resource_spec`` checks the
rest (one data source, features against the target, the name as a model name) and names the field of each
problem as it is written in the Model (``spec.data``, ``metadata.name``).
"""

from __future__ import annotations

import itertools
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.errors import SpecError
from modelyard.spec import ModelSpec

GROUP = "modelyard.io"
VERSION = "v1alpha1"
KIND = "Model"
PLURAL = "models"
POLICY_FIELDS = ("training", "serving", "rollout")

_CRON_FIELD = r"[0-9*/,?A-Za-z-]+"
CRON_PATTERN = rf"^(@(yearly|annually|monthly|weekly|daily|hourly)|{_CRON_FIELD}( {_CRON_FIELD}){{4}})$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
# what the CronJob controller accepts in each of the five fields (after the pattern): names, ranges, steps
CRON_BOUNDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
CRON_NAMES = {
    3: {name: number for number, name in enumerate(MONTHS, 1)},
    4: {name: number for number, name in enumerate(WEEKDAYS)},
}


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Runner(StrEnum):
    AUTO = "auto"  # a KFP run when MODELYARD_PIPELINE__HOST is set, else a Job
    JOB = "job"
    KFP = "kfp"


class TrainingPolicy(_Policy):
    runner: Runner = Field(
        default=Runner.AUTO,
        description="job: a Job running `modelyard train`; kfp: a run of the training pipeline on "
        "MODELYARD_PIPELINE__HOST; auto: kfp when that host is set, else job",
    )
    schedule: str | None = Field(
        default=None, pattern=CRON_PATTERN, description="retrain on this cron schedule (5 fields)"
    )
    retrain_on_alert: bool = Field(default=True, description="retrain when a retraining alert fires")
    timeout_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600, description="a run's deadline")

    @field_validator("schedule")
    @classmethod
    def _fields_in_range(cls, value: str | None) -> str | None:
        # the schema's pattern passes "61 * * * *": the CronJob would then be refused, not the Model
        problem = None if value is None or value.startswith("@") else cron_problem(value)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
        return value


def cron_problem(schedule: str) -> str | None:
    """What the CronJob controller would refuse in ``schedule`` (five fields, as CRON_PATTERN matched), or
    None: a value out of its field's range, a name where none is, a backward range, a zero step."""
    for index, (text, (what, low, high)) in enumerate(zip(schedule.split(" "), CRON_BOUNDS, strict=True)):
        names = CRON_NAMES.get(index, {})
        for part in text.split(","):
            span, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return f"{what} {part!r}: a step is a positive number"
            if span in ("*", "?"):
                continue
            values: list[int] = []
            for bound in span.split("-"):
                value = int(bound) if bound.isdigit() else names.get(bound.lower())
                if value is None:
                    kind = "a number or a name" if names else "a number"
                    return f"{what} {bound!r} is not {kind}"
                if not low <= value <= high:
                    return f"{what} {value} is out of range {low}-{high}"
                values.append(value)
            if len(values) > 2 or values != sorted(values):
                return f"{what} {span!r} is not a value or a range from low to high"
    return None


class Resources(_Policy):
    requests: dict[str, str] = Field(default_factory=dict, description="e.g. {cpu: 500m, memory: 512Mi}")
    limits: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _known_quantities(cls, value: dict[str, str]) -> dict[str, str]:
        for key, quantity in value.items():
            if key not in ("cpu", "memory"):
                raise ValueError(f"{key!r}: only cpu and memory are set here")
            if not re.match(QUANTITY_PATTERN, quantity):
                raise ValueError(f"{key}: {quantity!r} is not a Kubernetes quantity (e.g. 500m, 1Gi)")
        return value


class DeploymentMode(StrEnum):
    STANDARD = "Standard"  # a Deployment, a Service and an HPA; the predictor splits a canary itself
    KNATIVE = "Knative"  # a Knative Service: Knative splits a canary between revisions


class ScaleMetric(StrEnum):
    CPU = "cpu"  # the HPA's, in Standard mode
    MEMORY = "memory"
    CONCURRENCY = "concurrency"  # Knative's autoscaler's (KPA), in Knative mode
    RPS = "rps"


# What each mode's autoscaler scales on: KServe refuses cpu and memory under Knative's KPA, and
# concurrency and rps under the HPA.
MODE_METRICS = {
    DeploymentMode.STANDARD: (ScaleMetric.CPU, ScaleMetric.MEMORY),
    DeploymentMode.KNATIVE: (ScaleMetric.CONCURRENCY, ScaleMetric.RPS),
}
UTILISATION_METRICS = (ScaleMetric.CPU, ScaleMetric.MEMORY)  # whose target is a percent


class ServingPolicy(_Policy):
    deployment_mode: DeploymentMode = Field(
        default=DeploymentMode.STANDARD,
        description="Standard: a Deployment and an HPA, the canary split in the predictor; Knative: "
        "a Knative Service, the canary split by Knative (canaryTrafficPercent)",
    )
    min_replicas: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(default=1, ge=1, le=100)
    scale_metric: ScaleMetric | None = Field(
        default=None,
        description="what the autoscaler scales on: cpu or memory (Standard, the HPA; default cpu), "
        "concurrency or rps (Knative, Knative's KPA; default concurrency)",
    )
    scale_target: int = Field(
        default=80,
        ge=1,
        le=10000,
        description="what the autoscaler keeps per replica: percent utilisation (cpu, memory), requests "
        "in flight (concurrency) or requests per second (rps)",
    )
    resources: Resources = Field(default_factory=Resources)

    @property
    def metric(self) -> ScaleMetric:
        """The scale metric, or the deployment mode's default."""
        return self.scale_metric or MODE_METRICS[self.deployment_mode][0]

    @model_validator(mode="after")
    def _replicas_in_order(self) -> ServingPolicy:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self

    @model_validator(mode="after")
    def _metric_of_the_mode(self) -> ServingPolicy:
        allowed = MODE_METRICS[self.deployment_mode]
        if self.metric not in allowed:
            names = " or ".join(metric.value for metric in allowed)
            raise ValueError(
                f"scale_metric {self.metric.value} is not one the {self.deployment_mode.value} mode's "
                f"autoscaler scales on ({names})"
            )
        if self.metric in UTILISATION_METRICS and self.scale_target > 100:
            raise ValueError(f"scale_target {self.scale_target} is above 100 percent {self.metric.value}")
        return self


class Thresholds(_Policy):
    """What a candidate must show against the stable version, each analysis interval."""

    max_error_ratio: float = Field(default=1.5, gt=0, description="candidate error rate / stable's")
    max_latency_p95_ratio: float = Field(default=1.5, gt=0, description="candidate p95 latency / stable's")
    max_class_mix_js_distance: float = Field(
        default=0.1, ge=0, le=1, description="Jensen-Shannon distance (base 2) of the predicted-class mix"
    )
    min_agreement: float = Field(default=0.8, ge=0, le=1, description="share of rows both predict alike")
    accuracy_margin: float = Field(
        default=0.02, ge=0, le=1, description="live accuracy may be this much below stable's"
    )
    min_labels: int = Field(default=100, ge=1, description="labelled predictions before accuracy counts")


class RolloutPolicy(_Policy):
    shadow: bool = Field(default=True, description="score the candidate on mirrored traffic first")
    canary_steps: list[int] = Field(
        default_factory=lambda: [10, 50], description="percent of requests to the candidate, step by step"
    )
    interval_seconds: int = Field(default=60, ge=5, le=24 * 3600, description="seconds between analyses")
    analyses_per_step: int = Field(default=3, ge=1, le=100, description="passing analyses to take a step")
    failure_limit: int = Field(default=1, ge=1, le=100, description="failed analyses that roll back")
    inconclusive_limit: int = Field(
        default=5,
        ge=1,
        le=100,
        description="analyses in a row without a verdict (no data, or Prometheus unreachable) that roll back",
    )
    progress_deadline_seconds: int | None = Field(
        default=None,
        ge=10,
        le=7 * 24 * 3600,
        description="seconds a step may take to pass its analyses (the candidate served first) before it "
        "rolls back; default: twice analyses_per_step x interval_seconds",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @property
    def step_deadline_seconds(self) -> int:
        if self.progress_deadline_seconds is not None:
            return self.progress_deadline_seconds
        return 2 * self.analyses_per_step * self.interval_seconds

    @model_validator(mode="after")
    def _deadline_leaves_room_for_the_analyses(self) -> RolloutPolicy:
        # the analyses, and one interval more: a step's first look may find the candidate not served yet
        needed = (self.analyses_per_step + 1) * self.interval_seconds
        if self.progress_deadline_seconds is not None and self.progress_deadline_seconds < needed:
            raise ValueError(
                f"progress_deadline_seconds {self.progress_deadline_seconds} is shorter than the "
                f"{needed} s a step needs ((analyses_per_step + 1) x interval_seconds: its analyses, and "
                "one look that may find the candidate not served yet)"
            )
        return self

    @field_validator("canary_steps")
    @classmethod
    def _increasing_percents(cls, value: list[int]) -> list[int]:
        if any(not 1 <= step <= 99 for step in value):
            raise ValueError("each step is a percent from 1 to 99")
        if any(later <= earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError(f"steps must increase, got {value}")
        return value


class Policies(_Policy):
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    serving: ServingPolicy = Field(default_factory=ServingPolicy)
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)


class ResourceSpecError(SpecError):
    """A Model's spec passed the API server's schema but not the model spec; ``field`` is the first bad
    field as written in the Model (``spec.data``, ``metadata.name``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _where(loc: tuple[int | str, ...]) -> str:
    if loc and loc[0] == "name":
        return "metadata.name"
    return ".".join(["spec", *(str(part) for part in loc)])


def parse_resource_spec(name: str, spec: dict[str, Any]) -> tuple[ModelSpec, Policies]:
    """The ModelSpec and policies of a Model named ``name``; ResourceSpecError names every bad field."""
    model_fields = {key: value for key, value in spec.items() if key not in POLICY_FIELDS}
    policy_fields = {key: value for key, value in spec.items() if key in POLICY_FIELDS}
    problems: list[tuple[str, str]] = []
    parsed: list[Any] = []
    for model, data in ((ModelSpec, {**model_fields, "name": name}), (Policies, policy_fields)):
        try:
            parsed.append(model.model_validate(data))
        except ValidationError as exc:
            for error in exc.errors():
                problems.append((_where(error["loc"]), error["msg"].removeprefix("Value error, ")))
    if problems:
        lines = "; ".join(f"{where}: {message}" for where, message in problems)
        raise ResourceSpecError(lines, field=problems[0][0])
    return parsed[0], parsed[1]
