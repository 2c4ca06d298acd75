"""The Model controller: one level-triggered ``reconcile`` that the kopf handlers run on every create, spec
change and resume, on a timer, and when KServe reports on an InferenceService the Model owns.

What it knows it reads again each time, from the API server (the Model, its Jobs and InferenceService)
and the registry (its versions): nothing lives only in the operator's memory, so an operator killed at
any moment carries on where it was when it starts again. Each step is safe to repeat: children have
derived names and are applied, and status is replaced only from the resourceVersion it was computed
from (a conflict computes it again from a fresh read).

The loop: a spec the model spec refuses gets a condition naming the field (and no retry: only a new spec
can fix it). A spec whose hash has no run yet starts a training Job; the run's version is the one the
registry records under the Job's name as its run id. The first version has nothing to be compared with:
it is promoted and served. A later version that passed the gate is rolled out through the
InferenceService: shadow (the predictor scores it beside the stable one), then each canary step (it
answers that percent of requests; in Knative mode Knative splits them between the candidate's revision
and the stable one, see ``desired_inference_service``), then full (promoted in the registry, and the
storageUri). Each step takes ``analyses_per_step`` passing analyses, one every ``interval_seconds``;
``failure_limit`` failed ones roll it back, the registry untouched. A rollout without evidence ends too:
a candidate no predictor serves by the step's deadline, ``inconclusive_limit`` analyses in a row without
a verdict, or a step past its deadline roll it back. A newer version supersedes it; a new model spec
pauses it until that spec's run publishes, and ends it (SpecChanged) if that run fails; an
InferenceService the operator cannot write (KServe keeps its deployment mode) pauses it until it can. The
rollout's state, and the plan it started with, are in ``status.rollout``.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import kopf
from pydantic import ValidationError

from modelyard.errors import ModelyardError
from modelyard.operator import children, kfp_runs, requests
from modelyard.operator.analysis import FAIL, PASS, Analysis, Prometheus, PrometheusError, Verdict
from modelyard.operator.conditions import (
    PUBLISHED,
    READY,
    ROLLOUT,
    SERVING,
    TRAINED,
    Conditions,
)
from modelyard.operator.crd import MAX_VERSIONS, ModelStatus
from modelyard.operator.kube import (
    CONFIG_MAP,
    CRON_JOB,
    INFERENCE_SERVICE,
    JOB,
    MODEL,
    Cluster,
    KindMissing,
    NotOurs,
    job_finished,
    owned_by,
)
from modelyard.operator.resource import (
    GROUP,
    PLURAL,
    VERSION,
    DeploymentMode,
    Policies,
    ResourceSpecError,
    RolloutPolicy,
    parse_resource_spec,
)
from modelyard.registry import Registry, Stage
from modelyard.registry.records import ModelVersionRecord
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

log = logging.getLogger(__name__)

STATUS_ATTEMPTS = 5  # status writes that lost a race to another writer, before kopf retries the handler
# how often kopf checks whether a deleted Model's timer has returned (each check patches an annotation)
TIMER_EXIT_POLL_S = 1.0
# A cleanup the API server refused (say, an admission policy or an outage) is tried again after this long,
# twice as long each time up to CLEANUP_RETRY_MAX_S, not after kopf's flat minute: the Model, and a
# `kubectl delete` waiting on it, are held meanwhile.
CLEANUP_RETRY_S = 5.0
CLEANUP_RETRY_MAX_S = 60.0
PROGRESSING, PROMOTED, ROLLED_BACK = "Progressing", "Promoted", "RolledBack"
# why a rollout without a verdict ended (each also the Warning Event's reason)
NO_EVIDENCE, ANALYSIS_UNAVAILABLE, CANDIDATE_NOT_SERVED = (
    "NoEvidence",
    "AnalysisUnavailable",
    "CandidateNotServed",
)
# a paused rollout whose new spec's run failed ends: its older version is not served
SPEC_CHANGED = "SpecChanged"
# what the last look at a candidate found, short of a verdict (status.rollout.evidence)
NOT_SERVED, UNAVAILABLE, INCONCLUSIVE_EVIDENCE = "NotServed", "Unavailable", "Inconclusive"
SHADOW, CANARY, FULL = "shadow", "canary", "full"
# a schedule's request Job failed: its pod could not ask for a run
SCHEDULE_REQUEST_FAILED = "ScheduleRequestFailed"
# KServe keeps an InferenceService's deployment mode: one in another is not written, and a rollout waits
DEPLOYMENT_MODE_FIXED = "DeploymentModeFixed"


@dataclass
class Controller:
    settings: Settings
    cluster: Cluster
    registry: Registry
    # kopf runs a Model's timer beside its change handlers: one reconcile of a Model at a time, and an
    # event said once.
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _said: dict[tuple[str, str], str] = field(default_factory=dict)

    def _say(self, body: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        key = (body["metadata"]["uid"], reason)
        if self._said.get(key) == message:
            return
        self._said[key] = message
        (kopf.warn if warning else kopf.info)(
            kopf.Body(cast(kopf.RawBody, body)), reason=reason, message=message
        )

    # ------------------------------------------------------------------ the loop

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring the Model ``namespace/name`` and its children to its spec, and write its status: from a
        fresh read each attempt, so a write that raced another is computed again, not lost."""
        lock = self._locks.setdefault(f"{namespace}/{name}", threading.Lock())
        for _ in range(STATUS_ATTEMPTS):
            with lock:
                raw = self.cluster.get(MODEL, name, namespace)
                if raw is None or raw["metadata"].get("deletionTimestamp"):
                    return
                status = self._status(raw)
                if status == (raw.get("status") or {}) or self.cluster.replace_status(MODEL, raw, status):
                    log.debug("reconciled Model %s/%s", namespace, name)  # tests count these
                    return
        raise kopf.TemporaryError(f"Model {namespace}/{name}: status changed under every write", delay=1)

    def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Model's new status; every field the CRD's schema declares (ModelStatus checks it)."""
        meta = body["metadata"]
        name, generation = meta["name"], int(meta.get("generation", 1))
        old = readable_status(dict(body.get("status") or {}), f"Model {meta.get('namespace')}/{name}")
        conditions = Conditions(old.get("conditions"), generation)
        new: dict[str, Any] = {**old, "observedGeneration": generation}
        try:
            spec, policies = parse_resource_spec(name, dict(body["spec"]))
        except ResourceSpecError as exc:
            if conditions.set(READY, False, "InvalidSpec", exc.message):
                self._say(body, "InvalidSpec", exc.message, warning=True)
            new.update(phase="Invalid", conditions=conditions.as_list())
            return _checked(new)
        try:
            self._ensure_inputs(body, spec, policies)
            if policies.training.schedule:
                new.update(self._schedule_request_failure(body, old))
            if kfp_runs.uses_kfp(policies.training.runner, self.settings):
                kfp = kfp_runs.KfpRuns(self.settings)
                run = kfp.current_run(body, old.get("latestRun"), spec, policies, conditions, self._say)
                hash_ = children.spec_hash(spec)
                published = kfp.observe(body, run, hash_, conditions, self._published_by, self._say)
            else:
                run = self._current_run(body, old, spec, policies)
                published = self._observe_run(body, run, conditions)
            new["latestRun"] = run
            # no run at all (KFP unreachable before its first run): no spec to pause a rollout for
            new.update(
                self._serve(body, old, published, run or {}, children.spec_hash(spec), policies, conditions)
            )
        except (NotOurs, KindMissing) as exc:
            reason = "NameTaken" if isinstance(exc, NotOurs) else "KindMissing"
            if conditions.set(READY, False, reason, exc.message):
                self._say(body, reason, exc.message, warning=True)
            new.update(phase="Failed", conditions=conditions.as_list())
            return _checked(new)
        new.update(self._versions(name, spec))
        new["conditions"] = conditions.as_list()
        new["phase"] = _phase(conditions)
        return _checked(new)

    def cleanup(self, body: kopf.Body, retry: int = 0) -> None:
        """Before the Model goes: remove what serves and schedules it (what it owns, nothing of the same
        name that is not); the registry keeps its history. ``retry`` counts the attempts that failed."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        removed, refused = [], []
        for kind, object_name in ((INFERENCE_SERVICE, name), (CRON_JOB, children.schedule_name(name))):
            try:  # each child, whether or not the other could be removed
                if self.cluster.delete(kind, object_name, namespace, uid):
                    removed.append(f"{kind.kind}/{object_name}")
            except ModelyardError as exc:
                refused.append(str(exc))
        if removed:
            kopf.info(body, reason="CleanedUp", message=f"deleted {', '.join(removed)}")
        if refused:  # the finalizer stays
            delay = min(CLEANUP_RETRY_S * 2**retry, CLEANUP_RETRY_MAX_S)
            message = (
                f"{'; '.join(refused)}; the Model stays until that succeeds (tried again in {delay:g} s)"
            )
            self._say(dict(body), "CleanupFailed", message, warning=True)
            raise kopf.TemporaryError(message, delay=delay)
        # the name is still taken: no Model of the same name can be holding this lock yet
        self._locks.pop(f"{namespace}/{name}", None)
        self.forget_said(namespace, name, uid)

    def forget_said(self, namespace: str, name: str, uid: str) -> None:
        """Drop the Events said of a Model that is gone: after its cleanup, or when it went without one
        (its finalizer removed by hand). Keyed by uid, so a new Model of the same name keeps its own."""
        said = [key for key in list(self._said) if key[0] == uid]  # handlers on other threads add keys
        for key in said:
            self._said.pop(key, None)
        log.debug("forgot Model %s/%s (%d event(s) it said)", namespace, name, len(said))  # tests read it

    # ------------------------------------------------------------------ training

    def _ensure_inputs(self, body: dict[str, Any], spec: ModelSpec, policies: Policies) -> None:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        owner = children.owner_reference(body)
        self.cluster.ensure(CONFIG_MAP, namespace, _owned(children.spec_config_map(name, spec), owner), uid)
        schedule = policies.training.schedule
        if schedule:
            manifest = children.schedule_cron_job(name, namespace, schedule, self.settings)
            self.cluster.ensure(CRON_JOB, namespace, _owned(manifest, owner), uid)
        else:
            self.cluster.delete(CRON_JOB, children.schedule_name(name), namespace, uid)

    def _schedule_request_failure(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """A Warning Event for the newest failed request Job of the Model's schedule (its pod could not
        ask: refused, its image missing, no API server), once: the Job reported is kept in
        ``status.scheduleRequestFailed``, so a restarted operator does not say it again."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        cron = children.schedule_name(name)
        failed = [
            job
            for job in self.cluster.list(
                JOB, namespace, {children.SCHEDULE_LABEL: name, **children.MANAGED_BY}
            )
            if any(
                owner.get("kind") == CRON_JOB.kind and owner.get("name") == cron
                for owner in job["metadata"].get("ownerReferences") or []
            )
            and _failure(job) is not None
        ]
        if not failed:
            return {}
        newest = max(failed, key=lambda job: job["metadata"]["creationTimestamp"])
        job_name = newest["metadata"]["name"]
        if status.get("scheduleRequestFailed") == job_name:
            return {}
        message = schedule_request_failed(newest)
        self._say(body, SCHEDULE_REQUEST_FAILED, message, warning=True)
        return {"scheduleRequestFailed": job_name}

    def _jobs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The Model's runs, oldest first: the Jobs it owns, and the training Jobs its schedule's CronJob
        started before schedules asked the operator for runs (an upgrade may find one running; its version
        is still the run's). The CronJob's request Jobs are not runs: they lack MODEL_LABEL."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        owners = {uid}
        cron = self.cluster.get(CRON_JOB, children.schedule_name(name), namespace)
        if cron is not None and owned_by(cron, uid):
            owners.add(cron["metadata"]["uid"])
        jobs = [
            job
            for job in self.cluster.list(JOB, namespace, {children.MODEL_LABEL: name})
            if any(owned_by(job, owner) for owner in owners)
        ]
        return sorted(jobs, key=lambda job: job["metadata"]["creationTimestamp"])

    def _current_run(
        self, body: dict[str, Any], status: dict[str, Any], spec: ModelSpec, policies: Policies
    ) -> dict[str, Any]:
        """The run that trains the current spec: the newest Job of this Model for the spec's hash (after a
        revert A to B to A, A's Job, not B's), or a new one when no Job has that hash. A run whose Job is
        gone (its TTL, or by hand) stays the run."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        owner = children.owner_reference(body)
        hash_ = children.spec_hash(spec)
        jobs = self._jobs(body)
        recorded = status.get("latestRun") or {}

        def start(job: dict[str, Any], reason: str, message: str) -> None:
            if self.cluster.ensure(JOB, namespace, _owned(job, owner), uid, update=False):
                self._say(body, reason, message)
            jobs.append(self.cluster.get(JOB, job["metadata"]["name"], namespace) or job)

        if recorded.get("specHash") != hash_ and not any(
            _annotation(job, children.SPEC_HASH_ANNOTATION) == hash_ for job in jobs
        ):
            job = children.training_job(name, hash_, self.settings, policies)
            start(job, "TrainingStarted", f"Job {job['metadata']['name']} trains {name}")
        # a request is answered by the Job that carries it, or in status.latestRun (a skipped one: no Job)
        answered = requests.answered_requests(recorded)
        for trigger, annotation in children.REQUEST_ANNOTATIONS.items():
            request = requests.request_to_answer(
                recorded, (meta.get("annotations") or {}).get(annotation), trigger
            )
            if not request:
                continue
            if any(_annotation(job, annotation) == request for job in jobs):
                answered[trigger] = request
                continue
            refused = requests.refusal(
                trigger, request, policies.training.retrain_on_alert, partial(job_in_flight, jobs)
            )
            if refused is not None:
                self._say(body, refused.reason, refused.message)
                if refused.answered:
                    answered[trigger] = request
                continue
            answered[trigger] = request
            job = children.training_job(
                name, hash_, self.settings, policies, request=request, trigger=trigger
            )
            message = f"Job {job['metadata']['name']} retrains {name}: {trigger} request {request}"
            start(job, children.STARTED_REASONS[trigger], message)
        current = current_job(jobs, hash_)
        if current is None:
            return requests.answering(dict(recorded), answered)
        job_meta = current["metadata"]
        run = {
            "kind": "Job",
            "name": job_meta["name"],
            "generation": int(meta.get("generation", 1)),
            "trigger": job_meta.get("labels", {}).get(children.TRIGGER_LABEL, children.SPEC),
            "specHash": _annotation(current, children.SPEC_HASH_ANNOTATION) or hash_,
            "startedAt": job_meta.get("creationTimestamp") or _now(),
        }
        own_request = children.REQUEST_ANNOTATIONS.get(run["trigger"])
        if own_request and _annotation(current, own_request):
            run["request"] = _annotation(current, own_request)
        return requests.answering(run, answered)

    def _observe_run(
        self, body: dict[str, Any], run: dict[str, Any], conditions: Conditions
    ) -> ModelVersionRecord | None:
        """The version the run published, if any; Trained and Published say how the run stands."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        published = self._published_by(name, run["name"])
        job = self.cluster.get(JOB, run["name"], namespace)
        job_conditions = {c["type"]: c for c in ((job or {}).get("status") or {}).get("conditions") or []}
        if published is not None:
            message = f"Job {run['name']} published {published.ref} ({published.stage.value})"
            if conditions.set(TRAINED, True, "Trained", message):
                self._say(body, "Trained", message)
            conditions.set(PUBLISHED, True, "Published", f"{published.ref} at {published.storage_uri}")
        elif job is None:
            message = (
                f"Job {run['name']} is gone and published no version; change the spec, or ask for a run "
                f"(modelyard request-run {name} --namespace {namespace})"
            )
            if conditions.set(TRAINED, False, "RunGone", message):
                self._say(body, "RunGone", message, warning=True)
        elif job_conditions.get("Failed", {}).get("status") == "True":
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

    def _published_by(self, name: str, run_id: str) -> ModelVersionRecord | None:
        for record in self.registry.list_versions(name):  # newest first
            if record.run_id == run_id:
                return record
        return None

    # ------------------------------------------------------------------ serving and rollout

    def _serve(
        self,
        body: dict[str, Any],
        status: dict[str, Any],
        published: ModelVersionRecord | None,
        run: dict[str, Any],
        spec_hash: str,
        policies: Policies,
        conditions: Conditions,
    ) -> dict[str, Any]:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        production = self._production(name)
        if production is None and published is not None:
            production = self.registry.promote(name, published.version)
            message = f"{production.ref} is the first version: promoted with nothing to compare it with"
            self._say(body, "Promoted", message)
        if production is None:
            conditions.set(SERVING, False, "NothingPublished", f"no version of {name} is published yet")
            conditions.set(READY, False, "NothingPublished", f"no version of {name} is published yet")
            return {"servingVersion": None, "url": None}
        found = self.cluster.get(INFERENCE_SERVICE, name, namespace)
        # one another owns is the NotOurs that ensure raises
        mode_fixed = (
            deployment_mode_fixed(found, name, policies.serving.deployment_mode)
            if owned_by(found or {}, meta["uid"])
            else None
        )
        result: dict[str, Any] = {}
        rollout = self._rollout(
            body,
            status,
            production,
            published,
            run,
            spec_hash,
            policies,
            conditions,
            result,
            found,
            mode_fixed,
        )
        if rollout is not None and rollout["state"] == PROMOTED:
            # the registry is the truth: the rollout promoted there, and a later rollback (the CLI, the
            # console) must win over a rollout that ended long ago
            production = self._production(name) or production
        manifest = desired_inference_service(name, production, rollout, self.settings, policies, found)
        if mode_fixed is None and self.cluster.ensure(
            INFERENCE_SERVICE, namespace, _owned(manifest, children.owner_reference(body)), meta["uid"]
        ):
            self._say(body, "Serving", f"InferenceService {name} created for {production.ref}")
        if mode_fixed is None:
            found = self.cluster.get(INFERENCE_SERVICE, name, namespace) or {}
            ready, why = inference_service_ready(found, manifest)
        else:
            ready, why = False, mode_fixed
            self._say(body, DEPLOYMENT_MODE_FIXED, mode_fixed, warning=True)
        serving_message = f"InferenceService {name} serves {production.ref}" if ready else why
        conditions.set(SERVING, ready, "Serving" if ready else "NotReady", serving_message)
        if conditions.set(READY, ready, "Ready" if ready else "NotReady", serving_message) and ready:
            self._say(body, "Ready", serving_message)
        url = ((found or {}).get("status") or {}).get("url")  # KServe's: the Knative route's when Knative
        return {
            **result,
            "servingVersion": production.version,
            "url": url,
            "inferenceService": name,
            "rollout": rollout,
        }

    def _rollout(
        self,
        body: dict[str, Any],
        status: dict[str, Any],
        production: ModelVersionRecord,
        published: ModelVersionRecord | None,
        run: dict[str, Any],
        spec_hash: str,
        policies: Policies,
        conditions: Conditions,
        result: dict[str, Any],
        found: dict[str, Any] | None,
        mode_fixed: str | None,
    ) -> dict[str, Any] | None:
        """The rollout's state after this look (None: there is no candidate, nor was one); an analysis
        that is due is run, and its verdict recorded in ``result["lastAnalysis"]``. ``found`` is the
        InferenceService as this look found it; ``mode_fixed`` why it cannot be written (None: it can)."""
        name = body["metadata"]["name"]
        policy = policies.rollout
        rollout: dict[str, Any] | None = status.get("rollout")
        # a version of a run for another spec (the current spec's run could not start) is not rolled out
        newer = published is not None and published.version > production.version
        candidate = published if newer and run.get("specHash") == spec_hash else None
        if candidate is not None and (rollout is None or rollout["candidate"] != candidate.version):
            if not self.settings.operator.prometheus_url:
                conditions.set(
                    ROLLOUT,
                    None,
                    "CandidateWaiting",
                    f"{candidate.ref} passed the gate; {production.ref} keeps serving: no Prometheus to "
                    "analyse a rollout (MODELYARD_OPERATOR__PROMETHEUS_URL)",
                )
                return rollout
            superseded = rollout
            rollout = _start(candidate, production, policy, spec_hash)
            if superseded is not None and superseded["state"] == PROGRESSING:
                message = (
                    f"{name}@{superseded['candidate']} is superseded by {candidate.ref} at step "
                    f"{superseded['step'] + 1} of {len(_steps(superseded, policy))}, "
                    f"{_describe(superseded)}; its rollout ends unjudged"
                )
                self._say(body, "RolloutSuperseded", message, warning=True)
            self._say(body, "RolloutStarted", rollout["message"])
        if rollout is None:
            conditions.set(ROLLOUT, False, "NoCandidate", f"{production.ref} is the newest version")
            return None
        if rollout["state"] == PROGRESSING and production.version == rollout["candidate"]:
            rollout = {**rollout, "state": PROMOTED, "mode": FULL, "percent": 100}  # promoted by a write lost
        if rollout["state"] == PROGRESSING:
            rollout = self._pause(body, rollout, run, spec_hash, mode_fixed)
            if spec_run_failed(rollout, run, spec_hash, conditions.get(TRAINED)):
                trained = conditions.get(TRAINED) or {}
                message = (
                    f"the spec changed and its run {run.get('name')} failed ({trained.get('message')}): "
                    f"version {rollout['candidate']}, trained for the older spec, is not rolled out; "
                    f"{name}@{rollout['stable']} keeps serving"
                )
                rollout = self._roll_back(body, rollout, SPEC_CHANGED, message)
        if rollout["state"] == PROGRESSING and rollout["mode"] == FULL and not rollout.get("paused"):
            promoted = self.registry.promote(name, rollout["candidate"])
            message = f"the rollout policy has no steps: {promoted.ref} promoted without analysis"
            self._say(body, "Promoted", message)
            rollout = {**rollout, "state": PROMOTED, "percent": 100, "message": message}
        if rollout["state"] == PROGRESSING and not rollout.get("paused"):
            slack_s = 2 * self.settings.operator.interval_s  # how late the timer's look may normally be
            rollout = step_clock(rollout, policy, datetime.now(UTC), slack_s)
            if _due(rollout, policy):
                knative = policies.serving.deployment_mode is DeploymentMode.KNATIVE
                if knative and rollout["mode"] == CANARY and not canary_written(found, rollout):
                    rollout = awaiting_canary(rollout, _now())
                else:
                    rollout = self._analyse(body, rollout, policy, result)
            if rollout["state"] == PROGRESSING and _step_age(rollout) > policy.step_deadline_seconds:
                rollout = self._past_deadline(body, rollout, policy)
        ref = f"{name}@{rollout['candidate']}"
        if rollout["state"] == PROGRESSING:
            paused = DEPLOYMENT_MODE_FIXED if rollout.get("reason") == DEPLOYMENT_MODE_FIXED else "Paused"
            conditions.set(
                ROLLOUT, True, paused if rollout.get("paused") else "Progressing", rollout["message"]
            )
        elif rollout["state"] == PROMOTED:
            conditions.set(ROLLOUT, False, "Promoted", f"{ref} was promoted: {rollout['message']}")
        else:
            reason = rollout.get("reason") or ROLLED_BACK
            conditions.set(ROLLOUT, False, reason, f"{ref} was rolled back: {rollout['message']}")
        return rollout

    def _pause(
        self,
        body: dict[str, Any],
        rollout: dict[str, Any],
        run: dict[str, Any],
        spec_hash: str,
        mode_fixed: str | None,
    ) -> dict[str, Any]:
        """A rollout neither judged nor promoted while it could not be served as judged: a candidate of
        an older spec while the new spec's run trains (it would be promoted for a spec the Model no
        longer has; its own spec's run again resumes it), and any candidate while the InferenceService
        cannot be written (KServe keeps its deployment mode: the cluster would go on serving the step
        the pause found, whatever the registry says; the mode set back, or the InferenceService deleted,
        resumes it)."""
        name = body["metadata"]["name"]
        paused, reason = rollout_pause(rollout, spec_hash, mode_fixed)
        if (paused, reason) == (bool(rollout.get("paused")), rollout.get("reason")):
            return rollout
        ref = f"{name}@{rollout['candidate']}"
        if paused and reason == DEPLOYMENT_MODE_FIXED:
            message = (
                f"{_describe(rollout)}: paused, neither judged nor promoted, while the InferenceService "
                f"cannot be written: {mode_fixed}"
            )
            self._say(body, "RolloutPaused", f"{ref}: {message}", warning=True)
            return {**rollout, "paused": True, "reason": reason, "message": message}
        if paused:
            message = (
                f"{ref} was trained for an older spec: paused, the predictor told nothing of it, until run "
                f"{run.get('name')} publishes the new spec's version"
            )
            self._say(body, "RolloutPaused", message, warning=True)
            return {**rollout, "paused": True, "reason": None, "message": message}
        why = (
            "the InferenceService is written again"
            if rollout.get("reason") == DEPLOYMENT_MODE_FIXED
            else "the spec is its own again"
        )
        message = f"{_describe(rollout)}: resumed, {why}"
        self._say(body, "RolloutResumed", f"{ref}: {message}")
        return {**rollout, "paused": False, "reason": None, "stepStartedAt": _now(), "message": message}

    def _analyse(
        self, body: dict[str, Any], rollout: dict[str, Any], policy: RolloutPolicy, result: dict[str, Any]
    ) -> dict[str, Any]:
        """One look at the candidate: served yet, then its analysis; the rollout after the verdict."""
        name = body["metadata"]["name"]
        stable, candidate = rollout["stable"], rollout["candidate"]
        prometheus = Prometheus(self.settings.operator.prometheus_url)
        # a window of a few scrapes at least, or rate() and increase() see a single sample and give nothing
        window_s = max(float(policy.interval_seconds), 4 * self.settings.operator.scrape_interval_s)
        analysis = Analysis(prometheus, name, f"{math.ceil(window_s)}s")
        at = _now()
        rollout = {**rollout, "lastAnalysisAt": at}
        try:
            served = analysis.candidate_served(candidate)
            verdict = analysis.run(stable, candidate, policy.thresholds) if served else None
        except PrometheusError as exc:
            self._say(body, "AnalysisError", exc.message, warning=True)
            return self._inconclusive(body, rollout, policy, UNAVAILABLE, f"no analysis: {exc.message}")
        if verdict is None:
            message = (
                f"{_describe(rollout)}: waiting for the predictor to serve version {candidate} "
                f"(modelyard_model_ready); no analysis until it does"
            )
            return {**rollout, "evidence": NOT_SERVED, "message": message}
        result["lastAnalysis"] = _analysis_status(verdict, at, stable, candidate)
        if verdict.verdict not in (PASS, FAIL):
            message = f"{_describe(rollout)}: analysis inconclusive ({verdict.summary()})"
            return self._inconclusive(body, rollout, policy, INCONCLUSIVE_EVIDENCE, message)
        rollout = {**rollout, "inconclusive": 0}
        steps = _steps(rollout, policy)
        ref = f"{name}@{candidate}"
        if verdict.verdict == FAIL:
            failures = rollout["failures"] + 1
            failed = [check.name for check in verdict.failed]
            summary = verdict.summary()
            rollout = {**rollout, "evidence": "Fail", "failures": failures, "failedChecks": failed}
            if failures >= policy.failure_limit:
                message = f"{', '.join(failed)} failed: {summary}; {name}@{stable} keeps serving"
                return self._roll_back(body, rollout, ROLLED_BACK, message)
            self._say(body, "AnalysisFailed", f"{ref}: {summary}", warning=True)
            return {**rollout, "message": summary}
        passes = rollout["passes"] + 1
        rollout = {**rollout, "evidence": "Pass"}
        if passes < policy.analyses_per_step:
            rollout = {**rollout, "passes": passes}
            return {
                **rollout,
                "message": f"{_describe(rollout)}: {passes} of {policy.analyses_per_step} passed",
            }
        step = rollout["step"] + 1
        if step < len(steps):
            mode, percent = steps[step]
            rollout = {
                **rollout,
                "step": step,
                "mode": mode,
                "percent": percent,
                "passes": 0,
                "stepStartedAt": at,
            }
            message = f"{_describe(rollout)}: the last step's analyses passed"
            self._say(body, "RolloutStep", f"{ref}: {message}")
            return {**rollout, "message": message}
        promoted = self.registry.promote(name, candidate)
        message = f"every step's analyses passed; {promoted.ref} is production"
        self._say(body, "Promoted", f"{ref}: {message}")
        return {
            **rollout,
            "state": PROMOTED,
            "mode": FULL,
            "percent": 100,
            "passes": passes,
            "reason": PROMOTED,
            "message": message,
        }

    def _inconclusive(
        self,
        body: dict[str, Any],
        rollout: dict[str, Any],
        policy: RolloutPolicy,
        evidence: str,
        message: str,
    ) -> dict[str, Any]:
        """An analysis without a verdict; ``inconclusive_limit`` of them in a row roll the candidate back."""
        count = int(rollout.get("inconclusive") or 0) + 1
        rollout = {**rollout, "inconclusive": count, "evidence": evidence, "message": message}
        if count < policy.inconclusive_limit:
            return rollout
        name = body["metadata"]["name"]
        reason = ANALYSIS_UNAVAILABLE if evidence == UNAVAILABLE else NO_EVIDENCE
        why = (
            f"{count} analyses in a row without a verdict (inconclusive_limit {policy.inconclusive_limit}), "
            f"the last: {message}; {name}@{rollout['stable']} keeps serving"
        )
        return self._roll_back(body, rollout, reason, why)

    def _past_deadline(
        self, body: dict[str, Any], rollout: dict[str, Any], policy: RolloutPolicy
    ) -> dict[str, Any]:
        """A step that has not passed its analyses within ``step_deadline_seconds``: rolled back, and the
        reason says whether the candidate was never served, Prometheus never answered, or data was short."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        deadline = policy.step_deadline_seconds
        evidence = rollout.get("evidence")
        stable = f"{name}@{rollout['stable']} keeps serving"
        if evidence == NOT_SERVED:
            service = self.cluster.get(INFERENCE_SERVICE, name, namespace) or {}
            ready, why = inference_service_ready(service, service)
            said = "the InferenceService is ready" if ready else f"the InferenceService says: {why}"
            message = (
                f"the predictor did not serve version {rollout['candidate']} within {deadline} s of the step "
                f'(modelyard_model_ready{{model="{name}",version="{rollout["candidate"]}"}} is not 1; '
                f"{said}); {stable}"
            )
            return self._roll_back(body, rollout, CANDIDATE_NOT_SERVED, message)
        reason = ANALYSIS_UNAVAILABLE if evidence == UNAVAILABLE else NO_EVIDENCE
        message = (
            f"{_describe(rollout)} did not pass {policy.analyses_per_step} analyses within its {deadline} s "
            f"deadline ({rollout['passes']} passed; the last look: {rollout['message']}); {stable}"
        )
        return self._roll_back(body, rollout, reason, message)

    def _roll_back(
        self, body: dict[str, Any], rollout: dict[str, Any], reason: str, message: str
    ) -> dict[str, Any]:
        ref = f"{body['metadata']['name']}@{rollout['candidate']}"
        self._say(body, reason, f"{ref}: {message}", warning=True)
        return {**rollout, "state": ROLLED_BACK, "reason": reason, "message": message}

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


