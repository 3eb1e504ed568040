"""ext.hugepages: copies packed into one 2 MiB-aligned mapping advised for huge pages."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from ext import hugepages


def vm_flags_of(address: int) -> list[str]:
    """The VmFlags of the mapping of this process holding `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_copies_hold_the_values_packed_and_aligned():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(-127, 128, (300, 77), dtype=np.int8).T,  # a transposed view
              rng.standard_normal((5, 3)).astype(np.float32), np.zeros((0, 4), np.uint16),
              rng.integers(0, 2**16, (1000, 9), dtype=np.uint16)]
    out = hugepages.copies(arrays)
    for a, c in zip(arrays, out, strict=True):
        assert c.dtype == a.dtype and c.shape == a.shape and c.flags.c_contiguous
        np.testing.assert_array_equal(c, a)
    assert out[0].ctypes.data % hugepages.HUGE_PAGE == 0
    starts = [c.ctypes.data for c in out if c.size]  # an empty copy's address is numpy's choice
    assert all(s % hugepages.ALIGN == 0 for s in starts)
    packed = sum(a.nbytes for a in arrays) + hugepages.ALIGN * len(out)  # one after another
    assert starts == sorted(starts) and starts[-1] - starts[0] < packed
    out[1][0, 0] = 42.0  # a private, writable copy: the source is untouched
    assert arrays[1][0, 0] != 42.0


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="MADV_HUGEPAGE is Linux's")
def test_copies_lie_in_a_mapping_advised_for_huge_pages():
    (c,) = hugepages.copies([np.ones((1024, 2048), np.int8)])
    assert "hg" in vm_flags_of(c.ctypes.data)  # MADV_HUGEPAGE was applied to this mapping
    assert hugepages.copies([np.zeros(0, np.int8)])[0].size == 0
