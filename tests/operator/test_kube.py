"""What counts as a difference worth a merge patch: only a field of the manifest the object lacks or holds
otherwise; what the API server or a webhook added (defaults) does not."""

from __future__ import annotations

from modelyard.operator.kube import holds


def test_defaults_the_server_added_are_no_difference() -> None:
    wanted = {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "x", "image": "i"}]}}
    existing = {
        "metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"},
        "spec": {"containers": [{"name": "x", "image": "i", "imagePullPolicy": "IfNotPresent"}]},
    }
    assert holds(existing, wanted)


def test_a_changed_missing_or_extra_field_is_a_difference() -> None:
    wanted = {"spec": {"replicas": 2, "containers": [{"name": "x"}]}}
    assert not holds({"spec": {"replicas": 3, "containers": [{"name": "x"}]}}, wanted)
    assert not holds({"spec": {"containers": [{"name": "x"}]}}, wanted)
    assert not holds({"spec": {"replicas": 2, "containers": [{"name": "x"}, {"name": "y"}]}}, wanted)
    assert not holds({"spec": {"replicas": 2, "containers": "x"}}, wanted)
