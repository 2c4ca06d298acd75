"""Runs asked of the Model resource, where the operator runs: by the retrain webhook, the console, and a
schedule's CronJob (`modelyard request-run`).

``start`` sets the Model's annotation for the trigger (``modelyard.io/retrain-requested`` for an alert,
``modelyard.io/schedule-requested`` for the schedule) to the moment of the request; the operator starts
one run with the Model's runner for each new value (an alert's when ``spec.training.retrain_on_alert``
allows it), so the asker needs no access to Jobs' pods, images, Secrets or KFP: only to patch Models
(and the webhook, to read Jobs).
"""

from __future__ import annotations

from datetime import UTC, datetime

from modelyard.errors import ModelyardError, NotFound
from modelyard.operator import children
from modelyard.operator.kube import JOB, MODEL, Cluster, job_finished


class RequestRefused(ModelyardError):
    """The API server refused the asker's patch of the Model (403): its account lacks the Role."""

    status_code = 403
    exit_code = children.REQUEST_REFUSED_EXIT_CODE


class ModelResourceLauncher:
    """Asks the Models of one namespace for runs, and sees whether a retraining is in flight."""

    def __init__(self, namespace: str, cluster: Cluster | None = None) -> None:
        self.namespace = namespace
        self.cluster = cluster or Cluster()

    def start(self, model: str, trigger: str = children.ALERT) -> str:
        """Ask for one run of ``model`` for ``trigger`` (alert or schedule); the request, as
        ``namespace/model@moment``."""
        requested = datetime.now(UTC).isoformat(timespec="microseconds")
        annotations = {children.REQUEST_ANNOTATIONS[trigger]: requested}
        # a merge patch alone (a missing Model is its 404): the asker needs no get on Models
        try:
            self.cluster.patch(MODEL, model, self.namespace, {"metadata": {"annotations": annotations}})
        except NotFound as exc:
            message = f"no Model {self.namespace}/{model}: nothing asks the operator to retrain it"
            raise NotFound(message) from exc
        return f"{self.namespace}/{model}@{requested}"

    def running(self, model: str) -> bool:
        labels = {children.MODEL_LABEL: model, children.TRIGGER_LABEL: children.ALERT}
        return any(not job_finished(job) for job in self.cluster.list(JOB, self.namespace, labels))
