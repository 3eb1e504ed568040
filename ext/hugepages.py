"""Private copies of weight arrays in one 2 MiB-aligned anonymous mapping advised for huge pages.

A decode step streams every weight byte once, so the pages it reads through matter: the export's
files are folded into 2 MiB page-cache folios (pipeline.engine.machine), but a copy numpy makes
(np.ascontiguousarray) lands in 4 KiB pages wherever it is under 4 MiB, or not 2 MiB-aligned
(numpy advises only the aligned interior of its allocations of 4 MiB or more). Reading the int8
o_proj row copies of the synthetic Qwen3-0.6B so took 1.30-1.58x as long as reading the mapped
export's same bytes; in one huge-page mapping 0.94-0.97x (docs/design-notes.md#huge-copies).
"""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 1 << 21
ALIGN = 64  # each copy starts on a cache line


def copies(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """C-contiguous copies of `arrays`, packed one after another into one private anonymous mapping
    whose start is 2 MiB-aligned and advised MADV_HUGEPAGE (where the platform has it). The
    mapping lives as long as any copy does (each copy's base holds it)."""
    sizes = [-(-a.nbytes // ALIGN) * ALIGN for a in arrays]
    total = sum(sizes)
    if total == 0:
        return [np.empty(a.shape, a.dtype) for a in arrays]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    area = mmap.mmap(-1, total + HUGE_PAGE, flags=flags)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; a no-op request where THP is off
        area.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(area, np.uint8)
    offset = -raw.ctypes.data % HUGE_PAGE
    out = []
    for a, size in zip(arrays, sizes, strict=True):
        view = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        out.append(view)
        offset += size
    return out
