#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1, for the `cluster` tests and for a person's `make cluster-up`.

It starts etcd, kube-apiserver (client certificates, RBAC, service-account tokens and the admission plugins,
PodSecurity included), kube-controller-manager, kube-scheduler and kwok with two fake nodes, all built by
scripts/k8s-tools.sh. Then it applies the upstream CRDs from the `shared/crds` folder beside the repository
server-side and starts KServe's manager in Standard (RawDeployment) mode, its webhooks served with a
certificate from the same throwaway CA. Every process writes its log into the state folder and listens on a
free port; `kubeconfig` there is an admin's. The processes run in sessions of their own, so the control
plane outlives the command that started it until `down` stops it by the process ids it recorded.

    scripts/cluster.py up [--dir DIR] [--no-kserve]   start; print the kubeconfig's path
    scripts/cluster.py down [--dir DIR]               stop what `up` started in DIR

Only the standard library and the `openssl` command are used, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CRDS = ROOT.parent / "shared" / "crds"
KWOK_STAGES = ROOT / "hack" / "kwok-stages.yaml"
DEFAULT_DIR = ROOT / ".modelyard" / "cluster"
FAKE_NODES = ("kwok-node-0", "kwok-node-1")
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KSERVE_NAMESPACE = "kserve"
# The upstream ConfigMap defaults to Serverless (Knative), which needs a Knative install; Standard mode makes
# plain Deployments, Services and HPAs, which this control plane runs.
KSERVE_DEPLOY_CONFIG = '{"defaultDeploymentMode": "Standard"}'
STATE_FILE = "processes.json"


class ClusterError(RuntimeError):
    """The control plane could not be started; the message names the component and its log."""


def tools_bin_dir() -> Path:
    """Where scripts/k8s-tools.sh puts the binaries (it builds nothing with --bin-dir)."""
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "k8s-tools.sh"), "--bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(found.stdout.strip())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {result.stderr.strip()}")


