"""The console's monitoring figures while a shadow candidate scores every request: what clients got."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from modelyard.console.service import accuracy_over_time
from modelyard.monitoring.report import build_report
from modelyard.registry import Registry

from ..monitoring.test_report import NOW, log_rows


def test_accuracy_over_time_counts_each_shadowed_request_once_and_grades_the_answer(tmp_path: Path) -> None:
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as registry:
        log_rows(registry.engine, rows=120, shadow="2")
        report = build_report(registry.engine, "drifty", since=timedelta(hours=24), now=NOW)
        plot = accuracy_over_time(registry, report, {}, gate=0.5)
    assert sum(plot["predicted_rows"]) == 120
    assert sum(plot["labelled_rows"]) == 100
    graded = [
        (rows, accuracy)
        for rows, accuracy in zip(plot["labelled_rows"], plot["accuracy"], strict=True)
        if rows
    ]
    # 66 of the 100 labels ("yes") match the stable answer; the candidate answered "no" to every row
    assert sum(rows * accuracy for rows, accuracy in graded) == pytest.approx(66)
