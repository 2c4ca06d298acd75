"""A candidate version served beside the stable one, in shadow or canary mode, with no service mesh.

In ``shadow`` mode the stable version answers every request; once it has answered, the candidate scores
the same rows in a micro-batcher (and prediction thread) of its own, and its predictions, the rows it
scored and the rows on which it predicted the stable class are exported and logged under its version. A
candidate that fails in shadow mode never fails the client's request. In ``canary`` mode the candidate
answers ``canary_percent`` of the requests, chosen by a hash of the request id, so a retried request (same
id) reaches the same version. The candidate must take the stable version's features and predict its
classes: a server given any other candidate refuses to start, naming the difference.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Literal

from modelyard.errors import ModelyardError
from modelyard.serving.model import ServedModel

log = logging.getLogger(__name__)

RolloutMode = Literal["shadow", "canary"]
SHADOW, CANARY = "shadow", "canary"
SHARES = 10_000  # the canary split's resolution: 0.01 percent
MAX_SHADOW_BACKLOG_ROWS = 8192
"""Rows that may wait for the shadow candidate at once: a request that would take the backlog beyond it
is not shadowed (its rows are counted as skipped), so a slow candidate holds at most this many rows, or
one request's when it is larger and nothing else waits."""


def canary_share(request_id: str) -> float:
    """Where ``request_id`` falls in [0, 100): the canary takes the requests below its percent."""
    return (zlib.crc32(request_id.encode()) % SHARES) * 100.0 / SHARES


def check_candidate(stable: ServedModel, candidate: ServedModel) -> None:
    """ModelyardError naming why ``candidate`` cannot be rolled out beside ``stable``; else returns."""
    where = f"the candidate bundle {candidate.model_dir}"
    if not candidate.ready:
        raise ModelyardError(f"{where} cannot be served: {candidate.load_error}")
    if candidate.version == stable.version:
        raise ModelyardError(
            f"{where} has the stable version's version {stable.version!r}: metrics and the prediction log "
            "could not tell the two apart (set MODELYARD_SERVING__CANDIDATE_VERSION)"
        )
    if stable.metadata is None or candidate.metadata is None:
        return  # the stable bundle did not load: the server is not ready and says why
    ours = [(f.name, f.type.value) for f in stable.metadata.features]
    theirs = [(f.name, f.type.value) for f in candidate.metadata.features]
    if ours != theirs:
        raise ModelyardError(
            f"{where} takes other features than the stable version: {_difference(ours, theirs)}"
        )
    if list(stable.metadata.classes) != list(candidate.metadata.classes):
        raise ModelyardError(
            f"{where} predicts the classes {list(candidate.metadata.classes)}, the stable version "
            f"{list(stable.metadata.classes)}: answers and metrics must mean the same classes"
        )


def _difference(stable: list[tuple[str, str]], candidate: list[tuple[str, str]]) -> str:
    types = dict(stable)
    problems = []
    missing = [name for name, _ in stable if name not in dict(candidate)]
    extra = [name for name, _ in candidate if name not in types]
    if missing:
        problems.append(f"it lacks {', '.join(missing)}")
    if extra:
        problems.append(f"it adds {', '.join(extra)}")
    problems += [
        f"{name} is {kind} (stable: {types[name]})"
        for name, kind in candidate
        if name in types and types[name] != kind
    ]
    if not problems:
        problems.append(
            f"its features come in the order {[n for n, _ in candidate]}, the stable version's in "
            f"{[n for n, _ in stable]}"
        )
    return "; ".join(problems)


@dataclass
class Rollout:
    """The candidate of one served model, how it takes traffic, and its shadow bookkeeping."""

    candidate: ServedModel
    mode: RolloutMode
    canary_percent: float = 0.0
    backlog_rows: int = 0
    """Rows of the shadow requests handed to the candidate and not yet scored."""
    failures: int = 0

    def takes_shadow(self, rows: int) -> bool:
        """Whether the candidate may take a shadow request of ``rows`` rows now (see the backlog's bound)."""
        return self.backlog_rows == 0 or self.backlog_rows + rows <= MAX_SHADOW_BACKLOG_ROWS

    def answers(self, request_id: str) -> bool:
        """Whether the candidate answers this request (canary mode only)."""
        return self.mode == CANARY and canary_share(request_id) < self.canary_percent

    def failed(self, exc: BaseException) -> None:
        """Log the candidate's first failure, once: each one is counted in modelyard_requests_total."""
        self.failures += 1
        if self.failures == 1:
            log.error(
                "the shadow candidate %s@%s failed (clients still get the stable answer; later failures "
                "are only counted, as status 500 of protocol shadow)",
                self.candidate.name,
                self.candidate.version,
                exc_info=exc,
            )


__all__ = [
    "CANARY",
    "MAX_SHADOW_BACKLOG_ROWS",
    "SHADOW",
    "Rollout",
    "RolloutMode",
    "canary_share",
    "check_candidate",
]
