"""The operator's reads and writes of Kubernetes objects, through the kubernetes client's DynamicClient.

Children are written by server-side apply under the field manager ``modelyard-operator``: repeating an
apply changes nothing, and a field the manifest no longer sets is removed (a merge patch could not).
Only an object whose ownerReferences name the Model as its controller is applied to or deleted; one of
the same name that is not the Model's is reported (``NotOurs``), never adopted. A kind the API server
does not serve (KServe not installed) has no objects: reading or deleting one finds nothing, and writing
one says which CRD is missing. Status is replaced with the resourceVersion it was computed from, so a
write that raced another is refused (409) and computed again from a fresh read, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf

from modelyard.deploy.kube import custom_objects_api
from modelyard.errors import ModelyardError, NotFound

RETRY_DELAY_S = 2.0
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "modelyard-operator"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str


CONFIG_MAP = Kind("v1", "ConfigMap")
JOB = Kind("batch/v1", "Job")
CRON_JOB = Kind("batch/v1", "CronJob")
INFERENCE_SERVICE = Kind("serving.kserve.io/v1beta1", "InferenceService")
MODEL = Kind("modelyard.io/v1alpha1", "Model")


class NotOurs(ModelyardError):
    """An object of a child's name exists and is not the Model's: it is neither adopted nor deleted."""

    status_code = 409


class KindMissing(ModelyardError):
    """The API server serves no such kind: its CRD (KServe's, for an InferenceService) is not installed."""

    status_code = 404


def owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    """Whether ``obj``'s controlling owner is the object whose uid is ``owner_uid``."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in references)


def job_finished(job: dict[str, Any]) -> bool:
    """Whether the Job ``job`` has finished: Complete or Failed (a Job still starting has no status)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


class Cluster:
    """Objects of one API server; a thin layer that turns the client's errors into the operator's."""

    def __init__(self, api_client: Any | None = None) -> None:
        from kubernetes.dynamic import DynamicClient

        self.client = DynamicClient(api_client or custom_objects_api().api_client)

    def _resource(self, kind: Kind) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self.client.resources.get(api_version=kind.api_version, kind=kind.kind)
        except ResourceNotFoundError as exc:
            raise KindMissing(
                f"the API server serves no {kind.kind} ({kind.api_version}): is its CRD installed?"
            ) from exc

    def get(self, kind: Kind, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            found: dict[str, Any] = self._resource(kind).get(name=name, namespace=namespace).to_dict()
        except (NotFoundError, KindMissing):
            return None
        return found

    def list(
        self, kind: Kind, namespace: str, labels: dict[str, str], *, owner_uid: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects with ``labels``; with ``owner_uid``, only those that owner controls."""
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        try:
            found = self._resource(kind).get(namespace=namespace, label_selector=selector).to_dict()
        except KindMissing:
            return []
        items: list[dict[str, Any]] = found.get("items", [])
        return [item for item in items if owner_uid is None or owned_by(item, owner_uid)]

    def ensure(
        self, kind: Kind, namespace: str, manifest: dict[str, Any], owner_uid: str, *, update: bool = True
    ) -> bool:
        """Create ``manifest``, or (``update``) apply it to the object the owner already has; True if
        created. NotOurs when an object of its name is not the owner's. Without ``update`` (a Job, which
        cannot change) the object is only ever created."""
        from kubernetes.dynamic.exceptions import ConflictError

        name = manifest["metadata"]["name"]
        existing = self.get(kind, name, namespace)
        if existing is None and not update:
            try:
                self._resource(kind).create(body=manifest, namespace=namespace)
            except ConflictError as exc:  # created meanwhile: whose it is decides, as below
                existing = self.get(kind, name, namespace)
                if existing is None:
                    raise _retry(kind, name, exc) from exc
            else:
                return True
        if existing is not None:
            if not owned_by(existing, owner_uid):
                raise NotOurs(
                    f"{kind.kind} {namespace}/{name} exists and is not this Model's (no controlling "
                    "ownerReference to it): the operator neither adopts nor deletes it; rename or remove it"
                )
            if not update:
                return False
        self.apply(kind, namespace, manifest)
        return existing is None

    def apply(self, kind: Kind, namespace: str, manifest: dict[str, Any]) -> None:
        """Server-side apply, taking over fields another manager set (the operator's children are its)."""
        from kubernetes.dynamic.exceptions import ConflictError

        resource = self._resource(kind)
        name = manifest["metadata"]["name"]
        try:
            resource.server_side_apply(
                body=manifest,
                name=name,
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ConflictError as exc:
            raise _retry(kind, name, exc) from exc

    def patch(self, kind: Kind, name: str, namespace: str, body: dict[str, Any]) -> None:
        """Merge-patch one object; NotFound when it does not exist."""
        from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

        try:
            self._resource(kind).patch(body=body, name=name, namespace=namespace, content_type=MERGE_PATCH)
        except NotFoundError as exc:
            raise NotFound(f"{kind.kind} {namespace}/{name} not found") from exc
        except ConflictError as exc:
            raise _retry(kind, name, exc) from exc

    def replace_status(self, kind: Kind, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        """Replace ``obj``'s status, on condition that it is still at the resourceVersion it was read at.
        False when it changed meanwhile (409: read it again); True when written, or when it is gone."""
        from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

        meta = obj["metadata"]
        try:
            self._resource(kind).status.replace(
                body={**obj, "status": status}, name=meta["name"], namespace=meta["namespace"]
            )
        except ConflictError:
            return False
        except NotFoundError:
            return True
        return True

    def delete(self, kind: Kind, name: str, namespace: str, owner_uid: str) -> bool:
        """Delete one object the owner controls; False when it is gone, or is not the owner's (left be)."""
        from kubernetes.dynamic.exceptions import ConflictError, DynamicApiError, NotFoundError

        try:
            existing = self.get(kind, name, namespace)
            if existing is None or not owned_by(existing, owner_uid):
                return False
            # the uid precondition: an object replaced since it was read (another one now) is left alone
            preconditions = {"preconditions": {"uid": existing["metadata"]["uid"]}}
            self._resource(kind).delete(name=name, namespace=namespace, body=preconditions)
        except (NotFoundError, ConflictError, KindMissing):
            return False
        except DynamicApiError as exc:  # refused or failed: the API server's reason, not its whole response
            raise ModelyardError(
                f"cannot delete {kind.kind} {namespace}/{name} ({exc.status}): {exc.summary()}"
            ) from exc
        return True


def _retry(kind: Kind, name: str, exc: Any) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"{kind.kind} {name}: {exc.summary()}", delay=RETRY_DELAY_S)
