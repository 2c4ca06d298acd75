"""The operator's reads and writes of Kubernetes objects, through the kubernetes client's DynamicClient.

Every write is safe to repeat: an object that exists is merge-patched only where it differs from the
manifest (or left alone when it cannot change, a Job), and a create that finds the object (409
AlreadyExists: created meanwhile) is treated as finding it. A conflict the API server reports for
another reason (a write racing another writer) becomes ``kopf.TemporaryError``, so kopf runs the handler
again a moment later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import kopf

from modelyard.deploy.kube import custom_objects_api
from modelyard.errors import NotFound

RETRY_DELAY_S = 2.0
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str


CONFIG_MAP = Kind("v1", "ConfigMap")
JOB = Kind("batch/v1", "Job")
CRON_JOB = Kind("batch/v1", "CronJob")
INFERENCE_SERVICE = Kind("serving.kserve.io/v1beta1", "InferenceService")
MODEL = Kind("modelyard.io/v1alpha1", "Model")


class Cluster:
    """Objects of one API server; a thin layer that turns the client's errors into kopf's retry rules."""

    def __init__(self, api_client: Any | None = None) -> None:
        from kubernetes.dynamic import DynamicClient

        self.client = DynamicClient(api_client or custom_objects_api().api_client)

    def _resource(self, kind: Kind) -> Any:
        return self.client.resources.get(api_version=kind.api_version, kind=kind.kind)

    def get(self, kind: Kind, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            found: dict[str, Any] = self._resource(kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None
        return found

    def list(self, kind: Kind, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        found = self._resource(kind).get(namespace=namespace, label_selector=selector).to_dict()
        items: list[dict[str, Any]] = found.get("items", [])
        return items

    def ensure(self, kind: Kind, namespace: str, manifest: dict[str, Any], *, patch: bool = True) -> bool:
        """Create ``manifest``, or bring the object to it: a merge patch when a field differs (``patch``),
        nothing when it already holds every field. True if created."""
        from kubernetes.dynamic.exceptions import ConflictError

        resource = self._resource(kind)
        name = manifest["metadata"]["name"]
        existing = self.get(kind, name, namespace)
        if existing is None:
            try:
                resource.create(body=manifest, namespace=namespace)
            except ConflictError as exc:  # created meanwhile, by a handler running beside this one
                if not _already_exists(exc):
                    raise _retry(kind, name, exc) from exc
            else:
                return True
        if patch and (existing is None or not holds(existing, manifest)):
            try:
                resource.patch(body=manifest, name=name, namespace=namespace, content_type=MERGE_PATCH)
            except ConflictError as exc:
                raise _retry(kind, name, exc) from exc
        return False

    def patch(self, kind: Kind, name: str, namespace: str, body: dict[str, Any]) -> None:
        """Merge-patch one object; NotFound when it does not exist."""
        from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

        try:
            self._resource(kind).patch(body=body, name=name, namespace=namespace, content_type=MERGE_PATCH)
        except NotFoundError as exc:
            raise NotFound(f"{kind.kind} {namespace}/{name} not found") from exc
        except ConflictError as exc:
            raise _retry(kind, name, exc) from exc

    def patch_status(self, kind: Kind, name: str, namespace: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource; a Model deleted meanwhile is no error."""
        from kubernetes.dynamic.exceptions import NotFoundError

        body = {"status": status}
        try:
            self._resource(kind).status.patch(
                body=body, name=name, namespace=namespace, content_type=MERGE_PATCH
            )
        except NotFoundError:
            return

    def delete(self, kind: Kind, name: str, namespace: str) -> bool:
        """Delete one object; False when it was already gone."""
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            self._resource(kind).delete(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True


def holds(existing: Any, wanted: Any) -> bool:
    """Whether ``existing`` already has every field of ``wanted`` (what a merge patch of it would set);
    fields the API server or a webhook added (defaults) do not count as differences."""
    if isinstance(wanted, dict):
        return isinstance(existing, dict) and all(
            key in existing and holds(existing[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(wanted)
            and all(holds(have, want) for have, want in zip(existing, wanted, strict=True))
        )
    return bool(existing == wanted)


def _retry(kind: Kind, name: str, exc: Any) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"{kind.kind} {name}: {exc.summary()}", delay=RETRY_DELAY_S)


def _already_exists(exc: Any) -> bool:
    """A 409 is AlreadyExists (a repeated create) or Conflict (a stale write); the Status body says which."""
    try:
        reason = json.loads(exc.body or "{}").get("reason")
    except (TypeError, ValueError):
        return False
    return bool(reason == "AlreadyExists")
