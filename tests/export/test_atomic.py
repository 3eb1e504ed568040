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


# --- writers killed outright (SIGKILL): what they leave, and the next writer's clean-up -------

KILLED_EXPORT = """
import sys, time
from pathlib import Path
from model_export.export import export_checkpoint

def progress(msg):  # after the first layer's files: tell the parent, then wait to be killed
    if msg.startswith("layer 1/"):
        Path(sys.argv[3]).write_text("mid-write")
        time.sleep(600)

export_checkpoint(sys.argv[1], sys.argv[2], dtype="int8", progress=progress)
"""


def test_export_killed_mid_write_leaves_nothing_the_next_one_trips_over(synthetic_tiny_checkpoint,
                                                                       tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from model_export.export import export_checkpoint
    from model_export.reader import open_export

    out, marker = tmp_path / "export", tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(synthetic_tiny_checkpoint),
                              str(out), str(marker)], cwd=tmp_path)
    try:
        while not marker.exists():  # a poll, not a timed assertion: the child's own pace
            assert child.poll() is None, "the export ended before it was killed"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".export.partial-")]
    assert len(left) == 1 and (left[0] / "layer000.mlp.bin").is_file()  # killed mid-write indeed
    assert f"-{child.pid}-" in left[0].name and not out.exists()
    export_checkpoint(synthetic_tiny_checkpoint, out, dtype="int8", progress=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "marker"]
    assert open_export(out, verify=True).dtype_name == "int8"


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from model_export.atomic import _owner, remove_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process (until reused, when its leftovers just stay)
    host = _owner().split("-")[0]
    names = {
        f".out.partial-{host}-{dead.pid}-0123abcd": True,  # dead writer: removed
        f".out.old-{host}-{dead.pid}-0123abcd": True,
        f".out.{host}-{dead.pid}-k3x_9abc.tmp": True,
        f".out.partial-{host}-{os.getpid()}-0123abcd": False,  # live writer (this process): kept
        f".out.partial-otherhost-{dead.pid}-0123abcd": False,  # another host: cannot ask, kept
        ".out.partial-0123abcd": False,  # the old naming, no pid: kept
        f".outer.partial-{host}-{dead.pid}-0123abcd": False,  # another target's
    }
    for name in names:
        (tmp_path / name).mkdir() if "partial" in name or "old" in name else (tmp_path / name).write_text("")
    removed = remove_stale(tmp_path / "out")
    assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)
    with atomic_directory(tmp_path / "out") as tmp:  # a live writer's partial is left to it
        assert f"-{os.getpid()}-" in tmp.name
    assert (tmp_path / f".out.partial-{host}-{os.getpid()}-0123abcd").is_dir()


def test_zombie_writer_counts_as_dead(tmp_path):
    import signal
    import subprocess
    import sys

    from model_export.atomic import _running

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert _running(child.pid)
        child.send_signal(signal.SIGKILL)
        os_wait_until_zombie(child.pid)
        assert not _running(child.pid)  # killed, not yet reaped by its parent
    finally:
        child.kill()
        child.wait()


def os_wait_until_zombie(pid: int) -> None:
    """Block until process `pid` has exited (it stays a zombie: waitid with WNOWAIT does not reap)."""
    import os

    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