class ControlPlane:
    """The processes of one control plane, whose state (certificates, data, logs) lives in ``workdir``."""

    def __init__(self, workdir: Path, bin_dir: Path | None = None, *, kserve: bool = True) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir or tools_bin_dir()
        self.kserve = kserve
        self.crds_dir = SHARED_CRDS
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ the public steps

    def start(self, timeout: float = 180.0) -> Path:
        """Start every component and wait until each is serving; returns the kubeconfig's path."""
        missing = [name for name in self._programs() if not (self.bin_dir / name).is_file()]
        if missing:
            raise ClusterError(f"{', '.join(missing)} not built in {self.bin_dir}: run `make k8s-tools`")
        if not SHARED_CRDS.is_dir():
            raise ClusterError(f"the upstream CRDs are missing: {SHARED_CRDS} does not exist")
        for folder in (self.pki, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._write_certificates()
            api_port = self._start_etcd_and_apiserver()
            self._write_kubeconfig(api_port)
            self._wait_for("kube-apiserver", deadline, "get", "--raw", "/readyz", log="kube-apiserver")
            self._start_controllers()
            self._start_kwok()
            self._apply_crds(deadline)
            self._wait_for(
                "the fake nodes",
                deadline,
                "wait",
                "--for=condition=Ready",
                "--timeout=5s",
                "node",
                "--all",
                log="kwok",
            )
            self._wait_for(
                "the default service account",
                deadline,
                "get",
                "serviceaccount",
                "default",
                log="kube-controller-manager",
            )
            if self.kserve:
                self._start_kserve(deadline)
        except BaseException:
            self.stop()
            raise
        return self.kubeconfig

    def stop(self) -> None:
        """Stop every process that ``start`` (or an earlier ``up`` in the same folder) started, last first."""
        for name, pid in reversed(list(self.recorded_pids().items())):
            if name not in self.processes:
                _terminate(name, pid)
        for name, process in reversed(list(self.processes.items())):
            _stop_child(name, process)
        self.processes.clear()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), **(env or {})},
            timeout=120,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create a namespace and wait for its `default` service account, which pods are admitted with."""
        self.kubectl("create", "namespace", name)
        self._wait_for(
            f"the default service account of {name}",
            time.monotonic() + timeout,
            "get",
            "serviceaccount",
            "default",
            "-n",
            name,
        )

    # ------------------------------------------------------------------ certificates

    def _write_certificates(self) -> None:
        """A throwaway CA signs the API server's, the admin's and KServe's webhook certificates."""
        pki = self.pki
        if (pki / "admin.crt").exists():
            return
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(
            "req",
            "-x509",
            *key,
            "-keyout",
            str(pki / "ca.key"),
            "-out",
            str(pki / "ca.crt"),
            "-days",
            "3650",
            "-subj",
            "/CN=modelyard-local-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        leaves = {
            "apiserver": (
                "/CN=kube-apiserver",
                "serverAuth",
                "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
            ),
            "webhook": ("/CN=kserve-webhook", "serverAuth", "IP:127.0.0.1,DNS:localhost"),
            # system:masters is the group RBAC lets do everything: this is the cluster's admin.
            "admin": ("/O=system:masters/CN=modelyard-admin", "clientAuth", ""),
        }
        for name, (subject, usage, names) in leaves.items():
            extensions = pki / f"{name}.ext"
            lines = [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
            ]
            lines.append(f"extendedKeyUsage={usage}")
            if names:
                lines.append(f"subjectAltName={names}")
            extensions.write_text("\n".join(lines) + "\n")
            request = pki / f"{name}.csr"
            _openssl("req", *key, "-keyout", str(pki / f"{name}.key"), "-out", str(request), "-subj", subject)
            _openssl(
                "x509",
                "-req",
                "-in",
                str(request),
                "-CA",
                str(pki / "ca.crt"),
                "-CAkey",
                str(pki / "ca.key"),
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                str(extensions),
                "-out",
                str(pki / f"{name}.crt"),
            )
        # The key the API server signs service-account tokens with, and checks them against.
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / "sa.key"))
        _openssl("ec", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))

    def _write_kubeconfig(self, api_port: int) -> None:
        pki = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "modelyard",
                    "cluster": {
                        "server": f"https://127.0.0.1:{api_port}",
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "modelyard-admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "modelyard", "context": {"cluster": "modelyard", "user": "modelyard-admin"}}
            ],
            "current-context": "modelyard",
        }
        # JSON is YAML, and every client reads it.
        self.kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
        self.kubeconfig.chmod(0o600)

    # ------------------------------------------------------------------ processes

    def _start_etcd_and_apiserver(self) -> int:
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            "--name=modelyard",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=modelyard={peer_url}",
            # A test cluster's data is thrown away: skipping fsync saves seconds per run on a busy disk.
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={client_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota,PodSecurity,NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # Privileged pods are allowed by the server, so that PodSecurity is what refuses them.
            "--allow-privileged=true",
            # 127.0.0.1 is no valid endpoint of the `kubernetes` Service, and no pod reaches it anyway.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        )
        return api_port

    def _start_controllers(self) -> None:
        pki, kubeconfig = self.pki, str(self.kubeconfig)
        serving = [
            "--bind-address=127.0.0.1",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
        ]
        self._spawn(
            "kube-controller-manager",
            *serving,
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'controller-manager'}",
            # Every controller that is on by default: deployment, replicaset, job, horizontalpodautoscaling,
            # garbage-collector, namespace, serviceaccount and serviceaccount-token among them.
            "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=false",
            # The HPA controller's first look at a new target comes this much after its creation.
            "--horizontal-pod-autoscaler-sync-period=5s",
        )
        self._spawn(
            "kube-scheduler",
            *serving,
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'scheduler'}",
        )

    def _start_kwok(self) -> None:
        self._spawn(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
            "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
        )
        nodes = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
                },
            }
            for name in FAKE_NODES
        ]
        self.kubectl("apply", "--server-side", "-f", "-", stdin=_as_list(nodes))

    def _apply_crds(self, deadline: float) -> None:
        files = sorted(SHARED_CRDS.glob("*.yaml"))
        crds = [path for path in files if path.name != "kserve-inferenceservice-config.yaml"]
        arguments = [item for path in crds for item in ("-f", str(path))]
        self.kubectl("apply", "--server-side", "--field-manager=modelyard-cluster", *arguments)
        # Until its status is first written, `kubectl wait` fails on a CRD rather than waiting.
        self._wait_for(
            "the CRDs", deadline, "wait", "--for=condition=Established", "--timeout=10s", "crd", "--all"
        )

    def _start_kserve(self, deadline: float) -> None:
        """KServe's manager, reading the upstream ConfigMap in Standard mode, with its webhooks registered."""
        self.kubectl("create", "namespace", KSERVE_NAMESPACE)
        config = SHARED_CRDS / "kserve-inferenceservice-config.yaml"
        self.kubectl("apply", "--server-side", "--field-manager=modelyard-cluster", "-f", str(config))
        deploy = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "inferenceservice-config", "namespace": KSERVE_NAMESPACE},
            "data": {"deploy": KSERVE_DEPLOY_CONFIG},
        }
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=modelyard-deploy-mode",
            "-f",
            "-",
            stdin=json.dumps(deploy),
        )
        # controller-runtime's webhook server reads tls.crt and tls.key from $TMPDIR/k8s-webhook-server/.
        temporary = self.workdir / "kserve-tmp"
        certs = temporary / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "tls.crt").write_bytes((self.pki / "webhook.crt").read_bytes())
        (certs / "tls.key").write_bytes((self.pki / "webhook.key").read_bytes())
        webhook_port, probe_port = free_port(), free_port()
        self._spawn(
            "kserve-manager",
            "--metrics-addr=0",
            f"--health-probe-addr=127.0.0.1:{probe_port}",
            f"--webhook-port={webhook_port}",
            env={"TMPDIR": str(temporary), "POD_NAMESPACE": KSERVE_NAMESPACE},
        )
        _wait_http(f"http://127.0.0.1:{probe_port}/readyz", "kserve-manager", deadline, self)
        self.kubectl("apply", "--server-side", "-f", "-", stdin=_as_list(self._webhook_configs(webhook_port)))

    def _webhook_configs(self, port: int) -> list[dict[str, object]]:
        """The InferenceService defaulter and validator, as KServe's own install registers them."""
        import base64

        bundle = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        rule = {
            "apiGroups": ["serving.kserve.io"],
            "apiVersions": ["v1beta1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["inferenceservices"],
        }

        def hook(name: str, path: str) -> dict[str, object]:
            return {
                "name": name,
                "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle},
                "rules": [rule],
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }

        return [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "inferenceservice.serving.kserve.io"},
                "webhooks": [
                    hook(
                        "inferenceservice.kserve-webhook-server.defaulter",
                        "/mutate-serving-kserve-io-v1beta1-inferenceservice",
                    )
                ],
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "inferenceservice.serving.kserve.io"},
                "webhooks": [
                    hook(
                        "inferenceservice.kserve-webhook-server.validator",
                        "/validate-serving-kserve-io-v1beta1-inferenceservice",
                    )
                ],
            },
        ]

    def _programs(self) -> list[str]:
        programs = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl"]
        return [*programs, "kserve-manager"] if self.kserve else programs

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), **(env or {})},
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        pids = {name: process.pid for name, process in self.processes.items()}
        (self.workdir / STATE_FILE).write_text(json.dumps(pids, indent=2) + "\n")
        time.sleep(0.2)
        if process.poll() is not None:
            raise ClusterError(f"{name} exited at start ({process.returncode}): {self.log_tail(name)}")

    def recorded_pids(self) -> dict[str, int]:
        state = self.workdir / STATE_FILE
        if not state.exists():
            return {}
        recorded: dict[str, int] = json.loads(state.read_text())
        return recorded

    def _wait_for(self, what: str, deadline: float, *kubectl_args: str, log: str = "") -> None:
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            result = self.kubectl(*kubectl_args, check=False)
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            time.sleep(0.5)
        raise ClusterError(
            f"timed out waiting for {what}: {last}" + (f"\n{self.log_tail(log)}" if log else "")
        )

    def check_alive(self) -> None:
        """Raise, with its log's tail, if a started process has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ClusterError(f"{name} exited: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        log = self.logs / f"{name}.log"
        text = log.read_text(errors="replace").splitlines() if log.exists() else []
        return f"(log {log})\n" + "\n".join(text[-lines:])


def _as_list(items: Sequence[Mapping[str, object]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


def _wait_http(url: str, name: str, deadline: float, plane: ControlPlane) -> None:
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        plane.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ClusterError(f"timed out waiting for {name} at {url}: {plane.log_tail(name)}")


def _stop_child(name: str, process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"cluster: {name} ({process.pid}) ignored SIGTERM; killing it", file=sys.stderr)
        process.kill()
        process.wait()


def _running(pid: int) -> bool:
    """Whether a process that an earlier `up` started (not this process's child) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(name: str, pid: int, grace: float = 10.0) -> None:
    # A recorded id that now belongs to another program (the machine rebooted since) is left alone.
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return
    if Path(command.decode(errors="replace")).name != name:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.1)
    print(f"cluster: {name} ({pid}) ignored SIGTERM; killing it", file=sys.stderr)
    os.kill(pid, signal.SIGKILL)
    while _running(pid):
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state folder (default {DEFAULT_DIR})")
    parser.add_argument("--no-kserve", action="store_true", help="skip KServe's manager")
    options = parser.parse_args(argv)
    plane = ControlPlane(options.dir, kserve=not options.no_kserve)
    if options.command == "down":
        plane.stop()
        return 0
    if plane.recorded_pids():
        print(f"cluster: already up in {options.dir}; `make cluster-down` first", file=sys.stderr)
        return 1
    try:
        kubeconfig = plane.start()
    except ClusterError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    print(kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
