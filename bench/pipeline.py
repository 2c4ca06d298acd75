"""Overhead of the local KFP pipeline against a plain in-process scikit-learn script doing the same search.

    .venv/bin/python bench/pipeline.py [--spec examples/breast_cancer.yaml] [--trials 20] [--repeats 3]

Both sides tune the spec's algorithms with the same search spaces, CV folds, metric, trials and seed, on
the same stratified split, and evaluate the winner on the same holdout. The pipeline side runs
`modelyard train` (kfp.local's SubprocessRunner as kfp ships it: a new interpreter per task; fresh
MODELYARD_HOME and cache each repeat); the plain side is one Python process calling RandomizedSearchCV /
GridSearchCV / Optuna directly. Wall time and CPU time (user + system of the process and its children)
are medians over the repeats; the pipeline's task times come from its events file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

PLAIN_SCRIPT = r"""
import json, sys, time
import pandas as pd
from sklearn.metrics import get_scorer
from modelyard.spec import load_spec
from modelyard.data.loading import load_frame
from modelyard.data.validation import resolve_features
from modelyard.settings import load_settings
from modelyard.training.candidates import candidate_for
from modelyard.training.evaluation import split_holdout
from modelyard.training.tuning import scorer_for, tune

spec = load_spec(sys.argv[1], sys.argv[2:])
frame = load_frame(spec.data, load_settings())
features = resolve_features(spec, frame)
names = [f.name for f in features]
train, holdout = split_holdout(frame[[*names, spec.target]], spec.target, spec.holdout, spec.seed)
results = [tune(a, train[names], train[spec.target], features, spec.search, spec.metric, spec.cv_folds,
                spec.seed) for a in spec.algorithms]
best = max(results, key=lambda r: r.cv_score)
scorer = get_scorer(scorer_for(spec.metric, frame[spec.target].nunique()))
print(json.dumps({"winner": best.algorithm.value,
                  "holdout": float(scorer(best.model, holdout[names], holdout[spec.target]))}))
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    cpu_before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        home = env.get("MODELYARD_HOME", "")
        raise SystemExit(f"{' '.join(command)} failed (its home is kept: {home}):\n{done.stderr[-3000:]}")
    return wall, _children_cpu() - cpu_before, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default=str(ROOT / "examples" / "breast_cancer.yaml"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    overrides = [
        f"search.trials={args.trials}",
        "search.strategy=random",
        "algorithms=[logistic_regression, random_forest, hist_gradient_boosting, svm, knn, naive_bayes]",
        "gate.min_score=0",
    ]
    runs: dict[str, list[tuple[float, float]]] = {"pipeline": [], "plain": []}
    task_seconds: dict[str, list[float]] = {}
    sets = [arg for item in overrides for arg in ("--set", item)]
    command = [str(VENV_BIN / "modelyard"), "train", "--spec", args.spec, *sets, "--json"]
    for repeat in range(args.repeats):
        home = tempfile.mkdtemp(prefix="bench-pipeline-")  # kept when a run fails: its log is there
        env = {**os.environ, "MODELYARD_HOME": home}
        env = {k: v for k, v in env.items() if k not in ("MODELYARD_DATABASE_URL", "MODELYARD_STORE_URI")}
        wall, cpu, out = _timed(command, env)
        summary = json.loads(out)
        runs["pipeline"].append((wall, cpu))
        for event in _events(Path(home)):
            if event["state"] == "succeeded":
                task_seconds.setdefault(event["task"], []).append(event["seconds"])
        print(f"[{repeat + 1}] pipeline: {wall:6.1f} s wall, {cpu:6.1f} s CPU, "
              f"winner {summary['winner']['algorithm']}", file=sys.stderr)  # fmt: skip
        wall, cpu, out = _timed([sys.executable, "-c", PLAIN_SCRIPT, args.spec, *overrides], env)
        runs["plain"].append((wall, cpu))
        print(
            f"[{repeat + 1}] plain:    {wall:6.1f} s wall, {cpu:6.1f} s CPU, {out.strip()}", file=sys.stderr
        )
        shutil.rmtree(home)
    medians = {
        side: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for side, values in runs.items()
    }
    print(f"\n| side | wall time (median of {args.repeats}) | CPU time (median) |")
    print("| --- | ---: | ---: |")
    for side, (wall, cpu) in medians.items():
        print(f"| {side} | {wall:.1f} s | {cpu:.1f} s |")
    ratio_wall = medians["pipeline"][0] / medians["plain"][0]
    ratio_cpu = medians["pipeline"][1] / medians["plain"][1]
    print(f"\npipeline / plain: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU (target: at most 1.5x)")
    print("\nSteps' own time per task (events file; excludes each task's interpreter start), median:")
    for task, seconds in task_seconds.items():
        per_run = len(seconds) // args.repeats
        print(f"  {task}{f' x{per_run}' if per_run > 1 else ''}: {statistics.median(seconds):.2f} s")


def _events(home: Path) -> list[dict[str, Any]]:
    found = []
    for path in (home / "pipelines" / "runs").glob("*/events.jsonl"):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


if __name__ == "__main__":
    main()
