"""Model references: the one syntax every command and pipeline step takes to name a registered version.

    NAME            the version in production; the latest version when none is in production
    NAME@VERSION    that version (a positive integer)
    NAME@STAGE      the latest version in that stage: production, staging, archived or none
    NAME@latest     the latest version, whatever its stage

A bare NAME means "what is serving now, else the newest": right after a first training nothing is in
production yet, and the version just trained is the one a user means; once a version is promoted, a bare
NAME follows production. ``parse_model_ref`` is the only parser; ``Registry.resolve`` turns a reference
into a version.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from modelyard.errors import InvalidInput
from modelyard.registry.tables import Stage
from modelyard.spec import NAME_PATTERN

LATEST = "latest"
SELECTORS = (*(stage.value for stage in Stage), LATEST)
SYNTAX = "expected NAME, NAME@VERSION, NAME@STAGE or NAME@latest"
_NUMBER = re.compile(r"^[+-]?\d+(\.\d*)?$")


@dataclass(frozen=True)
class ModelRef:
    """A registered version, by number, by stage, as the latest, or by default (see the module doc)."""

    name: str
    version: int | None = None
    stage: Stage | None = None
    latest: bool = False

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.stage is not None:
            return f"{self.name}@{self.stage.value}"
        return f"{self.name}@{LATEST}" if self.latest else self.name


def parse_model_ref(text: str) -> ModelRef:
    """The ModelRef ``text`` spells; InvalidInput naming what is wrong with it otherwise."""
    text = text.strip()
    if not text:
        raise InvalidInput(f"empty model reference: {SYNTAX}")
    name, separator, selector = text.partition("@")
    problem = f"invalid model reference {text!r}"
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(
            f"{problem}: the name {name!r} is not 1 to 63 lowercase letters, digits and '-', starting "
            "and ending with a letter or digit"
        )
    if not separator:
        return ModelRef(name)
    if not selector:
        raise InvalidInput(f"{problem}: nothing after '@'; {SYNTAX}")
    if "@" in selector:
        raise InvalidInput(f"{problem}: more than one '@'; {SYNTAX}")
    if _NUMBER.match(selector):
        if selector.isdigit() and int(selector) >= 1:
            return ModelRef(name, version=int(selector))
        raise InvalidInput(f"{problem}: a version is a positive integer (1, 2, ...), got {selector!r}")
    if selector == LATEST:
        return ModelRef(name, latest=True)
    if selector in SELECTORS:
        return ModelRef(name, stage=Stage(selector))
    close = difflib.get_close_matches(selector.lower(), SELECTORS, n=1, cutoff=0.5)
    hint = f"did you mean {name}@{close[0]}? " if close else ""
    raise InvalidInput(
        f"{problem}: {selector!r} is neither a version (a positive integer) nor a stage; {hint}"
        f"use one of {', '.join(SELECTORS)}"
    )