def _plan(policy: RolloutPolicy) -> list[tuple[str, int]]:
    """The rollout's steps: shadow (the candidate answers none), then each canary percent."""
    return ([(SHADOW, 0)] if policy.shadow else []) + [(CANARY, percent) for percent in policy.canary_steps]


def _start(
    candidate: ModelVersionRecord, stable: ModelVersionRecord, policy: RolloutPolicy, spec_hash: str | None
) -> dict[str, Any]:
    plan = _plan(policy)
    mode, percent = plan[0] if plan else (FULL, 100)
    now = _now()
    rollout = {
        "candidate": candidate.version,
        "stable": stable.version,
        "candidateUri": candidate.storage_uri,
        "state": PROGRESSING,
        "step": 0,
        "mode": mode,
        "percent": percent,
        "passes": 0,
        "failures": 0,
        "startedAt": now,
        "lastAnalysisAt": None,
        "failedChecks": [],
        # the plan is the rollout's own: a policy edit mid-rollout neither skips nor repeats a step
        "steps": [{"mode": step_mode, "percent": step_percent} for step_mode, step_percent in plan],
        "stepStartedAt": now,
        "inconclusive": 0,
        "evidence": None,
        "specHash": spec_hash,
        "paused": False,
        "reason": None,
    }
    rollout["message"] = f"{candidate.ref} passed the gate: {_describe(rollout)} beside {stable.ref}"
    return rollout


