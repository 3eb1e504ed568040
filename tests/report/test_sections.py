"""The report's sections across cells as data (summary.json): findings, roofline, memory, communication,
long context and the cost model; on fabricated runs and inputs (TEST DATA)."""

from __future__ import annotations

import pytest

from pipeline.cells import CellId
from tests.report.fakes import matrix_runs
from tests.report.inputs import fake_costmodel, long_runs, run_report, write_json


def test_findings_set_the_seeds_claims_beside_the_measurements(tmp_path):
    # head-wise + standard on 2 ranks fastest; the seed's pick (sequence + online_softmax, 2 ranks) at 120
    runs = matrix_runs(
        headwise_standard_np2_p16=180.0,
        sequence_online_softmax_np2_p16=120.0,
        headwise_online_softmax_np1_p16=110.0,
    )
    summary, text, _ = run_report(tmp_path, runs)
    f = summary["findings"]
    seed = next(s for s in f["seed_best"] if s["phase"] == "prefill")
    assert (
        seed["fastest_cell"] == "headwise_standard_np2_p16"
        and seed["seed_cell"] == "sequence_online_softmax_np2_p16"
    )
    assert seed["seed_over_fastest"] == pytest.approx(120.0 / 180.0)
    # speed-ups over each layout's own 1 rank: sequence 1.0 and 1.2, head-wise 1.8 and 100/110
    scaling = {(x["algo"], x["nranks"]): x for x in f["scaling_sequence_vs_headwise"]["prefill"]}
    assert scaling[("standard", 2)]["headwise_speedup"] == pytest.approx(1.8)
    assert scaling[("online_softmax", 2)]["sequence_speedup"] == pytest.approx(1.2)
    assert scaling[("online_softmax", 2)]["headwise_speedup"] == pytest.approx(100.0 / 110.0)
    seq = {(m["algo"], m["nranks"]): m["ratio"] for m in f["sequence_vs_headwise"]["prefill"]}
    assert seq == {("standard", 2): pytest.approx(100.0 / 180.0), ("online_softmax", 2): pytest.approx(1.2)}
    # online over standard in 4 matched cells: 110/100, 1, 100/180, 120/100
    o = f["online_vs_standard"]["prefill"]
    assert o["matched"] == 4 and o["online_faster"] == 2
    assert o["median_ratio"] == pytest.approx((1.0 + 1.1) / 2)
    assert f["outputs"] == {"cells": 8, "cells_ok": 8, "both_algorithms": True, "max_abs_diff": 0.0,
                            "max_abs_diff_by_dtype": {"float32": 0.0}, "near_ties": 0}
    assert "the seed's pick gives 120 tokens/s, 33.3% fewer" in text
    for graded in ("**agrees**", "**contradicted**", "target", "**met**"):
        assert graded not in text


