"""Model references: the syntax (every bad form's message) and what each form resolves to."""

from __future__ import annotations

import re

import pytest

from modelyard.errors import InvalidInput, NotFound
from modelyard.registry import ModelRef, Registry, Stage, parse_model_ref

from .conftest import Publish


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iris", ModelRef("iris")),
        (" iris ", ModelRef("iris")),
        ("iris@3", ModelRef("iris", version=3)),
        ("iris@production", ModelRef("iris", stage=Stage.PRODUCTION)),
        ("iris@staging", ModelRef("iris", stage=Stage.STAGING)),
        ("iris@archived", ModelRef("iris", stage=Stage.ARCHIVED)),
        ("iris@none", ModelRef("iris", stage=Stage.NONE)),
        ("iris@latest", ModelRef("iris", latest=True)),
        ("credit-risk-2@12", ModelRef("credit-risk-2", version=12)),
    ],
)
def test_each_form_parses_and_prints_back(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected
    assert str(parse_model_ref(text)) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty model reference: expected NAME, NAME@VERSION, NAME@STAGE or NAME@latest"),
        ("   ", "empty model reference: expected NAME, NAME@VERSION, NAME@STAGE or NAME@latest"),
        (
            "Iris",
            "invalid model reference 'Iris': the name 'Iris' is not 1 to 63 lowercase letters, digits and "
            "'-', starting and ending with a letter or digit",
        ),
        ("@3", "invalid model reference '@3': the name '' is not 1 to 63 lowercase letters"),
        ("iris-@3", "invalid model reference 'iris-@3': the name 'iris-' is not 1 to 63"),
        ("ir is", "invalid model reference 'ir is': the name 'ir is' is not"),
        ("iris@", "invalid model reference 'iris@': nothing after '@'; expected NAME, NAME@VERSION"),
        ("iris@2@3", "invalid model reference 'iris@2@3': more than one '@'; expected NAME"),
        ("iris@0", "invalid model reference 'iris@0': a version is a positive integer (1, 2, ...), got '0'"),
        ("iris@-1", "'iris@-1': a version is a positive integer (1, 2, ...), got '-1'"),
        ("iris@1.5", "'iris@1.5': a version is a positive integer (1, 2, ...), got '1.5'"),
        (
            "iris@prod",
            "invalid model reference 'iris@prod': 'prod' is neither a version (a positive integer) nor a "
            "stage; did you mean iris@production? use one of none, staging, production, archived, latest",
        ),
        (
            "iris@Staging",
            "'Staging' is neither a version (a positive integer) nor a stage; did you mean iris@staging?",
        ),
        ("iris@v2", "'iris@v2': 'v2' is neither a version (a positive integer) nor a stage; use one of none"),
    ],
)
def test_every_bad_form_is_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_model_ref(text)


def test_a_bare_name_is_production_else_the_latest(registry: Registry, publish: Publish) -> None:
    with pytest.raises(NotFound, match="model 'iris' not found"):
        registry.resolve(parse_model_ref("iris"))
    for _ in range(3):
        publish("iris")
    assert registry.resolve(parse_model_ref("iris")).version == 3  # none in production: the latest
    registry.promote("iris", 2)
    assert registry.resolve(parse_model_ref("iris")).version == 2
    assert registry.resolve(parse_model_ref("iris@production")).version == 2
    assert registry.resolve(parse_model_ref("iris@latest")).version == 3
    assert registry.resolve(parse_model_ref("iris@staging")).version == 3
    assert registry.resolve(parse_model_ref("iris@1")).version == 1
    with pytest.raises(NotFound, match=r"model iris@7 not found \(the latest version is iris@3\)"):
        registry.resolve(parse_model_ref("iris@7"))
    with pytest.raises(NotFound, match="model 'iris' has no version in stage 'archived'"):
        registry.resolve(parse_model_ref("iris@archived"))
