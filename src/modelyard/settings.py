"""One Settings object; environment variables are the interface to Kubernetes manifests.

Every field reads ``MODELYARD_<NAME>``. Object-store credentials use the standard variables that boto3
and KServe's storage initializer read (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), so the same
Secret serves the pipeline, the predictor and the storage initializer.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import types
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlparse

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.errors import ModelyardError


class S3Settings(BaseSettings):
    """Credentials and endpoint for S3-compatible storage, under their standard AWS names."""

    model_config = SettingsConfigDict(env_prefix="AWS_", extra="ignore")

    endpoint_url: str | None = Field(default=None, description="AWS_ENDPOINT_URL, e.g. http://minio:9000")
    access_key_id: str | None = Field(default=None, description="AWS_ACCESS_KEY_ID")
    secret_access_key: str | None = Field(default=None, description="AWS_SECRET_ACCESS_KEY", repr=False)
    region: str | None = Field(default=None, description="AWS_REGION")


class ServingSettings(BaseModel):
    """The model server (MODELYARD_SERVING__<NAME>); defaults follow KServe's ServingRuntime contract."""

    model_dir: Path = Field(default=Path("/mnt/models"), description="bundle folder (KServe mounts it here)")
    model_name: str = Field(
        default="", description="name served under /v2/models/NAME; default: the bundle's"
    )
    model_version: str = Field(
        default="", description="version in metadata and metrics; default: the bundle's folder or digest"
    )
    host: str = Field(default="0.0.0.0", description="address to listen on (the pod's, per ServingRuntime)")
    http_port: int = Field(default=8080, ge=1, le=65535, description="REST port (V1 and V2)")
    grpc_port: int = Field(default=8081, ge=0, le=65535, description="V2 gRPC port; 0 turns gRPC off")
    metrics_port: int = Field(
        default=8082,
        ge=0,
        le=65535,
        description="port of the probes (/v2/health/live, /v2/health/ready) and /metrics, answered in "
        "threads of their own under any load; 0 turns it off",
    )
    max_batch_size: int = Field(default=1024, ge=1, description="rows coalesced into one model call")
    max_batch_wait_ms: float = Field(default=2.0, ge=0, description="longest a request waits for a batch")
    max_request_rows: int = Field(default=10_000, ge=1, description="rows one request may carry")
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="largest request body (REST) or message (gRPC), in bytes; a larger one is a 413 "
        "(gRPC RESOURCE_EXHAUSTED), refused before it is read",
    )
    max_text_length: int = Field(
        default=10_000,
        ge=1,
        description="longest value of a categorical or text feature, in characters; a longer one is a "
        "400 naming the feature",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="longest the REST port waits for a request's body; slower is a 408"
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="connections and requests the REST port holds at once (uvicorn's limit_concurrency; "
        "beyond it a 503), and gRPC calls at once (beyond it RESOURCE_EXHAUSTED)",
    )
    keep_alive_s: int = Field(
        default=5, ge=1, description="how long an idle keep-alive connection stays open (REST)"
    )
    prefer_onnx: bool = Field(default=True, description="use model.onnx when the bundle verified it")
    allow_pyarrow: bool = Field(
        default=False,
        description="let the server process import pyarrow, for a bundle whose pickle needs it (it is "
        "refused otherwise, to keep the server's memory small)",
    )
    onnx_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime threads per model call; 0: for a tree ensemble the CPUs the server may "
        "use (at most 4), else 1",
    )
    prediction_log: bool = Field(default=True, description="write every prediction to the registry DB")
    log_queue_size: int = Field(default=100_000, ge=1, description="records held in memory before spooling")
    log_batch_size: int = Field(default=500, ge=1, description="records written per database round trip")
    log_flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="longest the writer holds a record before writing it (the server sends it within 0.2 s)",
    )
    spool_dir: Path | None = Field(default=None, description="spool while the DB is down; default HOME/spool")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="bound of the spool file")
    access_log: bool = Field(default=False, description="log every request")
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="asyncio event loop; auto takes uvloop when installed"
    )
    grace_period_s: float = Field(
        default=5.0, ge=0, description="on SIGTERM, how long in-flight requests get to finish"
    )
    candidate_uri: str = Field(
        default="",
        description="a candidate bundle served beside the stable one (s3://..., file://... or a local "
        "folder), fetched and verified as the stable one is; empty: none",
    )
    candidate_version: str = Field(
        default="",
        description="the candidate's version in answers, metrics and the prediction log; default: the "
        "URI's last segment when it is a number, else the bundle's digest",
    )
    rollout_mode: Literal["shadow", "canary"] = Field(
        default="shadow",
        description="shadow: the stable version answers and the candidate scores the same rows beside it; "
        "canary: canary_percent of requests (by request id) are answered by the candidate",
    )
    canary_percent: float = Field(
        default=0.0, ge=0, le=100, description="percent of requests the candidate answers in canary mode"
    )

    @model_validator(mode="after")
    def _rollout_needs_a_candidate(self) -> ServingSettings:
        if not self.candidate_uri:
            if self.rollout_mode == "canary" or self.canary_percent:
                raise ValueError(
                    "a canary needs a candidate: set MODELYARD_SERVING__CANDIDATE_URI to the candidate "
                    "bundle, or leave rollout_mode and canary_percent unset"
                )
            if self.candidate_version:
                raise ValueError("candidate_version is set but candidate_uri is empty: there is no candidate")
        elif self.rollout_mode == "shadow" and self.canary_percent:
            raise ValueError(
                f"canary_percent is {self.canary_percent:g} but rollout_mode is shadow, where the stable "
                "version answers every request: set rollout_mode to canary, or canary_percent to 0"
            )
        if self.candidate_version and self.candidate_version == self.model_version:
            raise ValueError(
                f"the candidate's version {self.candidate_version!r} is the stable one's: metrics and the "
                "prediction log could not tell them apart"
            )
        return self