def _steps(rollout: dict[str, Any], policy: RolloutPolicy) -> list[tuple[str, int]]:
    """The rollout's plan, as it started (a rollout an older operator started has none: the policy's)."""
    steps = rollout.get("steps")
    if steps is None:
        return _plan(policy)
    return [(step["mode"], int(step["percent"])) for step in steps]


def current_job(jobs: list[dict[str, Any]], spec_hash: str) -> dict[str, Any] | None:
    """The newest of ``jobs`` (oldest first) that trains the spec whose hash is ``spec_hash``: a spec
    change's or a retraining's. A Job without the annotation (a schedule's, from an operator whose
    CronJob template did not carry it) counts as the current spec's."""
    ours = [job for job in jobs if _annotation(job, children.SPEC_HASH_ANNOTATION) in (spec_hash, None)]
    return ours[-1] if ours else None


def job_in_flight(jobs: list[dict[str, Any]]) -> str | None:
    """The newest of ``jobs`` (oldest first) that has not finished, named; None when all have."""
    running = [job for job in jobs if not job_finished(job)]
    return f"Job {running[-1]['metadata']['name']}" if running else None


def rollout_pause(rollout: dict[str, Any], spec_hash: str, mode_fixed: str | None) -> tuple[bool, str | None]:
    """Whether ``rollout`` waits, and the reason it records while it does: None for a candidate trained
    for another spec than the current one (``spec_hash``), DeploymentModeFixed while the
    InferenceService cannot be written (``mode_fixed`` says why; None: it can). The spec comes first:
    its pause also tells the predictor nothing, once the InferenceService can be written again."""
    if paused_for_spec(rollout, spec_hash):
        return True, None
    if mode_fixed is not None:
        return True, DEPLOYMENT_MODE_FIXED
    return False, None


