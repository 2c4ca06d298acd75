"""fingerprint_frame hashes content only; fingerprint_file hashes bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.data.fingerprint import fingerprint_file, fingerprint_frame
from modelyard.data.loading import read_file
from modelyard.errors import InvalidInput, NotFound


def sample() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sepal": [5.1, 4.9, np.nan, 6.3],
            "petals": [3, 1, 4, 1],
            "colour": ["red", None, "blue", "NA"],
            "wild": [True, False, True, True],
            "species": ["setosa", "setosa", "virginica", "versicolor"],
        }
    )


def test_format_is_pinned() -> None:
    # The pipeline's cache and every bundle record this value: changing the encoding must be deliberate
    # (bump FINGERPRINT_VERSION), never a side effect of a refactor or a pandas upgrade.
    assert fingerprint_frame(sample()) == "fe3b51a32f9296e4855976c9e9dc06aa8dc90cc1e53c8b9e4314210679c12298"


def test_same_data_read_twice_from_csv_and_from_parquet_has_one_fingerprint(tmp_path: Path) -> None:
    frame = sample()
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "elsewhere.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet", index=False)

    from_csv = fingerprint_frame(read_file(tmp_path / "a.csv"))

    assert from_csv == fingerprint_frame(read_file(tmp_path / "elsewhere.csv"))
    assert from_csv == fingerprint_frame(read_file(tmp_path / "a.parquet"))
    assert from_csv == fingerprint_frame(frame)


def test_index_and_storage_width_do_not_matter() -> None:
    frame = sample()
    reindexed = frame.set_axis([10, 20, 30, 40])
    narrow = frame.astype({"petals": "int16", "sepal": "float32"}).astype({"sepal": "float64"})
    nullable = frame.astype({"petals": "Int64", "wild": "boolean", "colour": object})

    assert fingerprint_frame(reindexed) == fingerprint_frame(frame)
    assert fingerprint_frame(frame.astype({"petals": "int16"})) == fingerprint_frame(frame)
    assert fingerprint_frame(narrow) != fingerprint_frame(frame)  # float32 rounding changed the values
    assert fingerprint_frame(nullable) == fingerprint_frame(frame)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda f: f.assign(sepal=[5.1, 4.9, np.nan, 6.4]), id="one-float-cell"),
        pytest.param(lambda f: f.assign(sepal=[5.1, 4.9, 0.0, 6.3]), id="missing-to-zero"),
        pytest.param(lambda f: f.assign(colour=["red", "", "blue", "NA"]), id="missing-to-empty-string"),
        pytest.param(lambda f: f.assign(wild=[True, False, True, False]), id="one-bool-cell"),
        pytest.param(lambda f: f.rename(columns={"petals": "petal"}), id="renamed-column"),
        pytest.param(lambda f: f[list(reversed(f.columns))], id="reordered-columns"),
        pytest.param(lambda f: f.iloc[::-1], id="reordered-rows"),
        pytest.param(lambda f: f.iloc[:3], id="dropped-row"),
        pytest.param(lambda f: f.astype({"petals": "float64"}), id="int-became-float"),
        pytest.param(lambda f: f.astype({"colour": "category"}), id="string-became-category"),
    ],
)
def test_any_change_of_content_changes_the_fingerprint(
    change: Callable[[pd.DataFrame], pd.DataFrame],
) -> None:
    assert fingerprint_frame(change(sample())) != fingerprint_frame(sample())


def test_value_boundaries_and_python_types_stay_distinct() -> None:
    assert fingerprint_frame(pd.DataFrame({"a": ["ab", "c"]})) != fingerprint_frame(
        pd.DataFrame({"a": ["a", "bc"]})
    )
    mixed = [pd.Series([1, "x"], dtype=object), pd.Series(["1", "x"], dtype=object)]
    mixed.append(pd.Series([True, "x"], dtype=object))
    mixed.append(pd.Series([1.0, "x"], dtype=object))
    assert len({fingerprint_frame(pd.DataFrame({"a": column})) for column in mixed}) == 4


def test_dates_and_durations_are_fingerprinted() -> None:
    dates = pd.DataFrame(
        {"when": pd.to_datetime(["2024-01-01", None]), "took": pd.to_timedelta(["1h", "2h"])}
    )
    shifted = dates.assign(when=pd.to_datetime(["2024-01-02", None]))
    in_utc = dates.assign(when=dates["when"].dt.tz_localize("UTC"))

    assert fingerprint_frame(dates) == fingerprint_frame(dates.copy())
    assert len({fingerprint_frame(dates), fingerprint_frame(shifted), fingerprint_frame(in_utc)}) == 3


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=1, max_size=8),
    position=st.integers(min_value=0),
    replacement=st.one_of(st.none(), st.text(max_size=6)),
)
def test_changing_one_string_cell_changes_the_fingerprint(
    values: list[str | None], position: int, replacement: str | None
) -> None:
    position %= len(values)
    changed = [*values]
    changed[position] = replacement
    same = values[position] == replacement
    assert (
        fingerprint_frame(pd.DataFrame({"a": values})) == fingerprint_frame(pd.DataFrame({"a": changed}))
    ) == same


def test_fingerprint_file_streams_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    content = np.random.default_rng(1).bytes(3 * 1024 * 1024 + 17)
    path.write_bytes(content)

    assert fingerprint_file(path) == hashlib.sha256(content).hexdigest()


def test_fingerprint_file_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"file not found: .*missing\.csv"):
        fingerprint_file(tmp_path / "missing.csv")
    with pytest.raises(InvalidInput, match=r"cannot fingerprint a directory: "):
        fingerprint_file(tmp_path)
