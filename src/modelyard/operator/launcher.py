"""The retrain webhook's launcher where the operator runs: a retraining is asked of the Model resource.

``start`` sets the Model's ``modelyard.io/retrain-requested`` annotation to the moment of the request; the
operator starts one Job for each new value (when ``spec.training.retrain_on_alert`` allows it), so the
webhook needs no access to Jobs' pods, images or Secrets: only to patch Models and read Jobs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from modelyard.errors import NotFound
from modelyard.operator import children
from modelyard.operator.kube import JOB, MODEL, Cluster


class ModelResourceLauncher:
    """Asks the Models of one namespace for retraining runs, and sees whether one is in flight."""

    def __init__(self, namespace: str, cluster: Cluster | None = None) -> None:
        self.namespace = namespace
        self.cluster = cluster or Cluster()

    def start(self, model: str) -> str:
        if self.cluster.get(MODEL, model, self.namespace) is None:
            raise NotFound(f"no Model {self.namespace}/{model}: nothing asks the operator to retrain it")
        requested = datetime.now(UTC).isoformat(timespec="microseconds")
        annotations = {children.RETRAIN_ANNOTATION: requested}
        self.cluster.patch(MODEL, model, self.namespace, {"metadata": {"annotations": annotations}})
        return f"{self.namespace}/{model}@{requested}"

    def running(self, model: str) -> bool:
        labels = {children.MODEL_LABEL: model, children.TRIGGER_LABEL: "alert"}
        for job in self.cluster.list(JOB, self.namespace, labels):
            conditions = (job.get("status") or {}).get("conditions") or []
            if not any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
            ):
                return True
        return False