def paused_for_spec(rollout: dict[str, Any], spec_hash: str) -> bool:
    """Whether ``rollout`` waits because its candidate was trained for a spec other than the Model's
    current one (``spec_hash``): the current spec, not the latest run, decides."""
    started_for = rollout.get("specHash")
    return bool(started_for) and started_for != spec_hash


def spec_run_failed(
    rollout: dict[str, Any], run: dict[str, Any], spec_hash: str, trained: dict[str, Any] | None
) -> bool:
    """Whether ``rollout``, paused for a new spec, has nothing left to wait for: the current spec's run
    failed (Trained False for it). A run that could not start (KFP unreachable) is not the current spec's:
    the pause waits for it."""
    failed = trained is not None and trained["status"] == "False"
    paused_for_a_spec = bool(rollout.get("paused")) and rollout.get("reason") is None
    return paused_for_a_spec and run.get("specHash") == spec_hash and failed


def _describe(rollout: dict[str, Any]) -> str:
    if rollout["mode"] == SHADOW:
        return f"shadow (version {rollout['candidate']} scored on every request, answering none)"
    return f"canary (version {rollout['candidate']} answers {rollout['percent']}% of requests)"


def canary_written(found: dict[str, Any] | None, rollout: dict[str, Any]) -> bool:
    """Whether the Knative InferenceService ``found`` carries ``rollout``'s canary step: the candidate's
    spec at the step's percent. Until then (the plain stable spec written while its revision takes all
    traffic, or the canary held at 0) the candidate answers nothing of the step's share, and what
    Prometheus holds of it is the shadow step's, or nothing."""
    predictor = ((found or {}).get("spec") or {}).get("predictor") or {}
    model = predictor.get("model") or {}
    at = predictor.get("canaryTrafficPercent")
    return (
        model.get("storageUri") == rollout["candidateUri"]
        and at is not None
        and int(at) == rollout["percent"]
    )


