"""What the console shows and does, without HTTP: the registry's models and versions, a version's bundle
files, comparisons, predictions through a V2 endpoint, batch scoring, the monitoring report, and stage
changes. The page and its JSON API both call these functions; each returns plain JSON-able data or raises
a ModelyardError whose message the page shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modelyard.bundle import EVALUATION_FILE, MANIFEST_NAME, MODEL_CARD_FILE, REPORT_FILE, BundleMetadata
from modelyard.errors import (
    BundleIntegrityError,
    DataValidationError,
    InvalidInput,
    ModelyardError,
    NotFound,
    NotReady,
)
from modelyard.monitoring.accuracy import accuracy_gate
from modelyard.monitoring.report import Report
from modelyard.processes import post_json
from modelyard.registry import ModelVersionRecord, Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import FeatureType
from modelyard.storage import open_store_from_uri

log = logging.getLogger(__name__)

# A predictor answers one row in milliseconds: a slow one is reported soon, and holds a worker briefly.
PREDICT_TIMEOUT_S = 5.0
# Versions one Compare page reads (each bundle's files come from the store); one line style each.
MAX_COMPARED = 8
# Rows scored between two progress reports of a batch job (the pipeline's default chunk is 10,000).
SCORE_CHUNK_ROWS = 2_000
# The newest logged rows binned for each model's drift status on the models list (the Monitoring page
# reads the report's own maximum): enough for a stable PSI, cheap for a list of many models.
HEALTH_ROWS = 5_000
# As the predictor's DriftMonitor and AccuracyCollector: with fewer rows sampling noise alone looks like
# drift, and with fewer labels live accuracy is not judged.
MIN_DRIFT_ROWS = 200
MIN_LABELS = 30


def version_summary(record: ModelVersionRecord) -> dict[str, Any]:
    return {**record.to_dict(), "ref": record.ref}


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity, at any depth, replaced by None: JSON has no such numbers (a
    metric or score can be NaN, and the JSON API must still answer)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def list_models(
    registry: Registry, settings: Settings | None = None, *, health_hours: float | None = None
) -> list[dict[str, Any]]:
    """Every model with its versions, its production and staging versions, and its latest metrics; with
    ``health_hours`` (and ``settings``), also its drift and live accuracy over that many last hours."""
    by_name: dict[str, list[ModelVersionRecord]] = {}
    for record in registry.list_versions():
        by_name.setdefault(record.name, []).append(record)
    models = []
    for name, records in sorted(by_name.items()):
        records.sort(key=lambda r: r.version)
        latest = records[-1]
        production = next((r for r in records if r.stage is Stage.PRODUCTION), None)
        staging = [r.version for r in records if r.stage is Stage.STAGING]
        health = None
        if health_hours is not None and settings is not None:
            health = model_health(settings, registry, production or latest, health_hours)
        models.append(
            {
                "name": name,
                "versions": [version_summary(r) for r in records],
                "production": production.version if production else None,
                "staging": staging[-1] if staging else None,
                "latest": latest.version,
                "latest_metrics": latest.metrics,
                "health": health,
            }
        )
    return models


def _window_report(
    settings: Settings,
    registry: Registry,
    record: ModelVersionRecord,
    hours: float,
    *,
    max_rows: int | None = None,
) -> tuple[Report, BundleMetadata]:
    """The monitoring report (modelyard.monitoring, as `modelyard monitor report` builds it) of every
    version of ``record``'s model over the last ``hours``, drift measured against ``record``'s bundle."""
    from modelyard.monitoring.report import DEFAULT_MAX_ROWS, build_report

    metadata = BundleFiles(settings, record).metadata
    numeric = [f.name for f in metadata.features if f.type is FeatureType.NUMERIC]
    report = build_report(
        registry.engine,
        record.name,
        since=timedelta(hours=hours),
        reference_stats=metadata.reference_stats,
        numeric_columns=numeric,
        max_rows=max_rows or DEFAULT_MAX_ROWS,
    )
    return report, metadata


def model_health(
    settings: Settings, registry: Registry, record: ModelVersionRecord, hours: float
) -> dict[str, Any]:
    """The drift and live accuracy status of ``record``'s model over the last ``hours``; a model whose
    bundle cannot be read gets its error here, so one bad model does not hide the others."""
    try:
        report, metadata = _window_report(settings, registry, record, hours, max_rows=HEALTH_ROWS)
    except ModelyardError as exc:
        return {"hours": hours, "error": exc.message}
    return {
        "hours": hours,
        "reference_version": record.version,
        "drift": drift_status(report),
        "accuracy": accuracy_status(report, accuracy_gate(metadata, settings.monitoring.accuracy_tolerance)),
    }


def drift_status(report: Report) -> dict[str, Any]:
    """``state``: off (no drift reference), no-data, too-few-rows, drift (a PSI above the alert threshold)
    or ok; with the most drifted feature and its PSI."""
    from modelyard.monitoring.rules import Thresholds

    threshold = Thresholds().drift_psi
    status: dict[str, Any] = {"rows": report.rows, "threshold": threshold, "feature": None, "psi": None}
    if not report.drift_enabled:
        return {**status, "state": "off"}
    if not report.drift:
        return {**status, "state": "no-data"}
    worst = max(report.drift, key=lambda d: d.psi)
    status.update(feature=worst.name, psi=worst.psi)
    if report.rows < MIN_DRIFT_ROWS:
        return {**status, "state": "too-few-rows"}
    return {**status, "state": "drift" if worst.psi > threshold else "ok"}


def accuracy_status(report: Report, gate: float) -> dict[str, Any]:
    """``state``: no-data, no-labels, too-few-labels, below-gate (live accuracy under the holdout's less
    the tolerance, where the alert fires) or ok."""
    window = report.accuracy
    status: dict[str, Any] = {
        "gate": gate,
        "predicted_rows": window.predicted_rows if window else 0,
        "labelled_rows": window.labelled_rows if window else 0,
        "accuracy": window.accuracy if window else None,
        "estimated_accuracy": window.estimated_accuracy if window else None,
    }
    if window is None or window.predicted_rows == 0:
        return {**status, "state": "no-data"}
    if window.accuracy is None:
        return {**status, "state": "no-labels"}
    if window.labelled_rows < MIN_LABELS:
        return {**status, "state": "too-few-labels"}
    return {**status, "state": "below-gate" if window.accuracy < gate else "ok"}


class BundleFiles:
    """The small files of a registered version's bundle: metadata.json checked against the registry's
    sha256, each other file against metadata.json's."""

    def __init__(self, settings: Settings, record: ModelVersionRecord) -> None:
        self._store, self._key = open_store_from_uri(record.storage_uri, settings.s3)
        self.record = record
        manifest = self._store.get_bytes(f"{self._key}/{MANIFEST_NAME}")
        # metadata.json pins every other file; the registry's digest pins metadata.json (as scoring checks)
        digest = hashlib.sha256(manifest).hexdigest()
        if digest != record.sha256:
            raise BundleIntegrityError(
                f"bundle {record.storage_uri} is not the one the registry recorded for {record.ref}: its "
                f"{MANIFEST_NAME} has sha256 {digest}, the registry {record.sha256}",
                file=MANIFEST_NAME,
            )
        self.metadata = BundleMetadata.model_validate_json(manifest)

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when this bundle has no such file (older bundles lack evaluation.json)."""
        expected = self.metadata.files.get(name)
        if expected is None:
            return None
        data = self._store.get_bytes(f"{self._key}/{name}")
        if hashlib.sha256(data).hexdigest() != expected:
            raise BundleIntegrityError(
                f"{name} of {self.record.ref} does not match the sha256 in its metadata.json", file=name
            )
        return data


def version_detail(settings: Settings, registry: Registry, name: str, version: int) -> dict[str, Any]:
    """A version's registry row plus its bundle: features, classes, evaluation, candidates, model card."""
    record = registry.get_version(name, version)
    files = BundleFiles(settings, record)
    evaluation_bytes = files.read(EVALUATION_FILE)
    evaluation = json.loads(evaluation_bytes) if evaluation_bytes is not None else {}
    card = files.read(MODEL_CARD_FILE)
    metadata = files.metadata
    return {
        **version_summary(record),
        "target": metadata.target,
        "features": [feature.model_dump(mode="json") for feature in metadata.features],
        "classes": metadata.classes,
        "library_versions": metadata.library_versions,
        "bundle_created_at": metadata.created_at.isoformat(),
        "onnx": None if metadata.onnx is None else metadata.onnx.model_dump(mode="json"),
        "evaluation": evaluation.get("evaluation"),
        "candidates": evaluation.get("candidates", []),
        "model_card": card.decode("utf-8") if card is not None else "",
        "files": sorted(metadata.files),
        "form": form_fields(metadata),
        "training_rows": metadata.reference_stats.get("rows"),
        "class_shares": (metadata.reference_stats.get("target") or {}).get("classes", {}),
    }


