"""Packed prediction-log columns: what goes in comes out, and bytes that are no packed columns are named."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from modelyard.registry.packed import (
    MAGIC,
    PackedError,
    logged_columns,
    pack_columns,
    pack_matrix,
    pack_row_blocks,
    unpack_columns,
)


def test_columns_round_trip_whatever_their_float_type_and_layout() -> None:
    matrix = np.arange(12, dtype="float64").reshape(4, 3)  # columns of a row-major matrix are strided
    columns = {"a": matrix[:, 0], "é": matrix[:, 2], "p": np.array([0.5, 0.25, 1, 0], dtype="float32")}
    unpacked = unpack_columns(pack_columns(columns, 4))
    assert list(unpacked) == ["a", "é", "p"]
    for name, column in columns.items():
        assert unpacked[name].dtype == np.float64
        np.testing.assert_array_equal(unpacked[name], column)
    assert unpack_columns(pack_columns({}, 4)) == {}


def test_logged_columns_join_json_and_packed_with_none_for_missing_and_non_finite_values() -> None:
    packed = pack_columns({"x": np.array([1.5, np.nan, np.inf, -np.inf])}, 4)
    assert logged_columns({"colour": ["red", None, "blue", "red"]}, packed) == {
        "colour": ["red", None, "blue", "red"],
        "x": [1.5, None, None, None],
    }
    assert logged_columns({"x": [1, None]}, None) == {"x": [1, None]}
    assert logged_columns(None, None) == {}
    assert logged_columns(None, memoryview(packed)) == {"x": [1.5, None, None, None]}


def test_a_column_of_another_length_or_shape_is_refused_by_name() -> None:
    with pytest.raises(PackedError, match=r"column 'b' has shape \(2,\), expected \(3,\)"):
        pack_columns({"a": np.zeros(3), "b": np.zeros(2)}, 3)
    with pytest.raises(PackedError, match=r"column 'm' has shape \(3, 1\), expected \(3,\)"):
        pack_columns({"m": np.zeros((3, 1))}, 3)


def header(names: bytes) -> bytes:
    return MAGIC + struct.pack("<I", len(names)) + names


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"x": [1.0]}', "does not start with the packed-columns magic"),
        (MAGIC, "does not start with the packed-columns magic"),
        (header(b"[not json"), "unreadable header"),
        (header(b'{"x": 1}'), "header is no list of column names"),
        (header(b"[1, 2]"), "header is no list of column names"),
        (header(b'["a","b"]') + b"\x00" * 24, "24 bytes do not split into 2 columns"),
        (header(b"[]") + b"\x00" * 8, "8 bytes do not split into 0 columns"),
    ],
    ids=["json", "magic-only", "bad-header", "header-object", "header-numbers", "ragged", "no-names"],
)
def test_bytes_that_are_no_packed_columns_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(PackedError, match=message):
        unpack_columns(data)


def test_a_matrix_packs_in_one_copy_like_its_columns() -> None:
    matrix = np.arange(6, dtype="float32").reshape(3, 2)
    assert pack_matrix(["a", "b"], matrix) == pack_columns({"a": matrix[:, 0], "b": matrix[:, 1]}, 3)
    with pytest.raises(PackedError, match=r"a matrix of shape \(3, 2\) has no 3 columns"):
        pack_matrix(["a", "b", "c"], matrix)
    with pytest.raises(PackedError, match=r"a matrix of shape \(3,\) has no 1 columns"):
        pack_matrix(["a"], np.zeros(3))


def test_row_blocks_of_a_stacked_matrix_pack_as_each_block_alone() -> None:
    matrix = np.arange(12, dtype="float32").reshape(6, 2)
    starts = [1, 2, 5, 6]  # rows 1, 2 to 4 and 5; row 0 is another batch's
    blocks = pack_row_blocks(["a", "b"], matrix, starts)
    assert blocks == [
        pack_matrix(["a", "b"], matrix[1:2]),
        pack_matrix(["a", "b"], matrix[2:5]),
        pack_matrix(["a", "b"], matrix[5:6]),
    ]
    assert unpack_columns(blocks[1])["b"].tolist() == [5.0, 7.0, 9.0]
    assert pack_row_blocks(["a", "b"], matrix, [3]) == []
    assert pack_row_blocks(["a", "b"], matrix, []) == []
    with pytest.raises(PackedError, match=r"a matrix of shape \(6, 2\) has no 1 columns"):
        pack_row_blocks(["a"], matrix, [0, 6])