def awaiting_canary(rollout: dict[str, Any], at: str) -> dict[str, Any]:
    """A look ``at`` a Knative canary step not written yet: no analysis, the candidate not served its
    share (the step's NotServed deadline bounds the wait); the look is recorded, so ``step_clock``
    counts the wait against the step's deadline."""
    message = (
        f"{_describe(rollout)}: the InferenceService does not split {rollout['percent']}% to it yet "
        "(Knative mode: the canary is written once the stable version's own revision takes every request, "
        "at 0% until the candidate's revision is ready); no analysis until it does"
    )
    return {**rollout, "lastAnalysisAt": at, "evidence": NOT_SERVED, "message": message}


def _due(rollout: dict[str, Any], policy: RolloutPolicy) -> bool:
    since = rollout.get("lastAnalysisAt") or rollout["startedAt"]
    return (datetime.now(UTC) - _parse_time(since)).total_seconds() >= policy.interval_seconds


def step_clock(
    rollout: dict[str, Any], policy: RolloutPolicy, now: datetime, slack_s: float
) -> dict[str, Any]:
    """``rollout`` with its step's clock counting only while an operator looks: started ``now`` for a
    rollout an older operator started (it has no stepStartedAt), and moved forward by the time no
    operator looked (a look later than ``interval_seconds`` + ``slack_s`` after the last), so a restart
    or an upgrade does not spend the step's deadline and turn a passing rollout into a rollback."""
    if not rollout.get("stepStartedAt"):
        return {**rollout, "stepStartedAt": _format_time(now)}
    last_look = _parse_time(rollout.get("lastAnalysisAt") or rollout["startedAt"])
    unobserved_s = (now - last_look).total_seconds() - policy.interval_seconds - slack_s
    if unobserved_s <= 0:
        return rollout
    started = min(now, _parse_time(rollout["stepStartedAt"]) + timedelta(seconds=unobserved_s))
    log.info("rollout of version %s: %.0f s unobserved, not counted", rollout["candidate"], unobserved_s)
    return {**rollout, "stepStartedAt": _format_time(started)}


