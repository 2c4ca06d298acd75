"""The retrain webhook's launcher: start the training pipeline of a model named by an alert.

:class:`PipelineLauncher` finds the model's spec in a folder of ModelSpec files (by the spec's ``name``)
and runs the training pipeline: on Kubeflow Pipelines through ``kfp.Client`` when
``MODELYARD_PIPELINE__HOST`` is set, else with ``kfp.local`` in this process (the webhook calls it on a
thread of its own). It lives outside ``modelyard.monitoring``, which must not import the pipelines.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from modelyard.errors import InvalidInput
from modelyard.settings import Settings
from modelyard.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)


def find_specs(directory: Path) -> dict[str, Path]:
    """Model name -> spec file, for every ModelSpec YAML in ``directory``."""
    if not directory.is_dir():
        raise InvalidInput(f"--specs {directory}: not a folder of ModelSpec YAML files")
    found: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            spec = load_spec(path, [])
        except Exception:  # other YAML (an Alertmanager config, a Model resource) is not a spec: skip it
            continue
        found.setdefault(spec.name, path)
    return found


class PipelineLauncher:
    """Starts the training pipeline of a model; remembers which of its runs are still in flight here."""

    def __init__(self, settings: Settings, specs: Path, *, auto_deploy: bool = False) -> None:
        self.settings = settings
        self.specs_dir = specs
        self.auto_deploy = auto_deploy
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def spec_for(self, model: str) -> ModelSpec:
        path = find_specs(self.specs_dir).get(model)
        if path is None:
            raise InvalidInput(f"no spec named {model!r} in {self.specs_dir}: cannot retrain it")
        return load_spec(path, [])

    def running(self, model: str) -> bool:
        with self._lock:
            return model in self._running

    def start(self, model: str) -> str:
        spec = self.spec_for(model)
        host = self.settings.pipeline.host
        if host:
            from modelyard.pipeline.client import run

            submitted = run(
                host,
                spec,
                auto_deploy=self.auto_deploy,
                inference_service=spec.name,
                namespace=self.settings.pipeline.namespace,
            )
            log.info("started KFP run %s of %s: %s", submitted.id, model, submitted.url)
            return submitted.id
        from modelyard.pipeline.local import run_training_locally

        with self._lock:
            self._running.add(model)
        try:
            log.info("training %s with kfp.local", model)
            local = run_training_locally(self.settings, spec, auto_deploy=self.auto_deploy)
        finally:
            with self._lock:
                self._running.discard(model)
        published = local.summary.get("published") or {}
        log.info("kfp.local training of %s finished: %s", model, published or local.summary.get("gate"))
        return f"local:{local.log_file.name}"


__all__ = ["PipelineLauncher", "find_specs"]