def test_roofline_memory_and_communication(tmp_path):
    runs = matrix_runs()
    for r in runs:
        r["roofline"] = {
            "gemm_gflops": 250.0,
            "gemv_gb_s": 25.0,
            "prefill_gflops": 200.0,
            "prefill_fraction": 0.8,
            "decode_gb_s": 22.5,
            "decode_fraction": 0.9,
            "ceilings": {"gemm_gflops_best": 270.0, "gemv_gb_s_best": 26.0},
        }
        r["memory"]["anon_mb"] = [12.5] * r["cell"]["nranks"]
        r["memory"]["anon_huge_mb"] = [4.0] * r["cell"]["nranks"]
        r["memory"]["attention_scratch_mb"] = [0.5] * r["cell"]["nranks"]
        r["cell"]["sequence_layout"] = "zigzag"
    runs[-1]["roofline"]["gemm_gflops"] = 10.0  # measured while the machine was busy
    # a run with the paired read of its weights: that is its decode ceiling, NumPy's GEMV beside it
    runs[1]["roofline"].update(stream_gb_s=30.0, stream_gb_s_best=33.0, decode_fraction=0.75,
                               decode_fraction_in_order=0.875)  # and the read in a step's order
    summary, text, rows = run_report(tmp_path, runs)
    roof = summary["roofline"]
    assert (
        roof["disturbed"] == ["sequence_online_softmax_np2_p16"]
        and roof["typical_ceilings"]["gemm_gflops"] == 250.0
    )
    first = roof["cells"][0]
    assert (first["prefill_fraction"], first["decode_fraction"], first["gemm_gflops_best"]) == (
        0.8,
        0.9,
        270.0,
    )
    mem = {m["cell"]: m for m in summary["memory"]}["headwise_standard_np2_p16"]
    assert mem["peak_rss_mb"] == [102.0, 102.0] and mem["anon_mb"] == [12.5, 12.5]
    assert mem["attention_scratch_mb_max"] == 0.5
    comm = summary["communication"]["cells"][0]
    assert comm["prefill_comm_share"] == pytest.approx(0.1)  # fakes: 10% of the median in MPI
    assert comm["decode_compute_ms"] == pytest.approx(0.9 * 400.0)  # 4 tokens at 10 tokens/s
    assert (
        "| headwise_standard_np1_p16 | 200 | 250 (best 270) | 80% | 22.5 | 25.0 (best 26.0) | 90% | — "
        "| 25.0 (best 26.0) |" in text
    )
    paired = CellId.of_run(runs[1]).name
    assert f"| {paired} | 200 | 250 (best 270) | 80% | 22.5 | 30.0 (best 33.0) | 75% | 88% " \
           "| 25.0 (best 26.0) |" in text
    assert "% of GEMM ceiling |" in text and "% of streaming bandwidth | % of its layout's read |" in text
    assert "| **75%** | **88%** |\n" in text and "| 90% | — |\n" in text  # decode tables: both columns
    assert "fractions are not trustworthy): sequence_online_softmax_np2_p16." in text
    assert rows[0]["roofline.prefill_fraction"] == "0.8" and rows[0]["anon_mb_per_rank"] == "12.5"
    # peak RSS max, per rank, anon, of it in 2 MiB pages, attention scratch
    assert "| headwise_standard_np1_p16 | 101 | 101 | 12.5 | 4.0 | 0.5 |" in text
    assert "of it in 2 MiB pages MB" in text and mem["anon_huge_mb"] == [4.0, 4.0]
    assert {r["sequence_layout"] for r in rows if r["strategy"] == "sequence"} == {"zigzag"}
    assert summary["machine"]["sequence_layout"] == ["zigzag"] and "| sequence layout | zigzag |" in text


def test_long_context(tmp_path):
    summary, text, _ = run_report(tmp_path, long_runs(seq_speed_4096=125.0))
    lc = summary["long_context"]
    assert lc["lengths"] == [128, 4096] and lc["sequence_layouts"] == ["zigzag"]
    row = next(
        r
        for r in lc["layouts"]
        if (r["strategy"], r["algo"], r["nranks"]) == ("sequence", "online_softmax", 2)
    )
    assert [at["prefill_tokens_per_s"] for at in row["lengths"]] == [100.0, 125.0]
    wins = [m for m in summary["findings"]["sequence_vs_headwise"]["prefill"] if m["ratio"] > 1]
    assert [(m["prompt_len"], m["nranks"], m["algo"], m["ratio"]) for m in wins] == [
        (4096, 2, "standard", pytest.approx(1.25)),
        (4096, 2, "online_softmax", pytest.approx(1.25)),
    ]
    mem = lc["algorithm_memory"][0]
    assert (mem["prompt_len"], mem["strategy"], mem["nranks"]) == (4096, "headwise", 1)
    assert mem["standard_over_online"] == pytest.approx(3.0)
    assert "| sequence + online_softmax | 2 | 100 | 100 | 125 | 100 |" in text
    summary, text, _ = run_report(tmp_path / "never", long_runs(seq_speed_4096=80.0))
    assert max(m["ratio"] for m in summary["findings"]["sequence_vs_headwise"]["prefill"]) == pytest.approx(
        1.0
    )
    assert "sequence parallelism never beats head-wise here (4 matched cells)" in text
    summary, text, _ = run_report(tmp_path / "short", matrix_runs())
    assert summary["long_context"] is None and "## Long context" not in text