class PipelineSettings(BaseModel):
    """Kubeflow Pipelines (MODELYARD_PIPELINE__<NAME>)."""

    image: str = Field(
        default="ghcr.io/modelyard/modelyard:0.1.0", description="base image of every pipeline component"
    )
    host: str = Field(default="", description="KFP API endpoint, e.g. http://localhost:8888")
    namespace: str = Field(default="kubeflow", description="namespace of runs and InferenceServices")
    s3_secret: str = Field(default="modelyard-s3", description="Secret with AWS_* keys, injected as env")
    database_secret: str = Field(
        default="modelyard-database", description="Secret with the registry's URL, injected as env"
    )
    database_secret_key: str = Field(
        default="MODELYARD_DATABASE_URL", description="the key of the registry's URL in that Secret"
    )
    config_map: str = Field(
        default="modelyard-config",
        description="ConfigMap with MODELYARD_STORE_URI, AWS_ENDPOINT_URL, AWS_REGION, injected as env",
    )
    tune_jobs: int = Field(
        default=0,
        ge=-1,
        description="CV processes in each tune task, and in `modelyard train --in-process`'s one process; "
        "0: every core of the task (locally: cores / 2, as kfp.local runs two tune tasks at once); -1: every "
        "core",
    )
    events_file: str = Field(
        default="",
        description="file each step appends its start and end to, one JSON line; set by `modelyard train` "
        "and `modelyard score` for their local runs, empty on a cluster",
    )
    run_id: str = Field(
        default="",
        description="the run that publishes, recorded with the version it registers (the operator sets "
        "its Job's name, and finds the run's version by it)",
    )

    @property
    def tune_n_jobs(self) -> int:
        """scikit-learn's ``n_jobs`` for the CV of a tune: ``tune_jobs``, every core (-1) when it is 0."""
        return self.tune_jobs or -1


