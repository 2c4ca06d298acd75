"""The operator's writes against a real API server: server-side apply removes what a manifest no longer
sets, an object that is not the owner's is neither applied to nor deleted, a kind the API server does not
serve has no objects (so a finalizer does not wait on it), and a status computed from a stale read is
refused rather than written over a newer one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.deploy.kube import custom_objects_api
from modelyard.operator.kube import CONFIG_MAP, MODEL, Cluster, Kind, KindMissing, NotOurs

pytestmark = pytest.mark.cluster

ABSENT = Kind("absent.modelyard.io/v1", "Absent")


@pytest.fixture
def cluster(model_crd: Any) -> Cluster:
    # the kubeconfig by name: the client reads $KUBECONFIG once, when it is first imported
    return Cluster(custom_objects_api(Path(model_crd.kubeconfig)).api_client)


def config_map(name: str, data: dict[str, str], owner: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def make_owner(model_crd: Any, namespace: str, cluster: Cluster) -> dict[str, Any]:
    model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(config_map("owner", {})))
    owner = cluster.get(CONFIG_MAP, "owner", namespace)
    assert owner is not None
    return owner


def test_apply_removes_a_field_the_manifest_no_longer_sets(
    model_crd: Any, namespace: str, cluster: Cluster
) -> None:
    owner = make_owner(model_crd, namespace, cluster)
    uid = owner["metadata"]["uid"]
    assert cluster.ensure(CONFIG_MAP, namespace, config_map("child", {"a": "1", "b": "2"}, owner), uid)
    assert not cluster.ensure(CONFIG_MAP, namespace, config_map("child", {"a": "1"}, owner), uid)
    child = cluster.get(CONFIG_MAP, "child", namespace)
    assert child is not None
    assert child["data"] == {"a": "1"}
    managers = {(entry["manager"], entry["operation"]) for entry in child["metadata"]["managedFields"]}
    assert ("modelyard-operator", "Apply") in managers


def test_an_object_that_is_not_the_owners_is_neither_adopted_nor_deleted(
    model_crd: Any, namespace: str, cluster: Cluster
) -> None:
    owner = make_owner(model_crd, namespace, cluster)
    uid = owner["metadata"]["uid"]
    model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(config_map("theirs", {"x": "1"})))
    with pytest.raises(NotOurs, match=f"ConfigMap {namespace}/theirs exists and is not this Model's"):
        cluster.ensure(CONFIG_MAP, namespace, config_map("theirs", {"x": "2"}, owner), uid)
    assert not cluster.delete(CONFIG_MAP, "theirs", namespace, uid)
    found = cluster.get(CONFIG_MAP, "theirs", namespace)
    assert found is not None and found["data"] == {"x": "1"}
    cluster.ensure(CONFIG_MAP, namespace, config_map("ours", {"x": "1"}, owner), uid)
    assert cluster.delete(CONFIG_MAP, "ours", namespace, uid)
    assert cluster.get(CONFIG_MAP, "ours", namespace) is None


def test_a_kind_the_api_server_does_not_serve_has_no_objects(namespace: str, cluster: Cluster) -> None:
    assert cluster.get(ABSENT, "x", namespace) is None
    assert cluster.list(ABSENT, namespace, {"a": "b"}) == []
    assert not cluster.delete(ABSENT, "x", namespace, "uid")  # a finalizer deleting it is done
    manifest = {"apiVersion": ABSENT.api_version, "kind": ABSENT.kind, "metadata": {"name": "x"}}
    with pytest.raises(KindMissing, match=r"the API server serves no Absent \(absent.modelyard.io/v1\)"):
        cluster.ensure(ABSENT, namespace, manifest, "uid")


def test_a_status_computed_from_a_stale_read_is_refused(
    model_crd: Any, namespace: str, cluster: Cluster
) -> None:
    model = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "iris"},
        "spec": {"data": {"path": "/data/iris.csv"}, "target": "species"},
    }
    model_crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(model))
    stale = cluster.get(MODEL, "iris", namespace)
    assert stale is not None
    assert cluster.replace_status(MODEL, stale, {"phase": "Training"})
    assert not cluster.replace_status(MODEL, stale, {"phase": "Ready"}), "a stale write replaced a newer one"
    fresh = cluster.get(MODEL, "iris", namespace)
    assert fresh is not None and fresh["status"] == {"phase": "Training"}
    assert cluster.replace_status(MODEL, fresh, {"phase": "Ready"})