def form_fields(metadata: BundleMetadata) -> list[dict[str, Any]]:
    """The predict form: a field per feature; categories offer the training data's frequent values, and
    numbers start at the training median."""
    profiles = metadata.reference_stats.get("features", {})
    fields = []
    for feature in metadata.features:
        profile = profiles.get(feature.name, {}) if isinstance(profiles, dict) else {}
        choices = sorted(profile.get("frequencies", {})) if feature.type is FeatureType.CATEGORICAL else []
        default = profile.get("quantiles", {}).get("0.5") if feature.type is FeatureType.NUMERIC else None
        fields.append(
            {"name": feature.name, "type": feature.type.value, "choices": choices, "default": default}
        )
    return fields


def report_html(settings: Settings, registry: Registry, name: str, version: int) -> str:
    record = registry.get_version(name, version)
    data = BundleFiles(settings, record).read(REPORT_FILE)
    if data is None:
        raise NotFound(f"{record.ref} has no {REPORT_FILE}")
    return data.decode("utf-8")


def parse_versions(name: str, versions: Sequence[str]) -> list[int]:
    """Versions to compare, from ``?v=1&v=2`` or ``?v=1,2``: at least two distinct positive integers."""
    numbers: list[int] = []
    for item in versions:
        for part in item.split(","):
            text = part.strip()
            if not text:
                continue
            if not (text.isascii() and text.isdigit()) or int(text) < 1:
                raise InvalidInput(f"compare {name}: a version is a positive integer, got {text!r}")
            if int(text) not in numbers:
                numbers.append(int(text))
    if len(numbers) < 2:
        raise InvalidInput(f"compare {name}: choose at least two different versions, got {numbers or 'none'}")
    if len(numbers) > MAX_COMPARED:
        raise InvalidInput(
            f"compare {name}: at most {MAX_COMPARED} versions at once (each is read from the store), got "
            f"{len(numbers)}"
        )
    return sorted(numbers)