def _step_age(rollout: dict[str, Any]) -> float:
    return (datetime.now(UTC) - _parse_time(rollout["stepStartedAt"])).total_seconds()


def desired_inference_service(
    name: str,
    production: ModelVersionRecord,
    rollout: dict[str, Any] | None,
    settings: Settings,
    policies: Policies,
    found: dict[str, Any] | None,
) -> dict[str, Any]:
    """The InferenceService for this look at the rollout; ``found`` is the one in the cluster.

    Standard mode: the production version, the predictor told of a candidate (it splits or mirrors the
    traffic itself). Knative mode: the shadow step is the same (Knative cannot mirror), and a canary
    step is the candidate's own spec with canaryTrafficPercent: Knative sends that share to the new
    revision and the rest to the last one that took all traffic (KServe's latestRolledoutRevision). The
    canary starts only from a plain stable revision that took all traffic (``_canary_may_start``); until
    then the plain stable spec is written, and the step's NotServed deadline bounds the wait."""
    knative = policies.serving.deployment_mode is DeploymentMode.KNATIVE
    in_progress = rollout is not None and rollout["state"] == PROGRESSING and not rollout.get("paused")
    env = _rollout_env(rollout)
    if knative and in_progress and rollout is not None and rollout["mode"] == CANARY:
        plain = children.inference_service(
            name, production.version, production.storage_uri, settings, policies
        )
        if _canary_may_start(found, plain):
            canary = children.inference_service(
                name,
                rollout["candidate"],
                rollout["candidateUri"],
                settings,
                policies,
                canary_percent=rollout["percent"],
            )
            if _candidate_held_back(found, canary):
                canary["spec"]["predictor"]["canaryTrafficPercent"] = 0
            _note_replaced_revision(canary, found)
            return canary
        env = []  # the stable revision the canary will split with serves alone, told of no rollout
    manifest = children.inference_service(
        name, production.version, production.storage_uri, settings, policies, env=env
    )
    if knative:
        if _candidate_held_back(found, manifest):
            manifest["spec"]["predictor"]["canaryTrafficPercent"] = 0
        _note_replaced_revision(manifest, found)
    return manifest


