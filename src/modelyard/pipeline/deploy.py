"""Point a KServe InferenceService at a published bundle, so KServe's controller rolls it out."""

from __future__ import annotations

from typing import Any

from modelyard.errors import ModelyardError, NotFound

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def storage_uri_patch(storage_uri: str) -> dict[str, Any]:
    """The JSON merge patch that changes only the predictor's model location."""
    return {"spec": {"predictor": {"model": {"storageUri": storage_uri}}}}


def patch_inference_service(name: str, namespace: str, storage_uri: str) -> dict[str, Any]:
    """Merge-patch ``spec.predictor.model.storageUri`` of an existing InferenceService; return it."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
    except ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    try:
        patched: dict[str, Any] = api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, storage_uri_patch(storage_uri)
        )
    except ApiException as exc:
        if exc.status == 404:
            raise NotFound(
                f"InferenceService {namespace}/{name} not found: create it (helm install, or kubectl apply "
                f"-k manifests/) before deploying to it"
            ) from exc
        raise ModelyardError(
            f"patching InferenceService {namespace}/{name} failed: {exc.status} {exc.reason}"
        ) from exc
    return patched
