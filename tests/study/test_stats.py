"""pipeline.study.stats against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.study.stats import logits_digest, timings, top1_margin


def test_timings_by_hand():
    t = timings([0.2, 0.4, 0.3], [1.0, 3.0, 2.0], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], prompt_len=8,
                gen_len=2, decode_extra={"comm_s": 0.5})
    p, d = t["prefill"], t["decode"]
    assert p["median_s"] == 0.3 and p["min_s"] == 0.2 and p["max_s"] == 0.4
    assert p["tokens_per_s"] == pytest.approx(8 / 0.3) and p["ms_per_token"] == pytest.approx(300 / 8)
    assert p["tokens_per_s_min"] == pytest.approx(8 / 0.4) and p["tokens_per_s_max"] == pytest.approx(8 / 0.2)
    assert p["std_s"] == pytest.approx(np.sqrt(((0.1 ** 2) + 0 + (0.1 ** 2)) / 3))
    assert d["median_s"] == 2.0 and d["tokens_per_s"] == 1.0 and d["comm_s"] == 0.5
    assert d["step_ms"] == pytest.approx({"p50": 350.0, "p90": 550.0, "max": 600.0})
    assert t["ttft_ms"] == pytest.approx(300.0)
    assert t["seed_metric"] == pytest.approx({"tokens": 24, "total_ms": 900.0, "ms_per_token": 37.5,
                                              "tokens_per_s": 24 / 0.9})


def test_logits_digest():
    logits = np.array([3.0, -4.0, 0.0, 7.0, 7.0, 1.0, 2.0, 0.5, 9.0, -1.0], np.float32)
    d = logits_digest(logits)
    assert d["first8"] == [3.0, -4.0, 0.0, 7.0, 7.0, 1.0, 2.0, 0.5]
    assert d["argmax"] == 8 and d["l2"] == pytest.approx(np.sqrt(9 + 16 + 49 + 49 + 1 + 4 + 0.25 + 81 + 1))


def test_top1_margin_is_the_gap_between_the_two_largest_logits():
    logits = np.array([0.5, 3.25, -1.0, 3.0, 2.0], np.float32)
    assert top1_margin(logits) == pytest.approx(0.25)
    assert top1_margin(np.array([1.0, 1.0, 0.0])) == 0.0  # a tie: no margin at all
