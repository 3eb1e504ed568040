"""model_export.atomic: an interrupted write leaves the old file or directory, never a partial one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_export.atomic import atomic_directory, save_npy_atomic, write_json_atomic


def test_interrupted_directory_leaves_the_old_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "new").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["old"]


def test_completed_directory_replaces_the_old_one(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file, not a directory")  # replaced as well
    with atomic_directory(out) as tmp:
        assert not out.is_dir() and tmp.parent == tmp_path
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "new").read_text() == "new"


def test_files_are_written_whole(tmp_path):
    write_json_atomic(tmp_path / "sub" / "a.json", {"x": [1, 2]}, indent=1)
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "sub" / "a.json").read_text() == '{\n "x": [\n  1,\n  2\n ]\n}\n'
    save_npy_atomic(tmp_path / "a.npy", np.arange(3.0))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "sub"]  # no temporaries left


def test_files_get_the_mode_open_would_give(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {})
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
