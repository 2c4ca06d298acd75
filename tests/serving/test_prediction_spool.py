"""The spool's own bookkeeping: bounded size, order kept, replayed lines reclaimed, torn tails cut, slots."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.serving.prediction_log.spool import SPOOL_SLOTS, Spool


def numbered(count: int) -> list[bytes]:
    return [f'{{"n":{index:04d}}}\n'.encode() for index in range(count)]  # 11 bytes each


def test_the_spool_compacts_its_replayed_head_to_make_room(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    lines = numbered(12)
    assert spool.append(lines) == 9  # 99 bytes fit, the rest does not
    read, offset = spool.read(4)
    assert read == [line.rstrip(b"\n") for line in lines[:4]]
    spool.advance(offset)
    assert spool.pending == 55
    # No room at the end: the replayed head is dropped (by an atomic rewrite) and the new lines fit.
    assert spool.append(lines[9:12]) == 3
    assert (spool.offset, spool.size) == (0, 88)
    assert spool.path.read_bytes() == b"".join(lines[4:12])
    read, offset = spool.read(100)
    spool.advance(offset)
    assert len(read) == 8 and spool.pending == 0 and spool.path.read_bytes() == b""
    spool.close()


def test_a_torn_last_line_is_cut_when_the_spool_is_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b"".join(numbered(2)) + b'{"n":00')
    with caplog.at_level("WARNING", logger="modelyard.serving.prediction_log"):
        spool = Spool(tmp_path, max_bytes=1000)
    assert f"prediction spool {path}: dropping 7 bytes of a torn last line" in caplog.text
    assert (spool.pending, path.read_bytes()) == (22, b"".join(numbered(2)))
    assert spool.append(numbered(3)[2:]) == 1  # appends start on a fresh line
    assert spool.read(10)[0] == [line.rstrip(b"\n") for line in numbered(3)]
    spool.close()


def test_a_line_with_no_end_is_handed_over_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    spool.append([b"no newline at all"])  # only a bug could write this; replay must still move on
    assert spool.read(10) == ([b"no newline at all"], spool.size)
    spool.close()


def test_servers_sharing_a_folder_take_the_first_free_slot(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, max_bytes=1000), Spool(tmp_path, max_bytes=1000)
    assert (first.path.name, second.path.name) == ("predictions.jsonl", "predictions-1.jsonl")
    first.close()
    third = Spool(tmp_path, max_bytes=1000)  # the first slot is free again: its spool is picked up
    assert third.path.name == "predictions.jsonl"
    second.close()
    third.close()


def test_a_folder_whose_slots_are_all_held_is_refused_by_name(tmp_path: Path) -> None:
    held = [Spool(tmp_path, max_bytes=1000) for _ in range(SPOOL_SLOTS)]
    try:
        with pytest.raises(OSError, match=f"all {SPOOL_SLOTS} spool slots in {tmp_path} are held"):
            Spool(tmp_path, max_bytes=1000)
    finally:
        for spool in held:
            spool.close()
