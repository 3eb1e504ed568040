"""Atomic writes: a temporary file (or directory) beside the target, then a rename into place.

An interrupted run never leaves a file or a directory that looks complete. A run killed outright
(SIGKILL, the OOM killer) cannot clean up after itself, so every temporary name carries its
writer's host and pid, `.NAME.partial-HOST-PID-XXXXXXXX` (also `.old-`, and `.NAME.HOST-PID-XXXXXXXX.tmp`
for files): the next write of NAME removes the temporaries of writers on this host that are no
longer running, and leaves those of live writers (and of other hosts, which it cannot ask) alone.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _owner() -> str:
    """HOST-PID of this process, as it goes into temporary names (no '-' in the host part)."""
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


def _running(pid: int) -> bool:
    """Whether process `pid` on this host is alive (a zombie, killed but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_stale(target: str | Path) -> list[Path]:
    """Remove the temporaries of `target` left by dead writers on this host; return what went.

    Matches `.NAME.partial-HOST-PID-X`, `.NAME.old-HOST-PID-X` and `.NAME.HOST-PID-X.tmp`; a name
    without a HOST-PID (older versions wrote `.NAME.partial-X`) cannot be judged and stays.
    """
    target = Path(target).absolute()
    name, host = re.escape(target.name), _owner().split("-")[0]
    temporary = re.compile(rf"\.{name}\.(?:(?:partial|old)-(?P<h>[^-]+)-(?P<p>\d+)-[0-9a-f]{{8}}"
                           rf"|(?P<fh>[^-]+)-(?P<fp>\d+)-[a-z0-9_]+\.tmp)")
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return []
    removed = []
    for p in entries:
        m = temporary.fullmatch(p.name)
        if m is None or (m["h"] or m["fh"]) != host or _running(int(m["p"] or m["fp"])):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: object, indent: int = 2) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary directory beside `out`; when the block completes, it becomes `out`.

    An existing `out` (a former run's) is moved aside first and removed after the rename, so `out`
    is never a partial directory (only absent for the moment between the two renames). If the
    block raises, the temporary directory is removed and `out` is left as it was.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # a killed writer's partial directory (or moved-aside old one)
    tmp = out.parent / f".{out.name}.partial-{_owner()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its mode 0700 would become the finished directory's
    old = out.parent / f".{out.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if out.exists():
            os.rename(out, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, out)
    except BaseException:
        if old.exists():
            os.rename(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()
