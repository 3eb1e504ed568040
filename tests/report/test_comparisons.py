"""The report's comparisons section on a fabricated `pipeline compare` JSON (TEST DATA)."""

from __future__ import annotations

import json
import statistics

import pytest

from pipeline.report import comparisons

# TEST DATA: made-up per-round rates of a reference and a variant, 3 rounds.
REF_PREFILL, REF_DECODE = [100.0, 90.0, 110.0], [10.0, 9.0, 11.0]
VAR_PREFILL, VAR_DECODE = [120.0, 72.0, 110.0], [5.0, 4.5, 5.5]


def fake_comparison(tokens_agree: bool | None = True) -> dict:
    """TEST DATA in the shape pipeline/study/compare.py writes; the ratios computed here by hand."""
    ratio_rounds = {"prefill": [v / r for v, r in zip(VAR_PREFILL, REF_PREFILL, strict=True)],
                    "decode": [v / r for v, r in zip(VAR_DECODE, REF_DECODE, strict=True)]}
    return {
        "schema_version": 1, "name": "ranks", "question": "Do 2 ranks x 1 thread match 1 rank x 2 threads?",
        "rounds": 3, "metric": "tokens_per_s", "units": {"prefill": "tok/s", "decode": "tok/s"},
        "run": {"prompt_len": 128, "gen_len": 32, "iters": 3, "warmup": 1},
        "variants": [
            {"name": "standard_1x2", "label": "1 rank x 2 threads, standard", "kind": "bench",
             "settings": {}, "reference": None,
             "rounds": {"prefill": REF_PREFILL, "decode": REF_DECODE},
             "median": {"prefill": 100.0, "decode": 10.0}},
            {"name": "standard_2x1", "label": "2 ranks x 1 thread, standard", "kind": "bench",
             "settings": {}, "reference": "standard_1x2",
             "rounds": {"prefill": VAR_PREFILL, "decode": VAR_DECODE},
             "median": {"prefill": 110.0, "decode": 5.0},
             "ratio_rounds": ratio_rounds,
             "ratio": {k: statistics.median(v) for k, v in ratio_rounds.items()},
             "tokens_agree": tokens_agree},
        ],
        "machine": {"cpu_model": "Test CPU", "cores": 2, "hostname": "testhost"},
    }


def test_records_hold_each_variants_rates_and_ratios(tmp_path):
    path = tmp_path / "ranks.json"
    path.write_text(json.dumps(fake_comparison()))
    ref, var = comparisons.records(comparisons.load([str(path)]))
    assert ref["reference"] is None and ref["prefill_ratio"] is None and ref["prefill_rounds"] == REF_PREFILL
    assert var["comparison"] == "ranks" and var["reference"] == "standard_1x2"
    assert var["prefill_ratio_rounds"] == pytest.approx([1.2, 0.8, 1.0])
    assert var["prefill_ratio"] == pytest.approx(1.0) and var["decode_ratio"] == pytest.approx(0.5)
    assert var["decode_unit"] == "tok/s" and var["tokens_agree"] is True


@pytest.mark.parametrize("agree, shown", [(True, "yes"), (False, "**no**"), (None, "—")])
def test_section_renders_one_table_row_per_variant(agree, shown):
    lines = comparisons.section([fake_comparison(agree)])
    assert "### ranks: Do 2 ranks x 1 thread match 1 rank x 2 threads?" in lines
    assert ("| 2 ranks x 1 thread, standard | 1 rank x 2 threads, standard | 120 / 72.0 / 110 "
            "| 5.00 / 4.50 / 5.50 | ×1.00 (1.20 / 0.800 / 1.00) | ×0.500 (0.500 / 0.500 / 0.500) "
            f"| {shown} |") in lines
    assert ("| 1 rank x 2 threads, standard | — | 100 / 90.0 / 110 | 10.0 / 9.00 / 11.0 | — | — "
            "| (reference) |") in lines
    assert ("3 rounds; each run: prompt 128 tokens, 32 decode steps, 3 timed iterations after 1 warm-up. "
            "Machine: Test CPU, 2 cores, testhost.") in lines
    assert not any("met**" in line or "target" in line for line in lines)  # states, grades nothing


def test_load_names_the_file_that_is_not_a_comparison(tmp_path):
    path = tmp_path / "bogus.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="bogus.json: not a `pipeline compare` result"):
        comparisons.load([str(path)])
    assert comparisons.section([]) == []