def compare(settings: Settings, registry: Registry, name: str, versions: Sequence[int]) -> dict[str, Any]:
    """Versions side by side, and the parameters and data (source, fingerprint, rows, features, class
    shares) that differ between them."""
    details = [version_detail(settings, registry, name, version) for version in versions]
    param_names = sorted({key for detail in details for key in detail["params"]})
    changed_params = {
        key: [detail["params"].get(key) for detail in details]
        for key in param_names
        if len({json.dumps(detail["params"].get(key), sort_keys=True) for detail in details}) > 1
    }
    metric_names = sorted({key for detail in details for key in detail["metrics"]})
    data = {
        "dataset": [detail["dataset"] or "not a registry dataset" for detail in details],
        "dataset fingerprint": [detail["dataset_fingerprint"] or "—" for detail in details],
        "rows profiled at training": [str(detail["training_rows"] or "—") for detail in details],
        "features": [
            ", ".join(f"{f['name']} ({f['type']})" for f in detail["features"]) for detail in details
        ],
        "class shares": [
            ", ".join(f"{label} {share:.0%}" for label, share in sorted(detail["class_shares"].items()))
            or "—"
            for detail in details
        ],
    }
    return {
        "name": name,
        "versions": details,
        "metrics": {key: [detail["metrics"].get(key) for detail in details] for key in metric_names},
        "changed_params": changed_params,
        "same_data": len({detail["dataset_fingerprint"] for detail in details}) == 1,
        # what each version was trained on, and which of those differ between them
        "data": [
            {"name": key, "values": values, "differs": len(set(values)) > 1} for key, values in data.items()
        ],
        "changed_algorithm": len({detail["algorithm"] for detail in details}) > 1,
    }


