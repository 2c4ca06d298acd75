"""``modelyard deploy``: point an InferenceService at a registered version's bundle, then record it.

The kubernetes client merge-patches ``spec.predictor.model.storageUri`` (KServe's controller rolls the
predictor out); only once the API server accepted the patch is the version promoted to production in
the registry, so the registry never claims a deployment that did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import ModelyardError, NotFound
from modelyard.registry.refs import ModelRef
from modelyard.settings import Settings

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def storage_uri_patch(storage_uri: str) -> dict[str, Any]:
    """The JSON merge patch that changes only the predictor's model location."""
    return {"spec": {"predictor": {"model": {"storageUri": storage_uri}}}}


@dataclass(frozen=True)
class Deployed:
    name: str
    version: int
    inference_service: str
    namespace: str
    storage_uri: str


def custom_objects_api(kubeconfig: Path | None = None, context: str | None = None) -> Any:
    """A CustomObjectsApi for this kubeconfig and context (in-cluster when neither is given in a pod)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config()
            except ConfigException:
                config.load_kube_config()
            return client.CustomObjectsApi()
        api_client = config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context
        )
    except (ConfigException, OSError) as exc:
        raise ModelyardError(f"cannot load the kubeconfig: {exc}") from exc
    return client.CustomObjectsApi(api_client)


def patch_storage_uri(api: Any, name: str, namespace: str, storage_uri: str) -> dict[str, Any]:
    """Merge-patch the InferenceService's storageUri; NotFound when it does not exist."""
    from kubernetes.client.rest import ApiException

    try:
        patched: dict[str, Any] = api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, storage_uri_patch(storage_uri)
        )
    except ApiException as exc:
        if exc.status == 404:
            raise NotFound(
                f"InferenceService {namespace}/{name} not found: install the chart (modelyard install) first"
            ) from exc
        if exc.status == 403:
            raise ModelyardError(
                f"not allowed to patch InferenceService {namespace}/{name}: {exc.reason}"
            ) from exc
        raise ModelyardError(
            f"patching InferenceService {namespace}/{name} failed: {exc.status} {exc.reason}"
        ) from exc
    return patched


def deploy(
    settings: Settings,
    ref: ModelRef,
    *,
    namespace: str,
    inference_service: str | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
) -> Deployed:
    """Point the InferenceService (default: the model's name) at the version ``ref`` names and promote it."""
    from modelyard.registry import Registry

    target = inference_service or ref.name
    with Registry(settings.database_url) as registry:
        record = registry.resolve(ref)
        api = custom_objects_api(kubeconfig, context)
        patch_storage_uri(api, target, namespace, record.storage_uri)
        registry.promote(record.name, record.version)
    return Deployed(record.name, record.version, target, namespace, record.storage_uri)
