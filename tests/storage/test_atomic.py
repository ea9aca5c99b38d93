"""`write_atomically`: a file's new content appears at once, through a dot-named temporary file that is
removed on any error; the fault point sits between the fsync and the rename."""

from __future__ import annotations

import pytest

from prismatic.storage.atomic import write_atomically


def test_writes_the_bytes_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out" / "rows.jsonl"
    assert write_atomically(target, b'{"id": 1}\n') == target
    assert target.read_bytes() == b'{"id": 1}\n'
    write_atomically(target, b"")
    assert target.read_bytes() == b""
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["rows.jsonl"]


def test_a_relative_path_is_written_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_atomically("features.parquet", b"PAR1")
    assert (tmp_path / "features.parquet").read_bytes() == b"PAR1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet"]


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "rows.jsonl"
    target.write_bytes(b"old")
    seen = {}

    def failing_replace(src, dst):
        seen["tmp"] = src
        raise OSError("disk full")

    monkeypatch.setattr("prismatic.storage.atomic.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, b"new")
    name = str(seen["tmp"]).rsplit("/", 1)[-1]
    assert name.startswith(".rows.jsonl.") and name.endswith(".tmp")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_the_temporary_file_is_complete_at_the_fault_point_and_sits_in_temp_dir(tmp_path, monkeypatch):
    """The store's layout: the temporary file beside the partition directory, which appears only at the rename."""
    table_dir = tmp_path / "pool"
    target = table_dir / "round=r001" / "part-0.parquet"
    seen = {}

    def at_fault_point(name):
        seen["name"] = name
        seen["files"] = {p.name: p.read_bytes() for p in table_dir.iterdir()}

    monkeypatch.setattr("prismatic.storage.atomic.fault_point", at_fault_point)
    write_atomically(target, b"PAR1 data PAR1", temp_dir=table_dir, fault="store.write:pool")
    assert seen["name"] == "store.write:pool"
    [(name, data)] = seen["files"].items()
    assert name.startswith(".round=r001.") and name.endswith(".tmp") and data == b"PAR1 data PAR1"
    assert target.read_bytes() == b"PAR1 data PAR1"
    assert sorted(p.name for p in table_dir.iterdir()) == ["round=r001"]


def test_an_interrupt_before_the_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr("prismatic.storage.atomic.fault_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "t" / "round=r002" / "part-0.parquet", b"x", temp_dir=tmp_path / "t",
                         fault="store.write:t")
    assert list((tmp_path / "t").iterdir()) == []