def _coerce(feature_type: FeatureType, name: str, value: Any) -> Any:
    if feature_type is FeatureType.NUMERIC:
        if isinstance(value, bool):
            raise InvalidInput(f"feature {name!r} is numeric, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"feature {name!r} is numeric, got {value!r}") from None
    if value is None:
        raise InvalidInput(f"feature {name!r} needs a value")
    return str(value)


def infer_url(settings: Settings, name: str) -> str:
    """The V2 path of model ``name`` at its predictor (MODELYARD_CONSOLE__PREDICTOR_URL with its name)."""
    return f"{settings.console.predictor_for(name)}/v2/models/{quote(name)}"


def predict(
    settings: Settings, registry: Registry, ref_name: str, version: int, row: dict[str, Any]
) -> dict[str, Any]:
    """One row posted to the V2 endpoint (MODELYARD_CONSOLE__PREDICTOR_URL): its label and probabilities."""
    record = registry.get_version(ref_name, version)
    metadata = BundleFiles(settings, record).metadata
    missing = [
        feature.name for feature in metadata.features if feature.name not in row or row[feature.name] == ""
    ]
    if missing:
        raise InvalidInput(f"fill in every feature: missing {', '.join(missing)}")
    inputs = []
    for feature in metadata.features:
        value = _coerce(feature.type, feature.name, row[feature.name])
        datatype = "FP64" if feature.type is FeatureType.NUMERIC else "BYTES"
        inputs.append({"name": feature.name, "shape": [1], "datatype": datatype, "data": [value]})
    # The version's own route: a predictor serving another version answers 404 naming the one it serves.
    url = f"{infer_url(settings, record.name)}/versions/{record.version}/infer"
    answer = _post_json(url, {"inputs": inputs})
    outputs = {output["name"]: output for output in answer.get("outputs", [])}
    if "label" not in outputs:
        raise NotReady(f"the predictor at {url} answered without a 'label' output")
    label = outputs["label"]["data"][0]
    probabilities: dict[str, float] = {}
    if "probabilities" in outputs:
        values = outputs["probabilities"]["data"]
        if len(values) != len(metadata.classes):
            raise NotReady(
                f"the predictor at {url} answered {len(values)} probabilities, but {record.ref} has "
                f"{len(metadata.classes)} classes ({', '.join(map(str, metadata.classes))})"
            )
        probabilities = {str(c): float(p) for c, p in zip(metadata.classes, values, strict=True)}
    return {
        "model": record.name,
        "version": record.version,
        "predictor": url,
        "served_version": answer.get("model_version"),
        "label": label,
        "probabilities": probabilities,
    }


def _post_json(url: str, document: dict[str, Any]) -> dict[str, Any]:
    try:
        status, answer = post_json(url, document, timeout_s=PREDICT_TIMEOUT_S)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise NotReady(f"cannot reach the predictor at {url}: {reason}") from None
    if status >= 400:
        message = answer.get("error", answer) if isinstance(answer, dict) else answer
        error = InvalidInput if status < 500 else NotReady
        raise error(f"the predictor at {url} answered {status}: {message}")
    if not isinstance(answer, dict):
        raise NotReady(f"the predictor at {url} answered {status} without a JSON object")
    return answer


def check_upload(content: bytes) -> None:
    """What can be told of an uploaded CSV before it is scored: that it has something, and is text."""
    if not content.strip():
        raise InvalidInput("the uploaded file is empty: choose a CSV with a header row and data rows")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the uploaded file is not UTF-8 text (byte {exc.start}): upload a CSV file"
        ) from None


