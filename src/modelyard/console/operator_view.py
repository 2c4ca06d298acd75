"""The operator's Model resources as the console shows them: phase, Ready, the versions the operator
records, its conditions, the current (or last) rollout and the last analysis's checks.

They are read through the operator's own client (``modelyard.operator.kube.Cluster``) and only when
``MODELYARD_CONSOLE__KUBERNETES`` is on. Kubernetes is optional for the console: when the API server
cannot be asked (no kubeconfig, refused, forbidden, the CRD not installed), every answer carries the
reason instead, and the pages say "operator not connected" rather than fail.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from modelyard.errors import Conflict, NotFound, NotReady
from modelyard.settings import ConsoleSettings

if TYPE_CHECKING:
    from modelyard.operator.kube import Cluster

log = logging.getLogger(__name__)

NOT_ENABLED = "the console does not ask Kubernetes (set MODELYARD_CONSOLE__KUBERNETES=true on a cluster)"


def resource_summary(item: dict[str, Any]) -> dict[str, Any]:
    """What the pages show of one Model object, from its metadata and status (the CRD's status fields)."""
    from modelyard.operator.conditions import READY

    status = item.get("status") or {}
    conditions = list(status.get("conditions") or [])
    ready = next((c for c in conditions if c.get("type") == READY), None) or {}
    return {
        "name": item["metadata"]["name"],
        "namespace": item["metadata"].get("namespace", ""),
        "phase": status.get("phase") or "Pending",
        "ready": ready.get("status", "Unknown"),
        "ready_message": ready.get("message", ""),
        "serving_version": status.get("servingVersion"),
        "url": status.get("url"),
        "latest_run": status.get("latestRun"),
        "conditions": conditions,
        "versions": list(status.get("versions") or []),
        "last_analysis": status.get("lastAnalysis"),
        "rollout": status.get("rollout"),
    }


def _reason(exc: Exception) -> str:
    """One line about why the API server could not be asked (an ApiException's own text is its headers)."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if isinstance(status, int) and reason:
        return f"the API server answered {status} {reason}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else 'no detail'}"


class OperatorView:
    """Model resources of one namespace; the client is made on first use and kept once it works."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.enabled = settings.kubernetes
        self.namespace = settings.namespace
        self._cluster: Cluster | None = None
        self._lock = threading.Lock()

    def _connect(self) -> Cluster:
        with self._lock:
            if self._cluster is None:
                from modelyard.operator.kube import Cluster

                self._cluster = Cluster()
            return self._cluster

    def connect_in_background(self) -> None:
        """Make the client (its discovery of the API server's resources can take seconds) on a thread, so
        the first page need not wait for it; a failure here is told again by the first page that asks."""

        def connect() -> None:
            try:
                self._connect()
            except Exception as exc:  # the pages report it: see models()
                log.warning("cannot connect to the API server yet: %s", _reason(exc))

        if self.enabled:
            threading.Thread(target=connect, name="operator-view-connect", daemon=True).start()

    def not_connected(self, note: str) -> dict[str, Any]:
        return {"connected": False, "note": note, "namespace": self.namespace, "models": {}, "model": None}

    def _unreachable(self, exc: Exception) -> dict[str, Any]:
        log.warning("cannot read Model resources in %s: %s", self.namespace, exc)
        return self.not_connected(
            f"cannot read Model resources in namespace {self.namespace}: {_reason(exc)}"
        )

    def models(self) -> dict[str, Any]:
        """Every Model of the namespace by name: ``{"connected", "note", "namespace", "models"}``."""
        if not self.enabled:
            return self.not_connected(NOT_ENABLED)
        from modelyard.operator.kube import MODEL

        # Any failure to ask an optional, external API server is shown as its reason, never a failed page.
        try:
            items = self._connect().list(MODEL, self.namespace, {})
        except Exception as exc:
            return self._unreachable(exc)
        summaries = {item["metadata"]["name"]: resource_summary(item) for item in items}
        return {**self.not_connected(""), "connected": True, "models": summaries}

    def request_retrain(self, name: str) -> dict[str, Any]:
        """Ask the operator to retrain ``name`` as the retrain webhook does (``ModelResourceLauncher``: the
        Model's retrain-requested annotation; the operator starts a Job), so a run never takes the
        console's pod; refused with the reason when the Model cannot be asked or will not retrain."""
        if not self.enabled:
            raise Conflict(
                "retraining on the cluster asks the operator's Model resource: "
                "set MODELYARD_CONSOLE__KUBERNETES=true (chart: console.kubernetes.enabled)"
            )
        from modelyard.operator.kube import MODEL
        from modelyard.operator.launcher import ModelResourceLauncher

        try:
            cluster = self._connect()
            item = cluster.get(MODEL, name, self.namespace)
        except Exception as exc:  # shown as its reason, as the pages do
            raise NotReady(f"cannot ask the operator to retrain {name}: {_reason(exc)}") from None
        if item is None:
            raise NotFound(
                f"no Model resource {name} in namespace {self.namespace}: the operator does not train this "
                "model (apply a Model, or use `modelyard train`)"
            )
        training = (item.get("spec") or {}).get("training") or {}
        if training.get("retrain_on_alert") is False:
            raise Conflict(
                f"Model {self.namespace}/{name} has spec.training.retrain_on_alert: false, so the operator "
                "starts no run on request"
            )
        try:
            request = ModelResourceLauncher(self.namespace, cluster).start(name)
        except NotFound:
            raise
        except Exception as exc:  # e.g. a Role without patch: the reason, not a failed page
            raise NotReady(f"cannot ask the operator to retrain {name}: {_reason(exc)}") from None
        return {
            "model": name,
            "namespace": self.namespace,
            "request": request,
            "message": f"asked the operator to retrain {name} ({request}): it starts a Job, and the run "
            "shows as the Model's latest run on the Monitoring page",
        }

    def model(self, name: str) -> dict[str, Any]:
        """The Model ``name``: ``{"connected", "note", "namespace", "model"}``; ``model`` is None when the
        namespace has no such resource."""
        if not self.enabled:
            return self.not_connected(NOT_ENABLED)
        from modelyard.operator.kube import MODEL

        try:
            item = self._connect().get(MODEL, name, self.namespace)
        except Exception as exc:
            return self._unreachable(exc)
        found = resource_summary(item) if item is not None else None
        return {**self.not_connected(""), "connected": True, "model": found}
