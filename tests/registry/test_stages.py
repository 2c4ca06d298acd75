"""Stages: one production version per name, promotion, rollback chains, manual stage changes."""

from __future__ import annotations

import pytest

from modelyard.errors import Conflict, InvalidInput, NotFound
from modelyard.registry import Registry, Stage


def stages(registry: Registry, name: str = "iris") -> dict[int, str]:
    return {record.version: record.stage.value for record in registry.list_versions(name)}


@pytest.fixture
def four_versions(publish) -> None:
    for _ in range(4):
        publish("iris")


@pytest.mark.usefixtures("four_versions")
def test_promote_archives_the_previous_production_version(registry: Registry) -> None:
    first = registry.promote("iris", 1)
    assert first.stage is Stage.PRODUCTION and first.promoted_at is not None
    second = registry.promote("iris", 2)
    assert second.version == 2 and second.stage is Stage.PRODUCTION
    assert stages(registry) == {1: "archived", 2: "production", 3: "staging", 4: "staging"}


@pytest.mark.usefixtures("four_versions")
def test_promoting_the_production_version_again_changes_nothing(registry: Registry) -> None:
    promoted = registry.promote("iris", 2)
    again = registry.promote("iris", 2)
    assert again == promoted
    # ...and adds no step to the rollback chain.
    registry.promote("iris", 3)
    assert registry.rollback("iris").version == 2
    with pytest.raises(Conflict, match="no version was in production before iris@2"):
        registry.rollback("iris")


@pytest.mark.usefixtures("four_versions")
def test_an_archived_version_can_be_promoted_again(registry: Registry) -> None:
    registry.promote("iris", 1)
    registry.promote("iris", 2)
    assert registry.promote("iris", 1).stage is Stage.PRODUCTION
    assert stages(registry) == {1: "production", 2: "archived", 3: "staging", 4: "staging"}


@pytest.mark.usefixtures("four_versions")
def test_rollbacks_walk_back_through_earlier_production_versions(registry: Registry) -> None:
    for version in (1, 2, 4):
        registry.promote("iris", version)
    restored = registry.rollback("iris")
    assert restored.version == 2 and restored.stage is Stage.PRODUCTION
    assert stages(registry) == {1: "archived", 2: "production", 3: "staging", 4: "archived"}
    assert registry.rollback("iris").version == 1
    assert stages(registry) == {1: "production", 2: "archived", 3: "staging", 4: "archived"}
    with pytest.raises(
        Conflict, match="cannot roll back model 'iris': no version was in production before iris@1"
    ):
        registry.rollback("iris")
    production = registry.production("iris")
    assert production is not None and production.version == 1


@pytest.mark.usefixtures("four_versions")
def test_rollback_follows_history_not_version_numbers(registry: Registry) -> None:
    for version in (3, 1, 3, 2):
        registry.promote("iris", version)
    assert [registry.rollback("iris").version for _ in range(3)] == [3, 1, 3]
    with pytest.raises(Conflict, match="before iris@3"):
        registry.rollback("iris")


@pytest.mark.usefixtures("four_versions")
def test_a_promotion_after_a_rollback_starts_from_the_restored_version(registry: Registry) -> None:
    for version in (1, 2, 3):
        registry.promote("iris", version)
    assert registry.rollback("iris").version == 2
    registry.promote("iris", 4)
    # The rolled-back 3 is no longer part of the chain: 4 -> 2 -> 1.
    assert [registry.rollback("iris").version for _ in range(2)] == [2, 1]


@pytest.mark.usefixtures("four_versions")
def test_rollback_needs_a_production_version(registry: Registry) -> None:
    with pytest.raises(Conflict, match="cannot roll back model 'iris': no version is in production"):
        registry.rollback("iris")
    with pytest.raises(NotFound, match="model 'wine' not found"):
        registry.rollback("wine")


@pytest.mark.usefixtures("four_versions")
def test_set_stage_moves_a_version_and_production_means_promote(registry: Registry) -> None:
    assert registry.set_stage("iris", 3, "none").stage is Stage.NONE
    assert registry.set_stage("iris", 3, Stage.ARCHIVED).stage is Stage.ARCHIVED
    registry.set_stage("iris", 1, "production")
    registry.set_stage("iris", 2, "production")
    assert stages(registry) == {1: "archived", 2: "production", 3: "archived", 4: "staging"}


@pytest.mark.usefixtures("four_versions")
def test_withdrawing_the_production_version_takes_it_out_of_the_rollback_chain(registry: Registry) -> None:
    for version in (1, 2, 3):
        registry.promote("iris", version)
    registry.set_stage("iris", 3, "archived")  # e.g. pulled for a bug
    assert registry.production("iris") is None
    with pytest.raises(Conflict, match="no version is in production"):
        registry.rollback("iris")
    registry.promote("iris", 4)
    assert registry.rollback("iris").version == 2  # not the withdrawn 3


@pytest.mark.usefixtures("four_versions")
def test_stage_changes_name_what_is_wrong(registry: Registry) -> None:
    with pytest.raises(NotFound, match=r"model iris@9 not found \(the latest version is iris@4\)"):
        registry.promote("iris", 9)
    with pytest.raises(NotFound, match="model 'wine' not found"):
        registry.promote("wine", 1)
    with pytest.raises(NotFound, match=r"model iris@0 not found"):
        registry.set_stage("iris", 0, "archived")
    with pytest.raises(
        InvalidInput, match="unknown stage 'live': use one of none, staging, production, archived"
    ):
        registry.set_stage("iris", 1, "live")


def test_publishing_straight_to_production_archives_the_previous_one(registry: Registry, publish) -> None:
    publish("iris", stage="production")
    second = publish("iris", stage="production")
    assert second.stage is Stage.PRODUCTION and second.promoted_at is not None
    assert stages(registry) == {1: "archived", 2: "production"}
    assert registry.rollback("iris").version == 1


def test_names_have_separate_production_versions(registry: Registry, publish) -> None:
    publish("iris")
    publish("wine")
    registry.promote("iris", 1)
    registry.promote("wine", 1)
    assert stages(registry, "iris") == {1: "production"}
    assert stages(registry, "wine") == {1: "production"}