def score_csv(
    settings: Settings,
    ref: str,
    content: bytes,
    scratch: Path,
    output_name: str = "scored.csv",
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Score an uploaded CSV through the batch scoring path into ``scratch/output_name``; return its path
    and the summary. ``progress(done, total)`` reports the rows scored."""
    from modelyard.pipeline.scoring_steps import score

    check_upload(content)
    source = scratch / "upload.csv"
    source.write_bytes(content)
    output = scratch / output_name
    try:
        summary = score(
            settings, ref, str(source), str(output), chunk_rows=SCORE_CHUNK_ROWS, progress=progress
        )
    except DataValidationError as exc:
        raise DataValidationError(exc.problems, source="the uploaded CSV") from None
    except ModelyardError as exc:
        if str(source) not in exc.message:
            raise
        # The scratch path means nothing to the person who uploaded the file.
        raise InvalidInput(exc.message.replace(str(source), "the uploaded CSV")) from None
    except ValueError as exc:  # a parser's own error (pandas, pyarrow) names the line: the file's fault
        raise InvalidInput(f"the uploaded CSV could not be read: {exc}") from None
    finally:
        source.unlink(missing_ok=True)  # only the scored file is kept
    return output, summary.to_dict()


def monitoring(settings: Settings, registry: Registry, name: str, since_hours: float) -> dict[str, Any]:
    """The monitoring report of ``name`` over the last hours, drift measured against its production (else
    latest) version, with live accuracy per time bucket and the statuses the models list shows."""
    if not 0 < since_hours <= 24 * 90:
        raise InvalidInput(f"hours must be between 0 and {24 * 90}, got {since_hours}")
    versions = registry.list_versions(name)
    if not versions:
        raise NotFound(f"model {name!r} is not in the registry")
    record = registry.production(name) or versions[0]  # list_versions is newest first
    report, metadata = _window_report(settings, registry, record, since_hours)
    gate = accuracy_gate(metadata, settings.monitoring.accuracy_tolerance)
    return {
        **report.to_dict(),
        "reference_version": record.version,
        "accuracy_over_time": accuracy_over_time(registry, report, metadata.reference_stats, gate),
        "drift_status": drift_status(report),
        "accuracy_status": accuracy_status(report, gate),
    }


def accuracy_over_time(
    registry: Registry, report: Report, reference_stats: dict[str, Any], gate: float
) -> dict[str, Any]:
    """Live accuracy (labelled rows) and its estimate (unlabelled rows) in each of the report's time
    buckets, from modelyard.monitoring's ``live_accuracy`` window by window."""
    from modelyard.monitoring.accuracy import live_accuracy

    count = max(1, len(report.buckets))
    width = (report.until - report.since) / count
    windows = [
        live_accuracy(
            registry.engine,
            report.model,
            since=report.since + width * index,
            until=report.since + width * (index + 1),
            reference_stats=reference_stats,
        )
        for index in range(count)
    ]
    return {
        "buckets": [(report.since + width * index).isoformat(timespec="minutes") for index in range(count)],
        "accuracy": [window.accuracy for window in windows],
        "estimated_accuracy": [window.estimated_accuracy for window in windows],
        "labelled_rows": [window.labelled_rows for window in windows],
        "predicted_rows": [window.predicted_rows for window in windows],
        "gate": gate,
    }


def promote(registry: Registry, name: str, version: int) -> dict[str, Any]:
    return version_summary(registry.promote(name, version))


def rollback(registry: Registry, name: str) -> dict[str, Any]:
    return version_summary(registry.rollback(name))