def test_cost_model(tmp_path):
    path = write_json(tmp_path / "cm.json", fake_costmodel())
    summary, text, _ = run_report(tmp_path, matrix_runs(), "--costmodel", path)
    (g,) = summary["costmodel"]["groups"]
    assert [(c["algo"], c["borrowed_from"]) for c in g["calibration"]] == [
        ("online_softmax", "standard"),
        ("standard", None),
    ]
    prefill = next(c for c in g["cells"] if c["phase"] == "prefill")
    assert (prefill["error_pct"], prefill["used_for"], prefill["predicted_bound"]) == (
        41.4,
        "held out",
        "compute",
    )
    assert g["error"]["held_out_cells"] == 4
    curves = g["curves"]
    assert curves["algo"] == "online_softmax" and curves["other_algos"] == ["standard"]
    # sequence_zigzag is predicted 1.2x head-wise everywhere: fastest at all 2 lengths x 3 rank counts
    assert curves["fastest"]["prefill"] == {
        "points": 6,
        "wins": [{"strategy": "sequence_zigzag", "points": 6}],
    }
    infeasible = next(p for p in curves["points"] if (p["strategy"], p["nranks"]) == ("headwise", 64))
    assert infeasible["prefill_tok_s"] is None
    assert summary["costmodel"]["figure"] == "figures/costmodel.png"
    assert (tmp_path / "out" / "figures" / "costmodel.png").stat().st_size > 1000
    assert (
        "| headwise_standard_np2_p16 | prefill | 100 | 141 | +41% | 2.00 / 1.00 | compute | held out |"
        in text
    )
    assert "Prediction error over the 4 held-out cells (of 8; the others calibrated the model)" in text
    assert "| sequence_zigzag | 32768 | 120 | 170 | 960 |" in text
    assert "| headwise | 32768 | 100 | 141 | — |" in text  # beyond the measured lengths; P=64 infeasible
    assert "fastest predicted prefill: **sequence_zigzag** in 6 of 6 (prompt, P) points" in text
    assert "| online_softmax | 120 | 60.0 | 130 | 25.0 | 2 | borrowed from standard |" in text
    assert "Intra-node MPI (allreduce sweep at P=2): alpha 4.00 µs, beta 0.2 ns/byte (5.0 GB/s)." in text
    assert "Predicted cluster — test cluster: 64 cores and 200 GB/s per node" in text
    appendix = text.split("## Appendix: the cost model's equations")[1]
    assert "t_prefill = flops / rate" in appendix and "## Cost model" not in appendix


def test_without_a_cost_model_file_the_section_is_left_out(tmp_path):
    summary, text, _ = run_report(tmp_path, matrix_runs(), "--costmodel", str(tmp_path / "no-such.json"))
    assert summary["costmodel"] is None and "## Cost model" not in text
    assert not (tmp_path / "out" / "figures" / "costmodel.png").exists()


def test_time_inside_mpi_splits_into_transfer_and_waiting_and_names_cells_that_crossed_nodes(tmp_path):
    runs = matrix_runs()
    crossed = runs[1]  # headwise_standard_np2_p16
    crossed["environment"]["hosts"] = ["node0", "node1"]
    topology = {"sockets": 1, "numa_nodes": 1, "physical_cores": 2, "logical_cpus": 2}
    crossed["placement"] = {"topology": topology,
                            "ranks": [{"host": "node0", "cpus": [0]}, {"host": "node1", "cpus": [0, 1]}],
                            "sharing_cpus": []}
    for phase, (transfer, wait) in {"prefill": (0.004, 0.001), "decode": (0.002, 0.0005)}.items():
        crossed[phase].update(transfer_s=transfer, wait_s=wait,
                              per_rank={"compute_s": [0.03, 0.031], "transfer_s": [transfer, 0.0015],
                                        "wait_s": [0.0, wait]})
    summary, text, _ = run_report(tmp_path, runs)
    rows = {r["cell"]: r for r in summary["communication"]["cells"]}
    row = rows["headwise_standard_np2_p16"]
    assert row["prefill_transfer_ms"] == pytest.approx(4.0) and row["decode_wait_ms"] == pytest.approx(0.5)
    assert row["hosts"] == ["node0", "node1"]
    assert rows["headwise_standard_np1_p16"]["prefill_transfer_ms"] is None  # an older JSON: no split
    assert "(crossed the network): headwise_standard_np2_p16." in text
    assert "| r0 30.0 / 2.0 / 0.0; r1 31.0 / 1.5 / 0.5 |" in text
    placed = {r["cell"]: r for r in summary["placement"]}["headwise_standard_np2_p16"]
    assert placed["hosts"] == ["node0", "node1"] and placed["rank_cpus"] == [[0], [0, 1]]
    assert "| headwise_standard_np2_p16 | node0, node1 | r0: 0; r1: 0,1 | none | no |" in text


def test_memory_shows_the_weights_each_rank_holds(tmp_path):
    runs = matrix_runs()
    for r in runs:
        P = r["cell"]["nranks"]
        r["memory"]["weights_mb"] = [1200.0 / P] * P  # a layout dividing 1.2 GB of weights
    summary, text, _ = run_report(tmp_path, runs)
    mem = {m["cell"]: m for m in summary["memory"]}
    assert mem["headwise_standard_np2_p16"]["weights_mb"] == [600.0, 600.0]
    assert "| weights per rank MB |" in text
    assert "| headwise_standard_np2_p16 | 102 | 102, 102 | 600, 600 |" in text
