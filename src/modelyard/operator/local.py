"""`modelyard operator --local`: the work of the pods the local control plane never runs, done on this
machine. kwok runs no containers, so a training Job the operator makes is run here as a process (its
command, arguments, literal env and volumes, as kubelet would start its one container) and its status set
from the process's exit, and an InferenceService is served by a local predictor (``python -m
modelyard.serving`` with its env, its storageUri fetched to a local bundle) whose URL on 127.0.0.1 the
InferenceService's status reports. A rollout step's predictor takes the HTTP port of the one it replaces,
so the URL stays, and a metrics port of its own, as a pod has an address of its own: Prometheus may scrape
a removed target for a few seconds more, and on a shared port it would label the new process's series
with the old pod. The running predictors' metrics endpoints are listed in a Prometheus file_sd file,
labelled as the chart's scrape config labels predictor pods, for the Prometheus the rollout's analyses
query (one given, or one started here: ``analysis_prometheus``).

The local configuration stands in for the cluster's: the registry and object store are this machine's
(``MODELYARD_DATABASE_URL``, ``MODELYARD_STORE_URI``), not the chart's Secrets the pod names. Jobs made
in local mode carry ``spec.managedBy: modelyard.io/local``, so the Job controller leaves them (and their
status) to this module; the InferenceService's status is this module's too, so KServe's manager must not
run beside it (``check_no_kserve``). A Job that has not finished when the operator starts is run again.
A schedule's request Job (its CronJob's, as the CronJob controller starts it) is run here too, and its
`modelyard request-run` keeps the operator's KUBECONFIG, so a schedule asks for runs as on a cluster.
One operator works in a home's folder at a time (``claim_workdir``), and it stops the predictors a killed
one left running before it starts its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import kopf

from modelyard.errors import ModelyardError
from modelyard.monitoring.prometheus_server import PrometheusServer, prometheus_duration, start_prometheus
from modelyard.operator import children
from modelyard.operator.kube import CONFIG_MAP, INFERENCE_SERVICE, JOB, Cluster, job_finished
from modelyard.processes import NotReady, record_pid, stop_leftover, stop_process, wait_until_ready
from modelyard.settings import Settings

KSERVE_WEBHOOK = "inferenceservice.serving.kserve.io"  # what KServe's manager registers
LOCAL_HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_JOIN_TIMEOUT_S = 30.0  # a starting predictor's thread: its wait ends at once, then one stop_process
STATUS_ATTEMPTS = 5
LOG_TAIL_CHARS = 2000
TARGETS_FILE = "prometheus-targets.json"  # under the local work folder
PREDICTORS_JOB = "kserve-predictors"  # the chart's scrape job for predictor pods
LOCK_FILE = ".lock"  # under the local work folder: one operator's while it runs
PREDICTOR_PID_FILE = "predictor.pid"  # in each predictor's folder


class LocalOperatorRunning(ModelyardError):
    """Another `--local` operator works in the same folder: its targets file and Prometheus are there."""

    status_code = 409


class KServeRunning(ModelyardError):
    """KServe's manager serves the control plane: it, not the local predictors, would own the status."""

    status_code = 409


