"""`modelyard train`: the training pipeline on this machine (kfp.local), or in this process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelyard.cli.common import (
    JsonFlag,
    SetOption,
    cell,
    err,
    out,
    print_json,
    reports_errors,
    settings,
    step_progress,
    task_progress,
)


@reports_errors
def train_command(
    spec_file: Annotated[Path, typer.Option("--spec", "-s", help="ModelSpec YAML file.")],
    overrides: SetOption = None,
    auto_deploy: Annotated[
        bool, typer.Option("--auto-deploy", help="Put the published version in production.")
    ] = False,
    in_process: Annotated[
        bool,
        typer.Option("--in-process", help="Run the same steps in this process, without KFP (no cache)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the training pipeline locally (kfp.local): validate, tune, evaluate, gate, publish."""
    from modelyard.spec import load_spec

    spec = load_spec(spec_file, overrides or [])
    current = settings()
    if in_process:
        from modelyard.registry import Stage
        from modelyard.workflow import outcome_summary, run_training

        stage = Stage.PRODUCTION if auto_deploy else Stage.STAGING
        with step_progress() as progress:
            summary = outcome_summary(run_training(current, spec, progress=progress, stage=stage))
    else:
        from modelyard.pipeline.local import run_training_locally

        with task_progress() as on_event:
            run = run_training_locally(current, spec, auto_deploy=auto_deploy, on_event=on_event)
        summary = run.summary
        if run.cached_tasks:
            reused = Counter(run.cached_tasks)
            listed = ", ".join(f"{task} x{n}" if n > 1 else task for task, n in reused.items())
            err.print(f"reused cached results of: {listed}", highlight=False)
        err.print(f"pipeline log: {run.log_file}", highlight=False)
    if as_json:
        print_json(summary)
    else:
        print_training_summary(summary, spec.metric.value)
    if not summary["gate"]["passed"]:
        err.print(
            f"[bold red]gate rejected:[/] {summary['gate']['reason']}; nothing was published", highlight=False
        )
        raise typer.Exit(1)


def print_training_summary(summary: dict[str, Any], metric: str) -> None:
    winner = summary["winner"]["algorithm"]
    table = Table("algorithm", f"CV {metric}", "± std", "trials", "best params", title="candidates")
    for c in sorted(summary["candidates"], key=lambda c: -c["cv_score"]):
        name = f"[bold green]{c['algorithm']} ★[/]" if c["algorithm"] == winner else c["algorithm"]
        params = ", ".join(f"{k}={cell(v)}" for k, v in c["best_params"].items())
        table.add_row(name, f"{c['cv_score']:.4f}", f"{c['cv_std']:.4f}", str(c["n_trials"]), params)
    out.print(table)
    holdout = Table("metric", "holdout", title="holdout")
    for key, value in summary["holdout"].items():
        holdout.add_row(key, f"{value:.4f}")
    out.print(holdout)
    gate = summary["gate"]
    verdict_text = "[bold green]passed[/]" if gate["passed"] else "[bold red]rejected[/]"
    out.print(f"gate: {verdict_text}: {gate['reason']}", highlight=False)
    published = summary["published"]
    if published is not None:
        out.print(
            f"published [bold]{published['name']}@{published['version']}[/] ({published['stage']}) "
            f"at {published['storage_uri']}",
            highlight=False,
        )
