"""The per-cell records (summary.json "cells" = summary.csv rows), the machine they ran on, the HF
baseline beside them, and a few rendered table lines; on fabricated runs (TEST DATA)."""

from __future__ import annotations

import pytest

from tests.report.fakes import matrix_runs
from tests.report.inputs import fake_baseline, fake_comparison, run_report, write_json


def test_csv_rows_are_the_summary_cells(tmp_path):
    summary, _, rows = run_report(tmp_path, matrix_runs(headwise_standard_np2_p16=180.0))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert [r["cell"] for r in rows] == [c["cell"] for c in summary["cells"]]
    row = next(r for r in rows if r["cell"] == "headwise_standard_np2_p16")
    cell = next(c for c in summary["cells"] if c["cell"] == "headwise_standard_np2_p16")
    assert float(row["prefill_tokens_per_s"]) == 180.0 == cell["prefill_tokens_per_s"]
    assert cell["prefill_speedup"] == pytest.approx(1.8) and cell["prefill_efficiency"] == pytest.approx(0.9)
    assert float(row["prefill_speedup"]) == pytest.approx(1.8)
    # the fakes' median prefill time is 16 tokens / 180 tokens/s
    assert cell["prefill_median_ms"] == pytest.approx(1e3 * 16 / 180)
    assert cell["prefill_comm_ms"] == pytest.approx(0.1e3 * 16 / 180)  # fakes: 10% of the time in MPI
    assert row["verify_ok"] == "True" and row["verify_reference"] == "headwise_standard_np1_p16"
    assert cell["peak_rss_mb_per_rank"] == "102.0;102.0"


def test_cell_tables_bold_the_fastest_and_show_scaling(tmp_path):
    _, text, _ = run_report(tmp_path, matrix_runs(headwise_standard_np2_p16=180.0))
    assert "| **headwise** | **standard** |" in text  # the fastest row of the 2-rank table
    assert "180 (×1.80, 90%)" in text  # tokens/s, speed-up and efficiency against 1 rank
    assert (tmp_path / "out" / "figures" / "throughput_p16.png").stat().st_size > 1000
    assert (tmp_path / "out" / "figures" / "cells_p16.png").stat().st_size > 1000
    assert "](figures/throughput_p16.png)" in text


def test_machine_names_the_vector_width_and_flags_a_mix(tmp_path):
    """Cells from CPUs of different SIMD width (an AVX-512 and an AVX2 VM) must not pass as one machine."""
    runs = matrix_runs()
    summary, text, _ = run_report(tmp_path / "same", runs)
    assert summary["machine"]["simd_lanes"] == [8] and summary["machine"]["differs"] == []
    assert "Test CPU, 2 cores, 8-lane float vectors (host testhost)" in text
    runs[0]["environment"]["simd_lanes"] = 16
    summary, text, _ = run_report(tmp_path / "mixed", runs)
    assert summary["machine"]["simd_lanes"] == [16, 8] and summary["machine"]["differs"] == ["simd_lanes"]
    assert "16 / 8 (differs between cells!)-lane float vectors" in text
    assert summary["machine"]["ranks_x_threads"] == ["1 x 2", "2 x 1"]


def test_oversubscribed_cells_are_marked(tmp_path):
    runs = matrix_runs()
    for r in runs:
        r["environment"]["oversubscribed"] = r["cell"]["nranks"] > 1
    summary, text, rows = run_report(tmp_path, runs)
    assert summary["machine"]["oversubscribed_cells"] == 4
    assert {r["oversubscribed"] for r in rows if r["nranks"] == "2"} == {"True"}
    assert "† marks oversubscribed cells" in text and "| sequence | standard † |" in text


def test_hf_baseline_beside_the_1_rank_cells(tmp_path):
    # our cells at 100 prefill / 10 decode tokens/s, the baseline at 50 / 5; the fastest ours at 2 ranks
    runs = matrix_runs(sequence_standard_np2_p16=120.0)
    path = write_json(tmp_path / "hf_p16.json", fake_baseline())
    summary, text, rows = run_report(tmp_path, runs, "--baseline", path)
    (b,) = summary["baselines"]
    assert b["prefill"]["tokens_per_s"] == 50.0 and b["threads"] == 2
    assert b["reference"] == {
        "cell": "headwise_standard_np1_p16",
        "same_prompt": True,
        "tokens_identical": True,
        "max_logits_diff": 0.0,
    }
    ours = b["ours"]["prefill"]
    assert ours["fastest_cell"] == "sequence_standard_np2_p16" and ours[
        "fastest_over_baseline"
    ] == pytest.approx(2.4)
    assert ours["fastest_1rank_cell"] == "headwise_standard_np1_p16"
    assert ours["fastest_1rank_over_baseline"] == pytest.approx(2.0)
    assert b["ours"]["decode"]["fastest_over_baseline"] == pytest.approx(2.4)
    assert text.count("| *HF transformers (torch)* | sdpa, 2 threads |") == 2  # 1-rank prefill and decode
    assert "Against headwise_standard_np1_p16: greedy tokens identical" in text
    assert len(rows) == 8  # the CSV stays one row per cell
    path = write_json(tmp_path / "hf_none.json", fake_baseline(available=False))
    summary, text, _ = run_report(tmp_path / "b", matrix_runs(), "--baseline", path)
    assert summary["baselines"] == [
        {
            "available": False,
            "name": "HF transformers (torch)",
            "reason": "torch/transformers not importable: No module named 'torch'",
        }
    ]
    assert "The HF transformers baseline did not run: torch/transformers not importable" in text
    assert "| *HF transformers (torch)* |" not in text


def test_a_baseline_with_another_prompt_is_not_compared(tmp_path):
    hf = fake_baseline()
    hf["output"]["prompt_ids"] = [1, 2, 3]
    summary, text, _ = run_report(tmp_path, matrix_runs(), "--baseline", write_json(tmp_path / "hf.json", hf))
    assert summary["baselines"][0]["reference"]["same_prompt"] is False
    assert "**Its prompt differs from headwise_standard_np1_p16's: not comparable.**" in text


def test_comparisons_are_passed_to_their_section(tmp_path):
    path = write_json(tmp_path / "dtype.json", fake_comparison())
    summary, text, _ = run_report(tmp_path, matrix_runs(), "--compare", path)
    assert [(r["comparison"], r["variant"], r["prefill_ratio"]) for r in summary["comparisons"]] == [
        ("dtype", "float32", None),
        ("dtype", "bfloat16", 0.5),
    ]
    assert "### dtype: Is bf16 faster?" in text
    summary, text, _ = run_report(tmp_path / "none", matrix_runs())
    assert summary["comparisons"] == [] and "### dtype" not in text
