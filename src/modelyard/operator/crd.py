"""The Model CustomResourceDefinition, generated from the pydantic models so the CRD and the spec file
cannot drift.

pydantic writes JSON Schema (2020-12); the API server takes a structural OpenAPI v3.0 schema. The
conversion inlines every ``$ref``, turns ``anyOf [X, null]`` into ``nullable``, turns numeric exclusive
bounds into the v3.0 form, and drops what a structural schema refuses or does not need (titles, defaults,
``additionalProperties: false``: the API server's strict field validation already rejects unknown fields,
and the operator fills defaults through the same pydantic models). The checked-in copy in the chart's
``crds/`` is written by ``make crd``; a test fails when it differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelyard.operator.resource import GROUP, KIND, PLURAL, VERSION, Policies
from modelyard.spec import ModelSpec

CRD_NAME = f"{PLURAL}.{GROUP}"
CHART_CRD = Path(__file__).resolve().parents[3] / "charts" / "modelyard" / "crds" / f"{CRD_NAME}.yaml"
MAX_VERSIONS = 10  # status.versions keeps the newest ten


class _Status(BaseModel):
    # status follows the Kubernetes API conventions: camelCase, conditions as metav1.Condition
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(_Status):
    type: str = Field(description="Trained, Published, Serving, RolloutProgressing or Ready")
    status: str = Field(pattern="^(True|False|Unknown)$")
    reason: str = Field(pattern="^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(max_length=32768)
    last_transition_time: str = Field(description="RFC 3339")
    observed_generation: int = Field(ge=0)


class Run(_Status):
    kind: str = Field(description="Job or KFP")
    name: str = Field(description="the Job's name or the KFP run's id")
    generation: int = Field(ge=0, description="the spec generation it trains")
    trigger: str = Field(description="spec, schedule or alert")
    spec_hash: str = Field(description="the hash of the model spec it trains")
    started_at: str
    request: str | None = Field(default=None, description="the retraining or schedule request it answers")
    answered_request: str | None = Field(
        default=None, description="the newest retraining request a run was started or found for"
    )
    answered_schedule: str | None = Field(
        default=None,
        description="the newest schedule request answered: a run started or found for it, or skipped while"
        " a run was in flight",
    )


class VersionEntry(_Status):
    version: int = Field(ge=1)
    stage: str
    storage_uri: str
    score: float | None = None
    created_at: str


class Check(_Status):
    name: str
    value: float | None = None
    threshold: float
    passed: bool | None = Field(default=None, description="None: the check had no data")


class Analysis(_Status):
    verdict: str = Field(pattern="^(pass|fail|inconclusive)$")
    at: str
    candidate: int = Field(ge=1)
    stable: int = Field(ge=1)
    summary: str = Field(description="each check's value, or each failed check's")
    checks: list[Check]


class Step(_Status):
    mode: str = Field(pattern="^(shadow|canary)$")
    percent: int = Field(ge=0, le=99, description="requests the candidate answers in this step")


class Rollout(_Status):
    """One candidate's rollout; kept when it ends, so a restarted operator neither repeats nor forgets it."""

    candidate: int = Field(ge=1)
    stable: int = Field(ge=1)
    candidate_uri: str
    state: str = Field(pattern="^(Progressing|Promoted|RolledBack)$")
    step: int = Field(ge=0, description="index into the plan: shadow (if any), each canary step")
    mode: str = Field(pattern="^(shadow|canary|full)$")
    percent: int = Field(ge=0, le=100, description="requests the candidate answers")
    passes: int = Field(ge=0, description="passing analyses in this step")
    failures: int = Field(ge=0, description="failed analyses in this rollout")
    started_at: str
    last_analysis_at: str | None = None
    failed_checks: list[str] = Field(default_factory=list, description="what rolled the candidate back")
    message: str
    steps: list[Step] | None = Field(
        default=None,
        description="the plan, fixed when the rollout started: a policy edit applies to the next",
    )
    step_started_at: str | None = Field(
        default=None, description="when this step began (its deadline's start)"
    )
    inconclusive: int = Field(default=0, ge=0, description="analyses in a row without a verdict")
    evidence: str | None = Field(
        default=None,
        pattern="^(NotServed|Unavailable|Inconclusive|Pass|Fail)$",
        description="what the last look found: the candidate unserved, Prometheus unavailable, or a verdict",
    )
    spec_hash: str | None = Field(
        default=None, description="the spec hash of the run that published the candidate"
    )
    paused: bool = Field(
        default=False,
        description="the candidate waits, neither judged nor promoted: unserved, for a new spec's run "
        "(the spec changed), or while the InferenceService cannot be written (reason DeploymentModeFixed)",
    )
    reason: str | None = Field(
        default=None,
        description="why it ended: Promoted, RolledBack (failed checks), NoEvidence, AnalysisUnavailable, "
        "CandidateNotServed, SpecChanged (paused for a new spec whose run failed); while paused: "
        "DeploymentModeFixed (KServe keeps the InferenceService's mode) or none (a new spec)",
    )


class ModelStatus(_Status):
    observed_generation: int | None = None
    phase: str | None = Field(
        default=None, description="Invalid, Training, Serving, RollingOut, Ready or Failed"
    )
    conditions: list[Condition] = Field(default_factory=list)
    latest_run: Run | None = None
    versions: list[VersionEntry] = Field(default_factory=list, max_length=MAX_VERSIONS)
    serving_version: int | None = None
    url: str | None = None
    inference_service: str | None = None
    last_analysis: Analysis | None = None
    rollout: Rollout | None = None
    schedule_request_failed: str | None = Field(
        default=None,
        description="the newest failed request Job of the schedule's CronJob that was reported (Warning Event"
        " ScheduleRequestFailed)",
    )


_DROPPED = {"title", "default", "additionalProperties", "$defs"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pydantic JSON Schema as a structural OpenAPI v3.0 schema (see the module doc)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{key: value for key, value in schema.items() if key != "$ref"}}
        return structural(merged, defs)
    any_of = schema.get("anyOf")
    if any_of is not None:
        others = [option for option in any_of if option.get("type") != "null"]
        if len(others) != 1:
            raise ValueError(f"only X-or-null unions become a CRD schema, got {any_of}")
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        nullable = len(others) < len(any_of)
        result = structural({**others[0], **rest}, defs)
        return {**result, "nullable": True} if nullable else result
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    return out


def spec_schema() -> dict[str, Any]:
    """The ModelSpec's fields less ``name`` (the Model's own name), and the three policies."""
    model = structural(ModelSpec.model_json_schema())
    policies = structural(Policies.model_json_schema())
    properties = {key: value for key, value in model["properties"].items() if key != "name"}
    properties.update(policies["properties"])
    required = [key for key in model.get("required", []) if key != "name"]
    return {
        "type": "object",
        "description": "A ModelSpec (its name is the Model's) and its training, serving and rollout policy.",
        "required": required,
        "properties": properties,
    }


def status_schema() -> dict[str, Any]:
    return structural(ModelStatus.model_json_schema(by_alias=True))


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    ready = '.status.conditions[?(@.type=="Ready")].status'
    columns = [
        {"name": "Serving", "type": "integer", "jsonPath": ".status.servingVersion"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": ready},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": "model"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated from modelyard.operator (the pydantic models) by `make crd`; do not edit.\n"


def render_crd() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=110)


def write_crd(path: Path = CHART_CRD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_crd(), encoding="utf-8")
    return path