class MonitoringSettings(BaseModel):
    """Drift, live accuracy and the retrain webhook (MODELYARD_MONITORING__<NAME>)."""

    drift: bool = Field(
        default=True, description="the predictor compares what it serves with the bundle's drift reference"
    )
    accuracy_window_h: float = Field(
        default=24.0, gt=0, description="hours of predictions live accuracy judges"
    )
    accuracy_maturity_h: float = Field(
        default=1.0, ge=0, description="hours a prediction waits for its label before it is judged"
    )
    accuracy_refresh_s: float = Field(default=60.0, gt=0, description="seconds between live accuracy queries")
    accuracy_tolerance: float = Field(
        default=0.05, ge=0, le=1, description="live accuracy this far below the holdout's alerts (the gate)"
    )
    retrain_cooldown_h: float = Field(default=6.0, ge=0, description="hours between retrains of one model")


# The Pod Security "restricted" profile, as the chart's podSecurityContext and containerSecurityContext
# helpers write it: the defaults of the pods the operator makes outside the chart.
RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class PodSettings(BaseModel):
    """What every pod of one kind the operator makes gets (a JSON object in the environment); the chart
    sets it from the values and helpers of its own pods of that kind, so the two cannot differ."""

    service_account: str = Field(default="default", description="the pod's serviceAccountName")
    labels: dict[str, str] = Field(
        default_factory=dict, description="pod labels; the chart's NetworkPolicies admit its release's"
    )
    security_context: dict[str, Any] = Field(
        default_factory=lambda: dict(RESTRICTED_POD_SECURITY), description="the pod's securityContext"
    )
    container_security_context: dict[str, Any] = Field(
        default_factory=dict, description="the container's securityContext (none: the runtime's own)"
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="the container's requests and limits (a Model's own win)"
    )


class OperatorSettings(BaseModel):
    """`modelyard operator`, the Model resource's controller (MODELYARD_OPERATOR__<NAME>)."""

    interval_s: float = Field(
        default=10.0, gt=0, description="seconds between two looks at each Model's runs and services"
    )
    runtime: str = Field(default="modelyard", description="the ServingRuntime every InferenceService names")
    prometheus_url: str = Field(
        default="",
        description="Prometheus the rollout's analyses query; empty: a new version waits in staging "
        "(`--local` starts a Prometheus of its own when one is installed)",
    )
    scrape_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="how often Prometheus scrapes the predictors; an analysis looks back over at least four "
        "scrapes (the chart's prometheus.scrapeInterval)",
    )
    predictor: PodSettings = Field(
        default_factory=PodSettings,
        description="JSON: the predictor pod of every InferenceService (service_account, labels, "
        "security_context, container_security_context, resources)",
    )
    training: PodSettings = Field(
        default_factory=lambda: PodSettings(container_security_context=dict(RESTRICTED_CONTAINER_SECURITY)),
        description="JSON: the pod of every training Job, the same fields (its security contexts also the "
        "schedule's pods')",
    )
    schedule_service_account: str = Field(
        default="default",
        description="the ServiceAccount of each schedule's CronJob pods, which ask the operator for a run: "
        "it may patch Models, nothing more (the chart's <release>-schedule)",
    )
    local: bool = Field(
        default=False,
        description="run training Jobs and predictors on this machine (`modelyard operator --local`): Jobs "
        "get spec.managedBy modelyard.io/local, which the Job controller leaves alone",
    )
    local_in_process: bool = Field(
        default=False,
        description="`--local` trains each run on kfp.local, as `modelyard train` does; true runs the same "
        "steps in one process (`modelyard train --in-process`), which is faster",
    )


