"""``modelyard install``: install or upgrade the chart through pyhelm3 and a helm binary.

The helm binary is the one given, else ``helm`` on PATH, else the newest one ``make k8s-tools`` built
under ``~/.cache/modelyard/k8s-*/bin``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.deploy.chart import CHART_DIR, render
from modelyard.errors import ModelyardError, NotFound


@dataclass(frozen=True)
class Installed:
    release: str
    namespace: str
    revision: int
    status: str
    notes: str


def find_helm(explicit: Path | None = None) -> Path:
    """The helm binary to run, or NotFound naming where it looked."""
    if explicit is not None:
        if not (explicit.is_file() and os.access(explicit, os.X_OK)):
            raise NotFound(f"helm binary {explicit} does not exist or is not executable")
        return explicit
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelyard"
    built = sorted(cache.glob("k8s-*/bin/helm"), reverse=True)
    if built:
        return built[0]
    raise NotFound(
        f"no helm binary: none on PATH or under {cache}/k8s-*/bin; run `make k8s-tools` or pass --helm"
    )


async def _install(
    helm: Path,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    *,
    chart_dir: Path,
    kubeconfig: Path | None,
    context: str | None,
    wait: bool,
    timeout: str,
) -> Installed:
    from pyhelm3 import Client
    from pyhelm3.errors import Error as HelmCommandError

    client = Client(executable=str(helm), kubeconfig=kubeconfig, kubecontext=context, default_timeout=timeout)
    try:
        chart = await client.get_chart(chart_dir)
        revision = await client.install_or_upgrade_release(
            release, chart, dict(values), namespace=namespace, create_namespace=True, wait=wait
        )
    except HelmCommandError as exc:
        raise ModelyardError(f"helm upgrade --install {release} failed: {str(exc).strip()}") from exc
    return Installed(
        release=release,
        namespace=namespace,
        revision=revision.revision,
        status=str(revision.status.value if hasattr(revision.status, "value") else revision.status),
        notes=revision.notes or "",
    )


def install(
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    *,
    helm: Path | None = None,
    chart_dir: Path = CHART_DIR,
    kubeconfig: Path | None = None,
    context: str | None = None,
    wait: bool = True,
    timeout: str = "10m",
) -> Installed:
    """Install the chart as ``release`` in ``namespace``, or upgrade it; wait for it when asked."""
    if not (chart_dir / "Chart.yaml").is_file():
        raise NotFound(f"no chart at {chart_dir} (pass --chart)")
    if kubeconfig is not None and not kubeconfig.is_file():
        raise NotFound(f"kubeconfig {kubeconfig} does not exist")
    # Helm's own engine, in-process: values the chart refuses are an error before any cluster is touched.
    render(values, release=release, namespace=namespace, chart_dir=chart_dir)
    binary = find_helm(helm)
    return asyncio.run(
        _install(
            binary,
            release,
            namespace,
            values,
            chart_dir=chart_dir,
            kubeconfig=kubeconfig,
            context=context,
            wait=wait,
            timeout=timeout,
        )
    )