def check_no_kserve(api_client: Any) -> None:
    """KServeRunning when KServe's InferenceService webhook is registered on the API server."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.AdmissionregistrationV1Api(api_client).read_mutating_webhook_configuration(KSERVE_WEBHOOK)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    raise KServeRunning(
        "KServe's manager runs on this control plane (its webhook "
        f"{KSERVE_WEBHOOK} is registered) and would own the InferenceServices' status that the local "
        "predictors report: start the control plane without it (scripts/cluster.py up --no-kserve)"
    )


def claim_workdir(workdir: Path) -> IO[str]:
    """An exclusive lock on ``workdir`` (``fcntl.flock`` of its lock file, which holds this process's pid)
    for as long as the file returned stays open; the lock goes with the process, however it ends.
    LocalOperatorRunning, naming the folder and the other's pid, when another process holds it."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "unknown"
        handle.close()
        raise LocalOperatorRunning(
            f"another `modelyard operator --local` (pid {other}) works in {workdir}: one runs per "
            "MODELYARD_HOME; stop it, or give this one a MODELYARD_HOME of its own"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def modelyard_program() -> str:
    """The `modelyard` of this interpreter's environment (the one running the operator)."""
    beside = Path(sys.executable).parent / "modelyard"
    return str(beside) if beside.exists() else shutil.which("modelyard") or "modelyard"


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class PodCommand:
    """What kubelet would start for a pod's one container, as a local process."""

    argv: list[str]
    env: dict[str, str]


def pod_command(
    pod_spec: dict[str, Any],
    workdir: Path,
    labels: dict[str, str],
    config_map: Callable[[str], dict[str, str] | None],
    env_from: Callable[[dict[str, Any]], dict[str, str]],
    value_from: Callable[[dict[str, Any]], str | None],
    entrypoint: list[str] | None = None,
) -> PodCommand:
    """The pod's one container as a local command: each volume a folder under ``workdir`` (a ConfigMap's
    keys written as files, read through ``config_map``), paths under a mount moved to its folder, the
    downward API's labels from ``labels``. What the cluster's objects would give the env is for the
    caller to say: ``env_from`` the variables of an ``envFrom`` entry, ``value_from`` the value of an
    ``env`` entry that names a Secret or ConfigMap key (None leaves it unset). A ConfigMap volume that is
    missing is a ModelyardError, as kubelet's CreateContainerConfigError. ``entrypoint`` stands for the
    image's, for a container without a command."""
    (container,) = pod_spec["containers"]
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        local = workdir / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            data = config_map(name)
            if data is None:
                raise ModelyardError(f"CreateContainerConfigError: configmap {name} not found")
            for key, text in data.items():
                (local / key).write_text(text)
        mounts[mount["mountPath"]] = local

    def local_path(value: str) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value

    env = {"PATH": os.environ.get("PATH", "")}
    for source in container.get("envFrom", []):
        env.update(env_from(source))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = local_path(variable["value"])
            continue
        field_path = variable["valueFrom"].get("fieldRef", {}).get("fieldPath", "")
        if field_path.startswith("metadata.labels['") and field_path.endswith("']"):
            env[variable["name"]] = labels[field_path[len("metadata.labels['") : -2]]
            continue
        resolved = value_from(variable)
        if resolved is not None:
            env[variable["name"]] = resolved
    program = modelyard_program()
    command = [program if part == "modelyard" else part for part in container.get("command", [])]
    args = [local_path(arg) for arg in container.get("args", [])]
    return PodCommand([*(command or entrypoint or []), *args], env)


def job_pod_labels(job: dict[str, Any]) -> dict[str, str]:
    """The labels the Job controller gives the Job's pods (its name among them)."""
    template = job["spec"]["template"]
    return {**template["metadata"].get("labels", {}), children.JOB_NAME_LABEL: job["metadata"]["name"]}


SCHEDULE_REQUEST = "schedule request"


def _work(job: dict[str, Any]) -> str:
    """What a local Job's pod does, as said: a schedule's request (its CronJob's Job), or training."""
    return SCHEDULE_REQUEST if children.SCHEDULE_LABEL in job_pod_labels(job) else "training"


def _condition(type_: str, reason: str, message: str, at: str) -> dict[str, str]:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": at,
        "lastTransitionTime": at,
    }


@dataclass
class _Predictor:
    key: tuple[str, tuple[tuple[str, str], ...]]
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    metrics_port: int
    pid_file: Path

    def target(self, namespace: str, name: str) -> dict[str, Any]:
        """Its metrics endpoint as a file_sd target, labelled as the chart's scrape config labels a
        predictor pod's (each process a pod of its own, so each rollout step's series are new ones)."""
        pod = f"{name}-predictor-local-{self.process.pid}"
        labels = {"namespace": namespace, "pod": pod, "inferenceservice": name}
        return {"targets": [f"{LOCAL_HOST}:{self.metrics_port}"], "labels": labels}


class LocalPods:
    """Runs the training Jobs and predictors of the Models the operator manages, on this machine."""

    def __init__(self, settings: Settings, cluster: Cluster, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.cluster = cluster
        self.say = say
        self.workdir = local_workdir(settings)
        self._claim = claim_workdir(self.workdir)
        self._lock = threading.Lock()
        self._jobs: dict[str, subprocess.Popen[bytes] | None] = {}  # by uid; None: starting
        self._predictors: dict[tuple[str, str], _Predictor] = {}
        self._http_ports: dict[tuple[str, str], int] = {}  # kept across its predictors: one URL
        self._service_locks: dict[tuple[str, str], threading.Lock] = {}
        self._serving: list[threading.Thread] = []  # joined by stop(): each stops what it started
        self._targets_lock = threading.Lock()
        self._stopping = threading.Event()
        self.targets_file = self.workdir / TARGETS_FILE
        # predictors an operator killed before its stop() left running: not listed, and not to serve on
        for pid_file in sorted(self.workdir.glob(f"*/*-predictor/{PREDICTOR_PID_FILE}")):
            stopped = stop_leftover(pid_file)
            if stopped is not None:
                say(f"stopped a predictor (pid {stopped}, {pid_file.parent}) that an earlier operator left")
        self._write_targets()

    def local_env(self, pod_env: dict[str, str], *, kube_access: bool = False) -> dict[str, str]:
        """A process's env: this machine's, the pod's own, and this machine's registry and store in place
        of the Secrets and ConfigMap a pod would read. Only with ``kube_access`` (a schedule's request
        pod, whose work is to ask the API server) does it keep the operator's KUBECONFIG: a training pod
        or a predictor has no business with the API server, and no ServiceAccount here to limit it."""
        passed = {key: value for key, value in os.environ.items() if kube_access or key != "KUBECONFIG"}
        return {
            **passed,
            **pod_env,
            "MODELYARD_DATABASE_URL": self.settings.database_url,
            "MODELYARD_STORE_URI": self.settings.store_uri,
        }

    # ------------------------------------------------------------------ training Jobs

    def on_job(self, job: dict[str, Any]) -> None:
        """Run ``job`` here if it is a local Job that has not finished and is not running already."""
        if job["spec"].get("managedBy") != children.LOCAL_JOB_MANAGER or job_finished(job):
            return
        uid = job["metadata"]["uid"]
        with self._lock:
            if uid in self._jobs or self._stopping.is_set():
                return
            self._jobs[uid] = None
        threading.Thread(target=self._run_job, args=(job,), name=f"job-{uid}", daemon=True).start()

    def _run_job(self, job: dict[str, Any]) -> None:
        """Run ``job``'s pod here. A thread has no kopf retry: whatever it raises (a program that is not
        there, a folder it cannot make, a status write refused) fails the Job, as kubelet's StartError."""
        meta = job["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        started = (job.get("status") or {}).get("startTime") or _now()
        try:
            self._run_pod(job, started)
        except Exception as exc:  # any error ends this thread: the Job must say it
            message = f"{type(exc).__name__}: {exc}"
            self.say(f"{_work(job)} {where} could not run: {message}")
            try:
                self._finish_job(job, started, False, message, reason="StartError")
            except Exception as write_error:  # said: nothing else would report it
                self.say(f"Job {where}: its Failed status could not be written either: {write_error}")

    def _run_pod(self, job: dict[str, Any], started: str) -> None:
        meta = job["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        workdir = self.workdir / namespace / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        log = workdir / "pod.log"
        self._write_job_status(job, {"startTime": started, "active": 1})
        try:
            command = pod_command(
                job["spec"]["template"]["spec"],
                workdir,
                job_pod_labels(job),
                lambda config_map: self._config_map(config_map, namespace),
                # the chart's ConfigMap and Secrets: the local configuration (local_env) stands in
                lambda _source: {},
                lambda _variable: None,
            )
        except ModelyardError as exc:
            self._finish_job(job, started, False, exc.message)
            return
        # a schedule's request pod asks the API server for a run, with the operator's own access here
        work = _work(job)
        env = self.local_env(command.env, kube_access=work == SCHEDULE_REQUEST)
        self.say(f"{work} {namespace}/{name} started (log: {log})")
        with log.open("wb") as output:
            process = subprocess.Popen(
                command.argv, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=workdir
            )
            with self._lock:
                self._jobs[uid] = process
            deadline = job["spec"].get("activeDeadlineSeconds")
            try:
                code = process.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._finish_job(job, started, False, f"DeadlineExceeded: ran longer than {deadline} s")
                return
        if self._stopping.is_set():
            return  # stopped with the operator: the Job is run again when it starts
        if code == 0:
            self.say(f"{work} {namespace}/{name} finished")
            self._finish_job(job, started, True, f"the {work} process exited 0")
        else:
            why = f"the {work} process exited {code}: {_tail(log)[-500:]}"
            self.say(f"{work} {namespace}/{name} failed: exit {code} (log: {log})")
            self._finish_job(job, started, False, why)

    def _finish_job(
        self,
        job: dict[str, Any],
        started: str,
        succeeded: bool,
        message: str,
        reason: str = "BackoffLimitExceeded",
    ) -> None:
        at = _now()
        if succeeded:
            status: dict[str, Any] = {
                "startTime": started,
                "completionTime": at,
                "active": 0,
                "succeeded": 1,
                "conditions": [
                    _condition("SuccessCriteriaMet", "CompletionsReached", message, at),
                    _condition("Complete", "CompletionsReached", message, at),
                ],
            }
        else:
            status = {
                "startTime": started,
                "active": 0,
                "failed": 1,
                "conditions": [
                    _condition("FailureTarget", reason, message, at),
                    _condition("Failed", reason, message, at),
                ],
            }
        self._write_job_status(job, status)

    def _write_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        for _ in range(STATUS_ATTEMPTS):
            fresh = self.cluster.get(JOB, meta["name"], meta["namespace"])
            if fresh is None or fresh["metadata"]["uid"] != meta["uid"]:
                return
            if self.cluster.replace_status(JOB, fresh, status):
                return
        # a thread of this module, not a handler: nothing would retry an exception, so it is said instead
        self.say(f"Job {meta['namespace']}/{meta['name']}: its status changed under every write; not set")

    def _config_map(self, name: str, namespace: str) -> dict[str, str] | None:
        found = self.cluster.get(CONFIG_MAP, name, namespace)
        return None if found is None else dict(found.get("data") or {})

    # ------------------------------------------------------------------ predictors

    def on_inference_service(self, service: dict[str, Any]) -> None:
        """Serve ``service`` with a local predictor (a new one when its storageUri or env changed)."""
        meta = service["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if self._stopping.is_set():
                return
            lock = self._service_locks.setdefault(key, threading.Lock())
            thread = threading.Thread(target=self._serve, args=(service, lock), daemon=True)
            self._serving = [*(t for t in self._serving if t.is_alive()), thread]
        thread.start()

    def _serve(self, service: dict[str, Any], lock: threading.Lock) -> None:
        meta = service["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        model = (service.get("spec") or {}).get("predictor", {}).get("model", {})
        storage_uri = model.get("storageUri", "")
        env = tuple((variable["name"], str(variable.get("value", ""))) for variable in model.get("env") or [])
        wanted = (storage_uri, env)
        with lock:
            current = self._predictors.get((namespace, name))
            if current is not None and current.key == wanted and current.process.poll() is None:
                self._report(
                    namespace, name, True, current.url, f"the local predictor serves at {current.url}"
                )
                return
            if current is not None:
                self._stop_predictor(current)
                with self._lock:
                    self._predictors.pop((namespace, name), None)  # stop() may have emptied it
                self._write_targets()
            try:
                predictor = self._start_predictor(namespace, name, storage_uri, dict(env), wanted)
            except ModelyardError as exc:
                with self._lock:
                    self._http_ports.pop((namespace, name), None)  # the next try takes a new one
                self.say(f"predictor {namespace}/{name} failed: {exc.message}")
                self._report(namespace, name, False, None, exc.message)
                return
            if not self._adopt(namespace, name, predictor):
                return
            self.say(f"predictor {namespace}/{name} serves {storage_uri} at {predictor.url}")
            self._report(
                namespace, name, True, predictor.url, f"the local predictor serves at {predictor.url}"
            )

    def _adopt(self, namespace: str, name: str, predictor: _Predictor) -> bool:
        """List a predictor that has started as the service's, unless the operator is stopping: then
        stop() has stopped the others already, and this one is stopped here (False)."""
        with self._lock:
            stopping = self._stopping.is_set()
            if not stopping:
                self._predictors[(namespace, name)] = predictor
        if stopping:
            self._stop_predictor(predictor)
            return False
        self._write_targets()
        return True

    def _start_predictor(
        self,
        namespace: str,
        name: str,
        storage_uri: str,
        env: dict[str, str],
        key: tuple[str, tuple[tuple[str, str], ...]],
    ) -> _Predictor:
        from modelyard.bundle import fetch_bundle

        version = env.get(children.MODEL_VERSION_ENV, "model")
        folder = self.workdir / namespace / f"{name}-predictor"
        folder.mkdir(parents=True, exist_ok=True)
        bundle = fetch_bundle(storage_uri, folder / "bundles" / version, s3=self.settings.s3)
        with self._lock:
            if (namespace, name) not in self._http_ports:  # free_port binds a socket: only for a new one
                self._http_ports[(namespace, name)] = free_port()
            http_port = self._http_ports[(namespace, name)]
        metrics_port = free_port()
        log = folder / f"predictor-{version}.log"
        argv = [
            sys.executable,
            "-m",
            "modelyard.serving",
            f"--model-dir={bundle}",
            f"--model-name={name}",
            f"--host={LOCAL_HOST}",
            f"--http-port={http_port}",
            "--grpc-port=0",
            f"--metrics-port={metrics_port}",
        ]
        process_env = self.local_env({"MODELYARD_HOME": str(folder / "home"), **env})
        with log.open("ab") as output:
            process = subprocess.Popen(argv, env=process_env, stdout=output, stderr=subprocess.STDOUT)
        pid_file = folder / PREDICTOR_PID_FILE
        record_pid(pid_file, process, f"--model-dir={bundle}")
        url = f"http://{LOCAL_HOST}:{http_port}"
        predictor = _Predictor(key, process, url, log, metrics_port, pid_file)
        ready = f"http://{LOCAL_HOST}:{metrics_port}/v2/health/ready"
        try:
            wait_until_ready(ready, process, READY_TIMEOUT_S, "the local predictor", self._stopping)
        except NotReady as exc:
            self._stop_predictor(predictor)
            raise ModelyardError(f"{exc.message}: {_tail(log)[-500:]}") from None
        return predictor

    def _report(self, namespace: str, name: str, ready: bool, url: str | None, message: str) -> None:
        """Write the InferenceService's status as KServe would: Ready, and the URL it answers on."""
        for _ in range(STATUS_ATTEMPTS):
            service = self.cluster.get(INFERENCE_SERVICE, name, namespace)
            if service is None:
                return
            old = service.get("status") or {}
            ready_condition: dict[str, Any] = next(
                (c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {}
            )
            state = "True" if ready else "False"
            if old.get("url") == url and ready_condition.get("status") == state:
                return
            at = _now()
            conditions = [
                {"type": kind, "status": state, "message": message, "lastTransitionTime": at}
                for kind in ("PredictorReady", "Ready")
            ]
            status: dict[str, Any] = {**old, "conditions": conditions}
            if url is None:
                status.pop("url", None)
                status.pop("address", None)
            else:
                status.update(url=url, address={"url": url})
            if self.cluster.replace_status(INFERENCE_SERVICE, service, status):
                return

    def forget_inference_service(self, namespace: str, name: str) -> None:
        with self._lock:
            predictor = self._predictors.pop((namespace, name), None)
            self._http_ports.pop((namespace, name), None)
        if predictor is not None:
            self._write_targets()
            self._stop_predictor(predictor)
            self.say(f"predictor {namespace}/{name} stopped")

    def _write_targets(self) -> None:
        """The running predictors' metrics endpoints, as a Prometheus file_sd file: written whole to a
        temporary file and renamed over the old, so Prometheus never reads half of one."""
        with self._targets_lock:
            with self._lock:
                targets = [
                    predictor.target(namespace, name)
                    for (namespace, name), predictor in sorted(self._predictors.items())
                ]
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.targets_file.with_name(f".{self.targets_file.name}.partial")
            partial.write_text(json.dumps(targets, indent=2) + "\n")
            partial.replace(self.targets_file)

    @staticmethod
    def _stop_predictor(predictor: _Predictor) -> None:
        stop_process(predictor.process)
        predictor.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop every predictor and training process this operator started; the folder stays claimed
        (``release``) until whatever else works in it has stopped too (``stop_local``)."""
        with self._lock:
            self._stopping.set()  # under the lock: a predictor that starts now is not listed (_adopt)
            predictors = list(self._predictors.values())
            self._predictors.clear()
            processes = [process for process in self._jobs.values() if process is not None]
            serving = list(self._serving)
        self._write_targets()
        for predictor in predictors:
            self._stop_predictor(predictor)
        for process in processes:
            stop_process(process)
        # A predictor still starting is stopped by its own thread once it sees _stopping; the process
        # must not exit before that thread has, or the predictor outlives it.
        for thread in serving:
            thread.join(STOP_JOIN_TIMEOUT_S)

    def release(self) -> None:
        """Give up the folder: another operator may claim it, and stop what it finds left there."""
        self._claim.close()


def stop_local(pods: LocalPods, prometheus: PrometheusServer | None) -> None:
    """Stop what `--local` started: the predictors and training processes, then its Prometheus, and give
    up the folder last, so that no operator claims it while this one's Prometheus still runs (a start
    there stops a Prometheus it finds left, and records its own)."""
    try:
        pods.stop()
        if prometheus is not None:
            prometheus.stop()
    finally:
        pods.release()


def local_workdir(settings: Settings) -> Path:
    """Where `--local` keeps the runs' folders and logs, the predictors' bundles and its Prometheus."""
    return settings.home / "operator-local"


def local_prometheus_config(settings: Settings, targets_file: Path) -> dict[str, Any]:
    """A Prometheus configuration that scrapes the predictors listed in ``targets_file`` as often as the
    operator's analyses expect (``scrape_interval_s``)."""
    every = prometheus_duration(settings.operator.scrape_interval_s)
    return {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "scrape_configs": [{"job_name": PREDICTORS_JOB, "file_sd_configs": [{"files": [str(targets_file)]}]}],
    }


def analysis_prometheus(
    settings: Settings, program: str | None, say: Callable[[str], None]
) -> tuple[Settings, PrometheusServer | None]:
    """The Prometheus `--local`'s rollouts are analysed from: ``MODELYARD_OPERATOR__PROMETHEUS_URL`` when
    set (it is to scrape the targets file), else one started here from ``program`` (None: there is none,
    and a later version waits in staging). The settings the operator runs with, and the server started."""
    workdir = local_workdir(settings)
    targets_file = workdir / TARGETS_FILE
    if settings.operator.prometheus_url:
        say(
            f"rollouts are analysed from Prometheus at {settings.operator.prometheus_url}, which is to "
            f"scrape the local predictors listed in {targets_file} (a file_sd_configs file)"
        )
        return settings, None
    if program is None:
        say(
            "rollouts are not analysed: MODELYARD_OPERATOR__PROMETHEUS_URL is unset and no prometheus "
            "program is on PATH, so every version after the first waits in staging (CandidateWaiting) until "
            "promoted by hand"
        )
        return settings, None
    root = workdir / "prometheus"
    server = start_prometheus(root, local_prometheus_config(settings, targets_file), free_port(), program)
    say(
        f"Prometheus at {server.url} scrapes the local predictors every "
        f"{settings.operator.scrape_interval_s:g} s (config and log: {root}); rollouts are analysed from it"
    )
    operator = settings.operator.model_copy(update={"prometheus_url": server.url})
    return settings.model_copy(update={"operator": operator}), server


def register(registry: kopf.OperatorRegistry, pods: LocalPods) -> None:
    """kopf's handlers that hand the operator's Jobs and InferenceServices to ``pods``."""

    @kopf.on.event("batch", "v1", "jobs", labels=children.MANAGED_BY, registry=registry)
    def on_job(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type != "DELETED":
            pods.on_job(dict(body))

    @kopf.on.event(
        "serving.kserve.io",
        "v1beta1",
        "inferenceservices",
        labels={children.MODEL_LABEL: kopf.PRESENT, **children.MANAGED_BY},
        registry=registry,
    )
    def on_inference_service(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        if type == "DELETED":
            pods.forget_inference_service(meta["namespace"], meta["name"])
        else:
            pods.on_inference_service(dict(body))

    @kopf.on.cleanup(registry=registry)
    def stop(**_: Any) -> None:
        pods.stop()
