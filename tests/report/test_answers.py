"""The report's first screen as data (summary.json "answers" and "rankings") on fabricated runs whose
speeds the tests choose (TEST DATA), and the order of the rendered report."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.cells import CellId
from pipeline.report import cli
from tests.report.fakes import MATRIX, fake_run, matrix_runs, write_runs
from tests.report.inputs import run_report


def answer(summary: dict, phase: str, prompt_len: int = 16) -> dict:
    return next(a for a in summary["answers"] if (a["prompt_len"], a["phase"]) == (prompt_len, phase))


def test_fastest_cell_its_speedup_and_the_runner_up(tmp_path):
    # every 1-rank cell at 100 prefill tokens/s (decode a tenth of it); two 2-rank cells faster
    runs = matrix_runs(headwise_standard_np2_p16=180.0, sequence_online_softmax_np2_p16=150.0)
    summary, text, _ = run_report(tmp_path, runs)
    for phase, scale in (("prefill", 1.0), ("decode", 0.1)):
        a = answer(summary, phase)
        assert a["fastest"]["cell"] == "headwise_standard_np2_p16"
        assert a["fastest"]["tokens_per_s"] == pytest.approx(180.0 * scale)
        assert (a["fastest"]["nranks"], a["fastest"]["threads_per_rank"]) == (2, 1)
        assert a["one_rank_cell"] == "headwise_standard_np1_p16"
        assert a["speedup_over_1rank"] == pytest.approx(1.8)
        assert a["speedup_over_fastest_1rank"] == pytest.approx(1.8)
        assert a["runner_up"]["cell"] == "sequence_online_softmax_np2_p16"
        assert a["lead_pct"] == pytest.approx(20.0)
        # the fakes' runs spread 2% around the median: 180/1.02 > 150/0.98, the ranges do not overlap
        assert a["within_spread"] is False
        assert a["all_verified"] and a["cells_verified"] == a["cells_measured"] == 8
    assert [(a["prompt_len"], a["phase"]) for a in summary["answers"]] == [(16, "prefill"), (16, "decode")]
    assert summary["verification"]["ok"] and "**All 8 measured cells match.**" in text


def test_speedup_over_its_own_and_over_the_fastest_1_rank_cell(tmp_path):
    runs = matrix_runs(
        sequence_standard_np2_p16=102.0, sequence_standard_np1_p16=60.0, headwise_online_softmax_np1_p16=101.0
    )
    a = answer(run_report(tmp_path, runs)[0], "prefill")
    assert a["fastest"]["cell"] == "sequence_standard_np2_p16"
    assert a["speedup_over_1rank"] == pytest.approx(102.0 / 60.0)
    assert a["fastest_1rank_cell"] == "headwise_online_softmax_np1_p16"
    assert a["speedup_over_fastest_1rank"] == pytest.approx(102.0 / 101.0)
    assert a["runner_up"]["cell"] == "headwise_online_softmax_np1_p16"
    assert a["lead_pct"] == pytest.approx(100 * (102.0 / 101.0 - 1))
    assert a["within_spread"] is True  # 102/1.02 = 100 <= 101/0.98


def test_a_cell_that_does_not_match_the_reference_is_named(tmp_path):
    runs = matrix_runs()
    runs[5]["output"]["greedy_tokens"] = [7, 3, 8, 1]
    bad = CellId.of_run(runs[5]).name
    summary, text, _ = run_report(tmp_path, runs)
    a = answer(summary, "decode")
    assert not a["all_verified"] and a["cells_not_verified"] == [bad] and a["cells_verified"] == 7
    assert not summary["verification"]["ok"]
    assert f"**no**: {bad} (7 of 8)" in text


def test_rankings_inside_each_rank_count(tmp_path):
    runs = matrix_runs(
        sequence_standard_np2_p16=130.0,
        headwise_online_softmax_np2_p16=125.0,
        sequence_online_softmax_np2_p16=50.0,
    )
    summary, text, _ = run_report(tmp_path, runs)
    r = next(r for r in summary["rankings"] if (r["phase"], r["nranks"]) == ("prefill", 2))
    assert [c["cell"] for c in r["cells"]] == [
        "sequence_standard_np2_p16",
        "headwise_online_softmax_np2_p16",
        "headwise_standard_np2_p16",
        "sequence_online_softmax_np2_p16",
    ]
    assert r["lead_pct"] == pytest.approx(4.0) and r["within_spread"] is True
    assert r["lead_over_slowest_pct"] == pytest.approx(160.0)
    one = next(r for r in summary["rankings"] if (r["phase"], r["nranks"]) == ("prefill", 1))
    assert one["lead_pct"] == pytest.approx(0.0)
    assert (
        "- prompt 16, prefill, 2 ranks: fastest is **sequence + standard** at 130 tokens/s, 4.0% ahead"
        in text
    )


def test_missing_and_not_applicable_cells(tmp_path):
    runs = [r for r in matrix_runs() if CellId.of_run(r).name != "sequence_standard_np2_p16"]
    cells = [f"{s}_{a}_np{p}_p16" for s, a, p in MATRIX] + ["headwise_standard_np4_p16"]
    summary, text, rows = run_report(
        tmp_path,
        runs,
        "--not-applicable",
        "headwise_standard_np4_p16=P=4 does not divide num_key_value_heads=2",
        "--logs-dir",
        "results/logs/bench",
        cells=cells,
    )
    status = {r["cell"]: (r["status"], r["reason"]) for r in summary["cells"]}
    assert status["sequence_standard_np2_p16"] == (
        "missing",
        "no result: the bench failed or was not run (see results/logs/bench/sequence_standard_np2_p16.log)",
    )
    assert status["headwise_standard_np4_p16"] == ("n/a", "P=4 does not divide num_key_value_heads=2")
    assert [r["cell"] for r in rows] == [r["cell"] for r in summary["cells"]] and len(rows) == 9
    a = answer(summary, "prefill")
    assert a["cells_missing"] == ["sequence_standard_np2_p16"] and a["cells_measured"] == 7
    assert "7 of 9 cells measured." in text and "| sequence | standard | missing |" in text
    assert "; missing: sequence_standard_np2_p16; 1 not applicable (see Cells)." in text


def test_a_prompt_length_without_results_has_an_empty_answer(tmp_path):
    cells = [f"{s}_{a}_np{p}_p{n}" for n in (16, 32) for s, a, p in MATRIX]
    summary, text, _ = run_report(tmp_path, matrix_runs(), cells=cells)
    a = answer(summary, "decode", prompt_len=32)
    assert a["fastest"] is None and a["cells_measured"] == 0 and len(a["cells_missing"]) == 8
    assert not a["all_verified"] and answer(summary, "decode")["all_verified"]
    assert "| 32 | decode | no cell measured |" in text


def test_answers_come_first_and_appendices_last(tmp_path):
    summary, text, _ = run_report(
        tmp_path, matrix_runs(headwise_standard_np2_p16=180.0), "--workflow-config", json.dumps({"iters": 3})
    )
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings[0] == "Fastest configuration on this machine" and headings[1] == "Figures"
    appendices = [i for i, h in enumerate(headings) if h.startswith("Appendix")]
    assert appendices and appendices == list(range(len(headings) - len(appendices), len(headings)))
    first_table_row = next(line for line in text.splitlines() if line.startswith("| 16 |"))
    assert first_table_row.startswith("| 16 | prefill | **headwise + standard, 2 x 1** | 180 (")
    assert '"iters": 3' in text.split("## Appendix: workflow configuration")[1]
    assert summary["workflow_config"] == {"iters": 3}
    assert "Test CPU, 2 cores, 8-lane float vectors (host testhost)" in text.split("## Figures")[0]
    provenance = text.split("## Appendix: provenance")[1]
    assert "MPICH Version: 4.2 (test data)" in provenance and "`abc123`" in provenance


def test_partial_report_and_the_json_path(tmp_path):
    paths = write_runs(tmp_path / "runs", matrix_runs())
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "--runs",
                *paths,
                "--out-md",
                str(out / "r.md"),
                "--out-csv",
                str(out / "s.csv"),
                "--out-json",
                str(out / "elsewhere" / "found.json"),
                "--partial",
            ]
        )
        == 0
    )
    summary = json.loads((out / "elsewhere" / "found.json").read_text())
    assert summary["partial"] is True and not (out / "summary.json").exists()
    assert "> **Partial report.**" in (out / "r.md").read_text()
    summary, text, _ = run_report(tmp_path / "full", matrix_runs())
    assert summary["partial"] is False and "Partial report" not in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--not-applicable", "headwise_standard_np4_p16"],
            "--not-applicable 'headwise_standard_np4_p16' is not",
        ),
        (["--workflow-config", "{iters"], "--workflow-config is not JSON"),
        (["--cells", "headwise_np1"], "cell name 'headwise_np1' is not"),
    ],
)
def test_bad_input_fails_naming_it_before_writing(tmp_path, capsys, extra, message):
    paths = write_runs(tmp_path / "runs", matrix_runs())
    out = tmp_path / "out"
    assert (
        cli.main(["--runs", *paths, "--out-md", str(out / "r.md"), "--out-csv", str(out / "s.csv"), *extra])
        == 2
    )
    assert message in capsys.readouterr().err and not out.exists()


def test_runs_outside_the_matrix_are_left_out_and_no_reference_is_survived(tmp_path):
    runs = [fake_run("sequence", "standard", 2), fake_run("headwise", "standard", 2, prompt_len=32)]
    summary, text, rows = run_report(
        tmp_path, runs, cells=["sequence_standard_np2_p16", "sequence_standard_np1_p16"]
    )
    assert [r["cell"] for r in rows] == ["sequence_standard_np1_p16", "sequence_standard_np2_p16"]
    assert summary["verification"]["cells"][0]["problems"] == [
        "no 1-rank cell with prompt_len=16 and gen_len=4 to verify against"
    ]
    assert not answer(summary, "prefill")["all_verified"]
    assert "no 1-rank cell with prompt_len=16" in text
