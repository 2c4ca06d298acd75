"""A Model's status conditions, kept as the Kubernetes API conventions ask: one entry per type, each with
the generation it describes, and a transition time that moves only when its status does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TRAINED = "Trained"
PUBLISHED = "Published"
SERVING = "Serving"
ROLLOUT = "RolloutProgressing"
READY = "Ready"
TYPES = (TRAINED, PUBLISHED, SERVING, ROLLOUT, READY)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conditions:
    """The conditions of one status, changed in place; ``changed`` lists the types whose status moved."""

    def __init__(self, current: list[dict[str, Any]] | None, generation: int) -> None:
        self.by_type = {item["type"]: dict(item) for item in current or []}
        self.generation = generation
        self.changed: list[str] = []

    def set(self, type_: str, status: bool | None, reason: str, message: str) -> bool:
        """Set one condition (None: Unknown); True when its status or reason changed."""
        value = "Unknown" if status is None else str(status)
        old = self.by_type.get(type_)
        moved = old is None or old["status"] != value
        self.by_type[type_] = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now() if moved or old is None else old["lastTransitionTime"],
            "observedGeneration": self.generation,
        }
        news = moved or old is None or old["reason"] != reason
        if news:
            self.changed.append(type_)
        return news

    def get(self, type_: str) -> dict[str, Any] | None:
        return self.by_type.get(type_)

    def is_true(self, type_: str) -> bool:
        found = self.by_type.get(type_)
        return found is not None and found["status"] == "True"

    def as_list(self) -> list[dict[str, Any]]:
        order = {name: index for index, name in enumerate(TYPES)}
        return sorted(self.by_type.values(), key=lambda item: order.get(item["type"], len(order)))
