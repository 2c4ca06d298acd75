"""The Model controller: one level-triggered ``reconcile`` that the kopf handlers run on every create, spec
change and resume, and on a timer.

What it knows it reads again each time, from the API server (the Model, its Jobs and InferenceService)
and the registry (its versions): nothing lives only in the operator's memory, so an operator killed at
any moment carries on where it was when it starts again. Each step is safe to repeat: children have
derived names, a create that finds its object keeps it, and status is rewritten only where it changed.

The loop: a spec the model spec refuses gets a condition naming the field (and no retry: only a new spec
can fix it). A spec whose hash has no run yet starts a training Job; the run's version is found in the
registry (a version of the model registered since the run started). The first version has nothing to be
compared with: it is promoted and served. The production version is served through the Model's
InferenceService, and its readiness is the Model's.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from modelyard.operator import children
from modelyard.operator.conditions import (
    PUBLISHED,
    READY,
    ROLLOUT,
    SERVING,
    TRAINED,
    Conditions,
)
from modelyard.operator.crd import MAX_VERSIONS
from modelyard.operator.kube import CONFIG_MAP, CRON_JOB, INFERENCE_SERVICE, JOB, MODEL, Cluster
from modelyard.operator.resource import (
    GROUP,
    PLURAL,
    VERSION,
    Policies,
    ResourceSpecError,
    Runner,
    parse_resource_spec,
)
from modelyard.registry import Registry, Stage
from modelyard.registry.records import ModelVersionRecord
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Controller:
    settings: Settings
    cluster: Cluster
    registry: Registry
    # kopf runs a Model's timer beside its change handlers: one reconcile of a Model at a time, and an
    # event said once, though the second reconcile still reads the status the first is about to change.
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _said: dict[tuple[str, str], str] = field(default_factory=dict)

    def _say(self, body: kopf.Body, reason: str, message: str, *, warning: bool = False) -> None:
        key = (body["metadata"]["uid"], reason)
        if self._said.get(key) == message:
            return
        self._said[key] = message
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)

    # ------------------------------------------------------------------ the loop

    def reconcile(self, body: kopf.Body, patch: kopf.Patch) -> None:
        lock = self._locks.setdefault(body["metadata"]["uid"], threading.Lock())
        with lock:
            self._reconcile(body, patch)

    def _reconcile(self, body: kopf.Body, patch: kopf.Patch) -> None:
        meta = body["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation", 1))
        status: dict[str, Any] = dict(body.get("status") or {})
        conditions = Conditions(status.get("conditions"), generation)
        new: dict[str, Any] = {"observedGeneration": generation}
        try:
            spec, policies = parse_resource_spec(name, dict(body["spec"]))
        except ResourceSpecError as exc:
            if conditions.set(READY, False, "InvalidSpec", exc.message):
                self._say(body, "InvalidSpec", exc.message, warning=True)
            new.update(phase="Invalid", conditions=conditions.as_list())
            self._write(status, new, patch)
            return
        owner = children.owner_reference(body)
        if self._runner(policies) is Runner.KFP:
            message = "training through KFP (runner kfp, or auto with a KFP host set) is not built yet"
            if conditions.set(TRAINED, False, "RunnerNotBuilt", message):
                self._say(body, "RunnerNotBuilt", message, warning=True)
            new.update(phase="Failed", conditions=conditions.as_list())
            self._write(status, new, patch)
            return
        self._ensure_inputs(name, namespace, spec, policies, owner)
        run = self._current_run(body, status, spec, policies, owner)
        new["latestRun"] = run
        version = self._observe_run(body, run, conditions)
        serving = self._serve(body, name, namespace, version, policies, owner, conditions)
        new.update(self._versions(name, spec))
        new.update(serving)
        new["conditions"] = conditions.as_list()
        new["phase"] = _phase(conditions)
        self._write(status, new, patch)

    def refresh(self, namespace: str, name: str) -> None:
        """Reconcile the Model ``name`` now, outside its own handlers: a child it owns changed (KServe
        reports its InferenceService Ready), and its status should say so before the next interval."""
        raw = self.cluster.get(MODEL, name, namespace)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            return
        patch = kopf.Patch()
        self.reconcile(kopf.Body(cast(kopf.RawBody, raw)), patch)
        status = dict(patch.get("status") or {})
        if status:
            self.cluster.patch_status(MODEL, name, namespace, status)

    def cleanup(self, body: kopf.Body) -> None:
        """Before the Model goes: remove what serves and schedules it; the registry keeps its history."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        removed = [
            f"{kind.kind}/{object_name}"
            for kind, object_name in (
                (INFERENCE_SERVICE, name),
                (CRON_JOB, children.schedule_name(name)),
            )
            if self.cluster.delete(kind, object_name, namespace)
        ]
        uid = meta["uid"]
        self._locks.pop(uid, None)
        for key in [key for key in self._said if key[0] == uid]:
            del self._said[key]
        if removed:
            self._say(body, "CleanedUp", f"deleted {', '.join(removed)}")

    # ------------------------------------------------------------------ the steps

    def _runner(self, policies: Policies) -> Runner:
        runner = policies.training.runner
        if runner is Runner.AUTO:
            return Runner.KFP if self.settings.pipeline.host else Runner.JOB
        return runner

    def _ensure_inputs(
        self, name: str, namespace: str, spec: ModelSpec, policies: Policies, owner: dict[str, Any]
    ) -> None:
        config_map = _owned(children.spec_config_map(name, spec), owner)
        self.cluster.ensure(CONFIG_MAP, namespace, config_map)
        schedule = policies.training.schedule
        if schedule:
            cron = _owned(children.training_cron_job(name, schedule, self.settings, policies), owner)
            self.cluster.ensure(CRON_JOB, namespace, cron)
        else:
            self.cluster.delete(CRON_JOB, children.schedule_name(name), namespace)

    def _current_run(
        self,
        body: kopf.Body,
        status: dict[str, Any],
        spec: ModelSpec,
        policies: Policies,
        owner: dict[str, Any],
    ) -> dict[str, Any]:
        """The run that trains the current spec: the newest Job of this Model, or a new one when the spec
        changed since the last run."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        hash_ = children.spec_hash(spec)
        jobs = self.cluster.list(JOB, namespace, {children.MODEL_LABEL: name})
        jobs.sort(key=lambda job: job["metadata"]["creationTimestamp"])
        recorded = status.get("latestRun") or {}
        if recorded.get("specHash") != hash_ and not any(
            job["metadata"].get("annotations", {}).get(children.SPEC_HASH_ANNOTATION) == hash_ for job in jobs
        ):
            job = _owned(children.training_job(name, hash_, self.settings, policies), owner)
            if self.cluster.ensure(JOB, namespace, job, patch=False):
                message = f"Job {job['metadata']['name']} trains {name}"
                self._say(body, "TrainingStarted", message)
            created = self.cluster.get(JOB, job["metadata"]["name"], namespace)
            jobs.append(created or job)
        request = (meta.get("annotations") or {}).get(children.RETRAIN_ANNOTATION)
        if request and not any(
            job["metadata"].get("annotations", {}).get(children.RETRAIN_ANNOTATION) == request for job in jobs
        ):
            if not policies.training.retrain_on_alert:
                message = f"retraining requested ({request}), but spec.training.retrain_on_alert is false"
                self._say(body, "RetrainIgnored", message)
            else:
                job = _owned(
                    children.training_job(name, hash_, self.settings, policies, request=request), owner
                )
                if self.cluster.ensure(JOB, namespace, job, patch=False):
                    message = f"Job {job['metadata']['name']} retrains {name}: requested {request}"
                    self._say(body, "RetrainingStarted", message)
                created = self.cluster.get(JOB, job["metadata"]["name"], namespace)
                jobs.append(created or job)
        newest = jobs[-1]
        job_meta = newest["metadata"]
        return {
            "kind": "Job",
            "name": job_meta["name"],
            "generation": int(meta.get("generation", 1)),
            "trigger": job_meta.get("labels", {}).get(children.TRIGGER_LABEL, "spec"),
            "specHash": job_meta.get("annotations", {}).get(children.SPEC_HASH_ANNOTATION, hash_),
            "startedAt": job_meta.get("creationTimestamp") or _now(),
        }

    def _observe_run(
        self, body: kopf.Body, run: dict[str, Any], conditions: Conditions
    ) -> ModelVersionRecord | None:
        """The version the run published, if any; Trained and Published say how the run stands."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        published = self._published_since(name, _parse_time(run["startedAt"]))
        job = self.cluster.get(JOB, run["name"], namespace) or {}
        job_conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []}
        failed = job_conditions.get("Failed", {}).get("status") == "True"
        if published is not None:
            message = f"Job {run['name']} published {published.ref} ({published.stage.value})"
            if conditions.set(TRAINED, True, "Trained", message):
                self._say(body, "Trained", message)
            conditions.set(PUBLISHED, True, "Published", f"{published.ref} at {published.storage_uri}")
        elif failed:
            why = job_conditions["Failed"].get("message") or job_conditions["Failed"].get("reason", "")
            message = f"Job {run['name']} failed: {why}; the gate may have refused the model (see its log)"
            if conditions.set(TRAINED, False, "TrainingFailed", message):
                self._say(body, "TrainingFailed", message, warning=True)
        elif job_conditions.get("Complete", {}).get("status") == "True":
            message = f"Job {run['name']} finished; its version is not registered yet"
            conditions.set(TRAINED, None, "AwaitingVersion", message)
        else:
            conditions.set(TRAINED, None, "Training", f"Job {run['name']} is running")
        return published

    def _published_since(self, name: str, since: datetime) -> ModelVersionRecord | None:
        for record in self.registry.list_versions(name):  # newest first
            if record.created_at >= since:
                return record
        return None

    def _serve(
        self,
        body: kopf.Body,
        name: str,
        namespace: str,
        published: ModelVersionRecord | None,
        policies: Policies,
        owner: dict[str, Any],
        conditions: Conditions,
    ) -> dict[str, Any]:
        production = self._production(name)
        if production is None and published is not None:
            production = self.registry.promote(name, published.version)
            message = f"{production.ref} is the first version: promoted with nothing to compare it with"
            self._say(body, "Promoted", message)
        if production is None:
            conditions.set(SERVING, False, "NothingPublished", f"no version of {name} is published yet")
            conditions.set(READY, False, "NothingPublished", f"no version of {name} is published yet")
            return {"servingVersion": None, "url": None}
        if published is not None and published.version > production.version:
            conditions.set(
                ROLLOUT,
                None,
                "CandidateWaiting",
                f"{published.ref} passed the gate; {production.ref} keeps serving until the candidate's "
                "analysed rollout promotes it",
            )
        else:
            conditions.set(ROLLOUT, False, "NoCandidate", f"{production.ref} is the newest version")
        manifest = children.inference_service(
            name, production.version, production.storage_uri, self.settings, policies
        )
        service = _owned(manifest, owner)
        if self.cluster.ensure(INFERENCE_SERVICE, namespace, service):
            self._say(body, "Serving", f"InferenceService {name} created for {production.ref}")
        found = self.cluster.get(INFERENCE_SERVICE, name, namespace) or {}
        ready, why = _inference_service_ready(found, production.storage_uri)
        serving_message = f"InferenceService {name} serves {production.ref}" if ready else why
        conditions.set(SERVING, ready, "Serving" if ready else "NotReady", serving_message)
        if conditions.set(READY, ready, "Ready" if ready else "NotReady", serving_message) and ready:
            self._say(body, "Ready", serving_message)
        url = (found.get("status") or {}).get("url")
        return {"servingVersion": production.version, "url": url, "inferenceService": name}

    def _production(self, name: str) -> ModelVersionRecord | None:
        for record in self.registry.list_versions(name):
            if record.stage is Stage.PRODUCTION:
                return record
        return None

    def _versions(self, name: str, spec: ModelSpec) -> dict[str, Any]:
        records = self.registry.list_versions(name)[:MAX_VERSIONS]
        return {
            "versions": [
                {
                    "version": record.version,
                    "stage": record.stage.value,
                    "storageUri": record.storage_uri,
                    "score": record.metrics.get(spec.metric.value),
                    "createdAt": record.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for record in records
            ]
        }

    @staticmethod
    def _write(status: dict[str, Any], new: dict[str, Any], patch: kopf.Patch) -> None:
        for key, value in new.items():
            if status.get(key) != value:
                patch.status[key] = value


def _owned(manifest: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"]["ownerReferences"] = [owner]
    return manifest


def _inference_service_ready(service: dict[str, Any], storage_uri: str) -> tuple[bool, str]:
    model = (service.get("spec") or {}).get("predictor", {}).get("model", {})
    if model.get("storageUri") != storage_uri:
        return False, "the InferenceService does not point at the production version yet"
    # No generation check: in Standard mode KServe's status.observedGeneration is its Deployment's.
    status = service.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return True, ""
            return False, condition.get("message") or condition.get("reason") or "the predictor is not ready"
    return False, "KServe has not reported on the InferenceService yet"


def _phase(conditions: Conditions) -> str:
    if conditions.is_true(READY):
        return "RollingOut" if conditions.is_true(ROLLOUT) else "Ready"
    trained = conditions.get(TRAINED)
    if trained is not None and trained["status"] == "False":
        return "Failed"
    serving = conditions.get(SERVING)
    return "Serving" if serving is not None and serving["reason"] == "NotReady" else "Training"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------------- kopf wiring


def build_registry(controller: Controller, *, clusterwide: bool) -> kopf.OperatorRegistry:
    """kopf's handlers for Models, bound to ``controller``; nothing is registered globally."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and the last-handled spec live in annotations of our own group, so status holds only
        # what the CRD's schema declares.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.persistence.finalizer = f"{GROUP}/cleanup"
        settings.posting.level = logging.INFO
        settings.posting.reporting_component = "modelyard-operator"
        # Watching named namespaces needs no cluster-wide reads: the CRD is there before the operator (the
        # chart installs crds/ first), so kopf need not list CRDs and namespaces to discover it.
        settings.scanning.disabled = not clusterwide

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # the kubernetes client's own kubeconfig and in-cluster logic, as `modelyard deploy` uses it
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def on_spec(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        controller.reconcile(body, patch)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=controller.settings.operator.interval_s, registry=registry)
    def observe(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        controller.reconcile(body, patch)

    @kopf.on.event(
        "serving.kserve.io",
        "v1beta1",
        "inferenceservices",
        labels={children.MODEL_LABEL: kopf.PRESENT, **children.MANAGED_BY},
        registry=registry,
    )
    def on_inference_service(type: str, labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
        if type in ("ADDED", "MODIFIED") and namespace:
            controller.refresh(namespace, labels[children.MODEL_LABEL])

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def on_delete(body: kopf.Body, **_: Any) -> None:
        controller.cleanup(body)

    return registry
