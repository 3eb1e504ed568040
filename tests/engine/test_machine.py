"""What the bench records about how its weights are mapped (pipeline.engine.machine)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from model_export.reader import open_export
from pipeline.engine import machine
from pipeline.engine.machine import REFOLD_BELOW, fold_into_huge_pages, huge_page_share

SMAPS = """\
7f0000000000-7f0000400000 r--s 00000000 fe:00 11 /data/ex/layer000.mlp.bin
Rss:                4096 kB
FilePmdMapped:      2048 kB
7f0000400000-7f0000500000 r--s 00000000 fe:00 12 /data/ex/embed.bin
Rss:                 100 kB
FilePmdMapped:         0 kB
7f0000500000-7f0000600000 r--s 00000000 fe:00 13 /data/other/embed.bin
Rss:                 900 kB
FilePmdMapped:       900 kB
7f0000580000-7f0000590000 r--s 00000000 fe:00 14 /data/ex-old/embed.bin
Rss:                 700 kB
FilePmdMapped:       700 kB
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
Rss:                  64 kB
FilePmdMapped:         0 kB
"""


def test_share_counts_only_the_mappings_under_the_path(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    assert huge_page_share("/data/ex", smaps) == 2048 / (4096 + 100)  # not /data/ex-old
    assert huge_page_share("/data/ex/", smaps) == 2048 / (4096 + 100)
    assert huge_page_share("/data/other/embed.bin", smaps) == 1.0
    assert huge_page_share("/data/none", smaps) is None
    assert huge_page_share("/data/ex", tmp_path / "no-smaps") is None


def test_share_of_a_read_export_is_a_fraction(synthetic_tiny_export):
    export = open_export(synthetic_tiny_export)
    assert int(export.lm_head().view(np.uint8).max()) >= 0  # fault the pages in
    share = huge_page_share(synthetic_tiny_export)
    assert share is not None and 0.0 <= share <= 1.0


@pytest.mark.parametrize("shares, dropped", [((0.5, 0.97), True), ((REFOLD_BELOW, None), False),
                                              ((None, None), False)])
def test_fold_drops_and_rereads_only_files_in_small_pages(tmp_path, monkeypatch, shares, dropped):
    """Under REFOLD_BELOW of 2 MiB pages the files leave the page cache and are read again; at or
    over it (or where smaps says nothing) they are left as they are."""
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for f in files:
        f.write_bytes(os.urandom(3 * 4096 + 5))
    seen, advised = iter(shares), []
    monkeypatch.setattr(machine, "huge_page_share", lambda under: next(seen))
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: advised.append(advice))
    before, after = fold_into_huge_pages(files, tmp_path)
    assert advised == ([os.POSIX_FADV_DONTNEED] * 2 if dropped else [])
    assert (before, after) == (shares if dropped else (shares[0], shares[0]))


def test_fold_rereads_a_freshly_written_file_in_2mib_pages(tmp_path):
    """A file written 4 KiB at a time sits in the page cache in small folios, dirty: the fold
    writes it back, drops it and reads it in through the advised map (Linux 6.x, ext4 or xfs: in
    2 MiB folios). Without the write-back the dirty pages stayed and the share stayed 0. The data
    is unchanged."""
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    f = tmp_path / "w.bin"
    with open(f, "wb") as out:
        for i in range(0, data.size, 4096):
            out.write(data[i:i + 4096].tobytes())
    before, after = fold_into_huge_pages([f], f)
    if before is None:
        pytest.skip("no /proc/self/smaps here: the share cannot be read")
    if before >= REFOLD_BELOW:  # this kernel's writes made large folios: nothing to drop
        assert after == before
    else:
        assert after is not None and after > before
    assert np.array_equal(np.fromfile(f, np.uint8), data)