class ConsoleSettings(BaseModel):
    """The web console, `modelyard console` (MODELYARD_CONSOLE__<NAME>)."""

    host: str = Field(default="127.0.0.1", description="address the console listens on")
    port: int = Field(default=8088, ge=1, le=65535, description="the console's HTTP port")
    predictor_url: str = Field(
        default="http://127.0.0.1:8080",
        description="base URL of the V2 predictor the Predict page posts to (a local `modelyard serve`); "
        "`{name}` is replaced by the model's name, e.g. http://{name}-predictor.NAMESPACE.svc on a cluster",
    )
    max_upload_mb: float = Field(default=50.0, gt=0, description="largest CSV the Batch page accepts, in MB")
    allowed_hosts: str = Field(
        default="127.0.0.1,localhost",
        description="comma-separated host names the console answers to (the Host header; `*.example.com` "
        "matches subdomains); any other is a 400, which keeps DNS-rebinding pages out",
    )
    actions_enabled: bool = Field(
        default=True,
        description="offer promote, roll back and train; false makes the console read-only (a 403 names "
        "this setting)",
    )
    data_root: str = Field(
        default=".",
        description="folder, or s3://bucket/prefix, a spec trained from the console may read data.path "
        "under (relative paths resolve against it); empty: data.dataset only. SQL sources are refused",
    )
    kubernetes: bool = Field(
        default=False,
        description="show the operator's Model resources (phase, rollout, last analysis): needs the "
        "in-cluster service account or a kubeconfig allowed to get and list models.modelyard.io",
    )
    namespace: str = Field(
        default="default", description="namespace of the Model resources the console reads"
    )

    @field_validator("predictor_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            example = value.format(name="model")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"may hold only the placeholder {{name}}, got {value!r}") from None
        parsed = urlparse(example)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    def predictor_for(self, model: str) -> str:
        """The base URL of the predictor that serves ``model``: predictor_url with its name filled in."""
        return self.predictor_url.format(name=model).rstrip("/")

    @field_validator("allowed_hosts")
    @classmethod
    def _some_host(cls, value: str) -> str:
        if not [host for host in value.split(",") if host.strip()]:
            raise ValueError("must name at least one host, e.g. 127.0.0.1,localhost")
        return value

    @field_validator("data_root")
    @classmethod
    def _folder_or_s3(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in ("", "s3") or (scheme == "s3" and not urlparse(value).netloc):
            raise ValueError(f"must be a folder or s3://bucket/prefix, got {value!r}")
        return value


class Settings(BaseSettings):
    """Runtime configuration. Defaults give the embedded setup: SQLite and a folder under HOME."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore", env_nested_delimiter="__")

    home: Path = Field(default=Path(".modelyard"), description="Working folder for the embedded setup")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="level of modelyard's own log lines"
    )
    database_url: str = Field(
        default="", description="SQLAlchemy URL of the registry; default sqlite:///<HOME>/modelyard.db"
    )
    store_uri: str = Field(default="", description="Object store root: file:///path or s3://bucket/prefix")
    s3: S3Settings = Field(default_factory=S3Settings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("store_uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("file", "s3"):
            raise ValueError(f"must start with file:// or s3://, got {value!r}")
        if parsed.scheme == "s3" and not parsed.netloc:
            raise ValueError(f"an s3:// URI needs a bucket, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        home = self.home.expanduser().resolve()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'modelyard.db'}"
        if not self.store_uri:
            self.store_uri = f"file://{home / 'store'}"
        if self.serving.spool_dir is None:
            self.serving.spool_dir = home / "spool"
        return self


ENV_PREFIX = "MODELYARD_"
# Variables Kubernetes sets in every pod for each Service of its namespace (enableServiceLinks): a Service
# named modelyard or modelyard-... gives MODELYARD_SERVICE_HOST, MODELYARD_X_PORT_8080_TCP_ADDR, and
# MODELYARD_X_PORT=tcp://10.0.0.1:8080 (told from a misspelt setting by its value).
_SERVICE_LINK = re.compile(
    r"^MODELYARD(_[A-Z0-9]+)*_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$"
)
_SERVICE_URL_LINK = re.compile(r"^MODELYARD(_[A-Z0-9]+)*_PORT$")
_SERVICE_URL = re.compile(r"^(tcp|udp|sctp)://")


def _is_service_link(variable: str, value: str) -> bool:
    if _SERVICE_LINK.match(variable):
        return True
    return bool(_SERVICE_URL_LINK.match(variable) and _SERVICE_URL.match(value))


def _env_prefix(annotation: Any) -> str | None:
    """The prefix of a nested BaseSettings group that reads variables of its own (S3Settings: AWS_)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
        return str(annotation.model_config.get("env_prefix", ""))
    return None


def setting_variables() -> list[str]:
    """Every MODELYARD_* variable Settings reads, groups as MODELYARD_<GROUP>__<FIELD>."""
    names: list[str] = []
    for name, field in Settings.model_fields.items():
        if _env_prefix(field.annotation) is not None:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += [
                f"{ENV_PREFIX}{name.upper()}__{inner.upper()}" for inner in field.annotation.model_fields
            ]
        else:
            names.append(f"{ENV_PREFIX}{name.upper()}")
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a MODELYARD_* variable that is no setting, naming it and the closest setting's name.

    A misspelt setting would otherwise be ignored without a word. Test switches use other prefixes
    (``TEST_KIND``, ``TEST_KFP``), and Kubernetes' service-link variables (``MODELYARD_SERVICE_HOST``,
    ...) are not settings either.
    """
    known = setting_variables()
    suffixes = [name.removeprefix(ENV_PREFIX) for name in known]
    problems = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or _is_service_link(upper, environ[variable]):
            continue
        # Compared without the prefix they all share, which would make any two names look alike.
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
        hint = (
            f": did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else " (the settings are in the README's Configuration table)"
        )
        problems.append(f"unknown setting {variable}{hint}")
    if problems:
        raise ModelyardError("; ".join(problems))


def to_environment(settings: Settings) -> dict[str, str]:
    """The variables that rebuild ``settings`` in another process: MODELYARD_* and a group's own (AWS_*)."""
    environment: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        own_prefix = _env_prefix(Settings.model_fields[name].annotation)
        if isinstance(value, dict):
            prefix = own_prefix if own_prefix is not None else f"{ENV_PREFIX}{name.upper()}__"
            items = [(f"{prefix}{key.upper()}", inner) for key, inner in value.items()]
        else:
            items = [(f"{ENV_PREFIX}{name.upper()}", value)]
        environment.update(
            {
                key: item if isinstance(item, str) else json.dumps(item)
                for key, item in items
                if item is not None
            }
        )
    return environment


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, turning a bad or unknown variable into an error naming it."""
    check_environment(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MODELYARD_{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ModelyardError(f"invalid configuration: {problems}") from exc


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """The argparse ``type`` and extra keywords for a settings field's annotation."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):  # `X | None`: the flag takes an X
        (inner,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _flag_type(inner)
    if origin is Literal:
        return None, {"choices": [str(choice) for choice in get_args(annotation)]}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    return annotation, {}


def add_group_flags(
    parser: argparse.ArgumentParser,
    group: type[BaseModel],
    *,
    exclude: Collection[str] = (),
) -> None:
    """One flag per field of a settings group (but those in ``exclude``), the field's description as help.

    ``--max-batch-size`` sets the field ``max_batch_size``; the underscore spelling (``--max_batch_size``)
    is accepted too, as KServe's ServingRuntime arguments use it (``--model_name``, ``--http_port``).
    """
    for name, field in group.model_fields.items():
        if name in exclude:
            continue
        flag_type, extra = _flag_type(field.annotation)
        dashed = "--" + name.replace("_", "-")
        spellings = [dashed] if "_" not in name else [dashed, f"--{name}"]
        default = field.get_default(call_default_factory=False)
        shown = "" if default is None or default == "" else f" (default: {default})"
        parser.add_argument(
            *spellings,
            dest=name,
            default=None,
            help=f"{field.description or name}{shown}",
            **({"type": flag_type} if flag_type is not None else {}),
            **extra,
        )


def with_group_flags(settings: Settings, group: str, namespace: argparse.Namespace) -> Settings:
    """``settings`` with the group's fields that were given as flags replaced, validated as a whole."""
    current: BaseModel = getattr(settings, group)
    given = {
        name: value
        for name, value in vars(namespace).items()
        if name in type(current).model_fields and value is not None
    }
    try:
        updated = type(current).model_validate({**current.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(part) for part in err['loc']).replace('_', '-')}: {err['msg']}"
            if err["loc"]
            else err["msg"]  # a rule between several fields names them itself
            for err in exc.errors()
        )
        raise ModelyardError(f"invalid configuration: {problems}") from None
    return settings.model_copy(update={group: updated})