def _note_replaced_revision(manifest: dict[str, Any], found: dict[str, Any] | None) -> None:
    """Annotate a Knative ``manifest`` with the revision its template replaces, so that KServe's status
    is read as this template's only once it reports another latest revision
    (``_latest_revision_takes``). Right after a write, KServe still reports the Knative Service as it
    was: the revision before, ready and perhaps taking all traffic. A write that keeps the template
    keeps the annotation (KServe copies it into the template: changing it alone would make a revision)."""
    if found is None:
        return
    before = _annotation(found, children.REPLACED_REVISION_ANNOTATION)
    if _served_spec(found) != _served_spec(manifest):
        before = _predictor_status(found).get("latestCreatedRevision") or before
    if before:
        manifest["metadata"]["annotations"][children.REPLACED_REVISION_ANNOTATION] = before


def _canary_may_start(found: dict[str, Any] | None, plain: dict[str, Any]) -> bool:
    """Whether a Knative canary may be written over ``found``; ``plain`` is the stable spec told of no
    rollout.

    KServe splits canaryTrafficPercent only once a revision has rolled out (took all traffic); before
    that it gives the latest revision everything, the candidate included. And the revision the canary
    splits with must be the plain stable one: a shadow step's revision would mirror its share to the
    candidate too, and load both models. So a canary starts once ``plain``'s revision takes all traffic;
    one already written (canaryTrafficPercent set) goes on, unless ``found`` is a spec told of a rollout
    (a shadow step held at 0 after a superseded canary)."""
    if found is None:
        return False
    predictor = _predictor_status(found)
    if not predictor.get("latestRolledoutRevision"):
        return False
    if ((found.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent") is not None:
        return children.ROLLOUT_MODE_ENV not in dict(_served_spec(found)[1])
    return _served_spec(found) == _served_spec(plain) and _latest_revision_takes(found, 100)


def _candidate_held_back(found: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
    """Whether a Knative InferenceService leaving a canary, or moving it to a new spec (a newer
    candidate's canary), keeps canaryTrafficPercent at 0.

    Without canaryTrafficPercent Knative sends everything to the latest *ready* revision; while the
    revision of a new spec (the stable version's, after a rollback) starts, that is the candidate's. So
    the canary goes to 0 first, in the same write as the new spec: the previous rolled-out revision
    (stable) takes all traffic, the new revision none. The share is given back to the latest revision
    only once KServe reports that write done: Ready, the latest created revision ready, and Knative's
    route sending it 0%. A promotion (the candidate's spec unchanged, the canary at its percent) drops
    canaryTrafficPercent at once: the candidate is then the version to serve."""
    predictor = ((found or {}).get("spec") or {}).get("predictor") or {}
    percent = predictor.get("canaryTrafficPercent")
    if found is None or percent is None:
        return False
    if _served_spec(found) != _served_spec(manifest):
        return True
    return percent == 0 and not _latest_revision_takes(found, 0)


def _predictor_status(service: dict[str, Any]) -> dict[str, Any]:
    """What KServe reports of ``service``'s predictor (status.components.predictor; empty before it has)."""
    predictor: dict[str, Any] = ((service.get("status") or {}).get("components") or {}).get("predictor") or {}
    return predictor


def _served_spec(service: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """What a revision of ``service`` serves: its storageUri and the env the operator gives it."""
    model = ((service.get("spec") or {}).get("predictor") or {}).get("model") or {}
    env = [(item["name"], str(item.get("value"))) for item in model.get("env") or []]
    return str(model.get("storageUri")), sorted(env)


def _latest_revision_takes(service: dict[str, Any], percent: int) -> bool:
    """Whether KServe reports the Knative Service caught up with ``service``'s spec: PredictorReady (the
    Knative Service's Ready: its route and configuration have each observed their latest generation),
    the latest created revision ready and not the one ``service``'s template replaced, and the route
    sending ``percent`` of requests to it."""
    status = service.get("status") or {}
    ready = any(
        condition.get("type") == "PredictorReady" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )
    predictor = _predictor_status(service)
    latest = predictor.get("latestCreatedRevision")
    replaced = _annotation(service, children.REPLACED_REVISION_ANNOTATION)
    caught_up = bool(latest) and latest != replaced and predictor.get("latestReadyRevision") == latest
    shares = [
        int(target.get("percent") or 0)
        for target in predictor.get("traffic") or []
        if target.get("latestRevision") and target.get("revisionName") == latest
    ]
    return ready and caught_up and shares == [percent]


def deployment_mode_fixed(found: dict[str, Any] | None, name: str, mode: DeploymentMode) -> str | None:
    """Why the InferenceService ``name`` in ``mode`` cannot replace ``found``: KServe refuses to change an
    InferenceService's deployment mode once it has reconciled it (None: it can)."""
    was = ((found or {}).get("status") or {}).get("deploymentMode")
    wanted = mode.value
    # an older KServe's names: Serverless for Knative, RawDeployment for Standard
    if not was or _KSERVE_MODE_NAMES.get(was, was) == wanted:
        return None
    return (
        f"InferenceService {name} runs in {_KSERVE_MODE_NAMES.get(was, was)} mode and "
        f"spec.serving.deployment_mode is {wanted}: KServe does not change a deployment mode; delete "
        f"InferenceService {name} (the operator makes it again, in {wanted} mode) or set the mode back"
    )


_KSERVE_MODE_NAMES = {
    "Serverless": DeploymentMode.KNATIVE.value,
    "RawDeployment": DeploymentMode.STANDARD.value,
}


def _rollout_env(rollout: dict[str, Any] | None) -> list[dict[str, str]]:
    """What the predictor is told of a candidate in progress; nothing once the rollout has ended, nor
    while it is paused."""
    if rollout is None or rollout["state"] != PROGRESSING or rollout["mode"] == FULL or rollout.get("paused"):
        return []
    return [
        {"name": children.CANDIDATE_URI_ENV, "value": rollout["candidateUri"]},
        {"name": children.CANDIDATE_VERSION_ENV, "value": str(rollout["candidate"])},
        {"name": children.ROLLOUT_MODE_ENV, "value": rollout["mode"]},
        {"name": children.CANARY_PERCENT_ENV, "value": str(rollout["percent"])},
    ]


def _analysis_status(verdict: Verdict, at: str, stable: int, candidate: int) -> dict[str, Any]:
    return {
        "verdict": verdict.verdict,
        "at": at,
        "stable": stable,
        "candidate": candidate,
        "summary": verdict.summary(),
        "checks": [check.to_status() for check in verdict.checks],
    }


def readable_status(status: dict[str, Any], where: str) -> dict[str, Any]:
    """``status`` less each field ModelStatus refuses (one an operator of another version wrote): dropped
    with a log line, so the Model is reconciled on from what is left rather than failing every time. A
    required field that is missing drops the object that lacks it."""
    status = copy.deepcopy(status)
    for _ in range(1000):  # each round drops one field
        try:
            ModelStatus.model_validate(status)
            return status
        except ValidationError as exc:
            error = exc.errors()[0]
            path = list(error["loc"])[:-1] if error["type"] == "missing" else list(error["loc"])
            if not path:
                break
            parent: Any = status
            for key in path[:-1]:
                parent = parent[key]
            dropped = parent.pop(path[-1])  # a dict's key, or a list's index
            field_path = ".".join(str(part) for part in path)
            log.warning("%s: status.%s dropped: %s (it held %r)", where, field_path, error["msg"], dropped)
    log.warning("%s: the status could not be read; it is written anew", where)
    return {}


def _checked(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` as written, once ModelStatus (the CRD's schema) holds every field of it: a field the API
    server would prune fails here, in every test, rather than vanishing."""
    ModelStatus.model_validate(status)
    return status


def _owned(manifest: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"]["ownerReferences"] = [owner]
    return manifest


def _failure(job: dict[str, Any]) -> str | None:
    """Why ``job`` failed, as its Failed condition says (None: it has not failed)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            reason, message = condition.get("reason") or "Failed", condition.get("message")
            return f"{reason}: {message}" if message else reason
    return None


def schedule_request_failed(job: dict[str, Any]) -> str:
    """What a schedule's failed request ``job`` is told as: its failure, and where to look. The Role is
    named only when the API server refused the request (its pod exits REQUEST_REFUSED_EXIT_CODE, which
    the Job's podFailurePolicy turns into a Failed condition of reason PodFailurePolicy naming it); any
    other failure (a deadline, an image not pulled, no API server) is in the pod's log."""
    name = job["metadata"]["name"]
    logs = f"see its pod's log (kubectl logs job/{name})"
    failure = _failure(job)
    prefix = f"Job {name} of the schedule failed to ask for a run: {failure}"
    refused = (
        failure is not None
        and failure.startswith("PodFailurePolicy: ")
        and f"exit code {children.REQUEST_REFUSED_EXIT_CODE} " in failure
    )
    if refused:
        account = job["spec"]["template"]["spec"].get("serviceAccountName", "default")
        return (
            f"{prefix}; the API server refused it: its ServiceAccount {account} needs patch on "
            f"models.modelyard.io ({logs})"
        )
    return f"{prefix}; {logs}"


def _annotation(obj: dict[str, Any], key: str) -> str | None:
    value = (obj["metadata"].get("annotations") or {}).get(key)
    return None if value is None else str(value)


def inference_service_ready(service: dict[str, Any], manifest: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``service`` is ready as the operator wrote it (``manifest``), as KServe reports it."""
    wanted = manifest["spec"]["predictor"]
    model = (service.get("spec") or {}).get("predictor", {}).get("model", {})
    if model.get("storageUri") != wanted["model"]["storageUri"]:
        return False, f"the InferenceService does not point at {wanted['model']['storageUri']} yet"
    # No generation check: KServe's status.observedGeneration is its Deployment's (Standard) or its
    # Knative Service's (Knative), never the InferenceService's own.
    status = service.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") != "True":
                message = condition.get("message") or condition.get("reason")
                return False, message or "the predictor is not ready"
            break
    else:
        return False, "KServe has not reported on the InferenceService yet"
    knative = manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == (
        DeploymentMode.KNATIVE.value
    )
    # Ready says a revision serves; in Knative mode it is this spec's once the latest created revision is
    # ready and Knative's route gives it the share asked for
    percent = wanted.get("canaryTrafficPercent")
    share = 100 if percent is None else int(percent)
    if knative and not _latest_revision_takes(service, share):
        return False, (
            f"Knative has not yet routed {share}% of requests to the InferenceService's latest revision, "
            "ready (status.components.predictor)"
        )
    return True, ""


def _phase(conditions: Conditions) -> str:
    if conditions.is_true(READY):
        return "RollingOut" if conditions.is_true(ROLLOUT) else "Ready"
    trained = conditions.get(TRAINED)
    if trained is not None and trained["status"] == "False":
        return "Failed"
    serving = conditions.get(SERVING)
    return "Serving" if serving is not None and serving["reason"] == "NotReady" else "Training"


def _now() -> str:
    return _format_time(datetime.now(UTC))


def _format_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


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
        # A Model deleted while its timer's reconcile is under way keeps its finalizer until that returns,
        # and kopf looks again only this often (a minute by default): the delete would wait that long.
        settings.background.cancellation_polling = TIMER_EXIT_POLL_S
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
    def on_spec(name: str, namespace: str | None, **_: Any) -> None:
        if namespace:  # Models are namespaced: always
            controller.reconcile(namespace, name)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=controller.settings.operator.interval_s, registry=registry)
    def observe(name: str, namespace: str | None, **_: Any) -> None:
        if namespace:
            controller.reconcile(namespace, name)

    @kopf.on.event(
        "serving.kserve.io",
        "v1beta1",
        "inferenceservices",
        labels={children.MODEL_LABEL: kopf.PRESENT, **children.MANAGED_BY},
        registry=registry,
    )
    def on_inference_service(type: str, labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
        if type in ("ADDED", "MODIFIED") and namespace:
            controller.reconcile(namespace, labels[children.MODEL_LABEL])

    @kopf.on.delete(GROUP, VERSION, PLURAL, backoff=CLEANUP_RETRY_S, registry=registry)
    def on_delete(body: kopf.Body, retry: int, **_: Any) -> None:
        controller.cleanup(body, retry)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def on_model_event(type: str, name: str, namespace: str | None, uid: str, **_: Any) -> None:
        # a Model whose finalizer was removed by hand goes with no cleanup: this is the last word of it
        if type == "DELETED" and namespace:
            controller.forget_said(namespace, name, uid)

    return registry
