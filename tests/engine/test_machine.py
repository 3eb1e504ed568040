"""What the bench records about how its weights are mapped (pipeline.engine.machine)."""

from __future__ import annotations

import numpy as np

from model_export.reader import open_export
from pipeline.engine.machine import huge_page_share

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
