"""The dtype axis on fabricated runs (TEST DATA): verification against each dtype's own 1-rank cell
at its own tolerance, the low-precision measures, rankings and speed-ups within a dtype, and the
per-dtype section beside the baselines, ranks and ceilings comparisons."""

from __future__ import annotations

import pytest

from pipeline.cells import CellId
from pipeline.report import verify
from tests.report.fakes import fake_run, low_block, matrix_runs
from tests.report.inputs import compare_doc, run_report, write_json

# the fakes' digests are 0.5 + i/10, i < 8: the reference's largest |logit| is 1.2
SCALE = 0.5 + 7 / 10


def by_name(runs: list[dict]) -> dict[str, dict]:
    return {CellId.of_run(r).name: r for r in runs}


def nudge(run: dict, delta: float) -> dict:
    """Move the cell's logits digests by `delta`, its L2 norms untouched."""
    for phase in ("prefill_logits", "final_logits"):
        run["output"][phase]["first8"] = [x + delta for x in run["output"][phase]["first8"]]
    return run


def check(result: dict, name: str) -> dict:
    return next(c for c in result["cells"] if c["cell"] == name)


def test_each_dtype_is_held_against_its_own_one_rank_cell():
    # every bf16 cell 0.3 away from float32's logits: against float32 it would fail at any tolerance here
    runs = by_name(matrix_runs() + [nudge(r, 0.3) for r in matrix_runs("bf16")])
    result = verify.verify(runs, atol=1e-3, rtol=1e-4)
    assert result["ok"], [c["problems"] for c in result["cells"] if not c["ok"]]
    assert result["references"] == ["headwise_standard_np1_p16", "headwise_standard_np1_p16_bf16"]
    bf16_ref = check(result, "sequence_online_softmax_np2_p16_bf16")["reference"]
    assert bf16_ref == "headwise_standard_np1_p16_bf16"
    assert check(result, "sequence_online_softmax_np2_p16")["reference"] == "headwise_standard_np1_p16"
    assert [c["dtype"] for c in result["cells"]] == ["float32"] * 8 + ["bf16"] * 8  # float32 first


@pytest.mark.parametrize("dtype, within, beyond, atol", [
    ("float32", 5e-4, 5e-3, 1e-3),  # the configured atol, absolute
    ("bf16", 5e-3, 2e-2, verify.BF16_ATOL * SCALE),
    ("int8", 5e-2, 2e-1, verify.INT8_ATOL * SCALE),
])
def test_the_logits_tolerance_is_the_dtypes(dtype, within, beyond, atol):
    ref = fake_run("headwise", "standard", 1, dtype=dtype)
    near = nudge(fake_run("sequence", "standard", 2, dtype=dtype), within)
    far = nudge(fake_run("headwise", "online_softmax", 2, dtype=dtype), beyond)
    result = verify.verify(by_name([ref, near, far]), atol=1e-3, rtol=1e-4)
    ok = {c["cell"]: c["ok"] for c in result["cells"]}
    assert ok == {CellId.of_run(ref).name: True, CellId.of_run(near).name: True,
                  CellId.of_run(far).name: False}
    assert check(result, CellId.of_run(near).name)["atol"] == pytest.approx(atol)


def test_the_l2_tolerance_is_the_dtypes():
    """A 1.5e-3 relative change of the L2 norm: beyond float32's 1e-4 (the configured rtol), within
    bf16's and int8's 2e-3; a 3e-3 change beyond those too."""
    runs, changed = [], {"sequence": 1.0015, "layer": 1.003}
    for dtype in ("float32", "bf16", "int8"):
        runs.append(fake_run("headwise", "standard", 1, dtype=dtype))
        for strategy, factor in changed.items():
            cell = fake_run(strategy, "standard", 2, dtype=dtype)
            for phase in ("prefill_logits", "final_logits"):
                cell["output"][phase]["l2"] *= factor
            runs.append(cell)
    result = verify.verify(by_name(runs), atol=1e-3, rtol=1e-4)
    ok = {c["cell"]: c["ok"] for c in result["cells"] if "np2" in c["cell"]}
    assert ok == {"sequence_standard_np2_p16": False, "layer_standard_np2_p16": False,
                  "sequence_standard_np2_p16_bf16": True, "layer_standard_np2_p16_bf16": False,
                  "sequence_standard_np2_p16_int8": True, "layer_standard_np2_p16_int8": False}


def test_a_cell_run_on_an_export_of_another_dtype_fails():
    ref = fake_run("headwise", "standard", 1, dtype="bf16")
    wrong = fake_run("headwise", "standard", 2, dtype="bf16")
    wrong["model"]["dtype"] = "float32"
    result = verify.verify(by_name([ref, wrong]), atol=1e-3, rtol=1e-4)
    assert check(result, "headwise_standard_np2_p16_bf16")["problems"] == [
        "the export holds float32 weights, not the cell's bf16"]


def test_a_dtype_without_its_one_rank_cell_is_named():
    runs = by_name(matrix_runs() + [fake_run("headwise", "standard", 2, dtype="int8")])
    missing = r"no 1-rank cell with prompt_len=16 and gen_len=4 \(dtype int8\)"
    with pytest.raises(verify.RunError, match=missing):
        verify.verify(runs, atol=1e-3, rtol=1e-4)
    result = verify.verify(runs, atol=1e-3, rtol=1e-4, strict=False)
    assert not check(result, "headwise_standard_np2_p16_int8")["ok"]
    assert all(c["ok"] for c in result["cells"] if c["dtype"] == "float32")


def test_low_precision_measures_are_carried_and_a_missing_block_is_not_measured():
    measured = fake_run("headwise", "standard", 1, dtype="int8",
                        low_precision=low_block(nmse=3.5e-4, kl_mean=2e-3, kl_max=4e-2, top1=0.75, steps=40))
    missing = fake_run("sequence", "standard", 2, dtype="int8")
    result = verify.verify(by_name([measured, missing, fake_run("headwise", "standard", 1)]), 1e-3, 1e-4)
    low = check(result, "headwise_standard_np1_p16_int8")["low_precision"]
    assert (low["measured"], low["nmse"], low["kl_max"], low["top1_agreement"], low["steps"]) == (
        True, 3.5e-4, 4e-2, 0.75, 40)
    assert check(result, "sequence_standard_np2_p16_int8")["low_precision"] == {"measured": False}
    assert check(result, "headwise_standard_np1_p16")["low_precision"] is None  # float32: the reference
    text = "\n".join(verify.render_table(result))
    assert "| 3.50e-04 | 2.00e-03 / 4.00e-02 | 75.0% of 40 |" in text
    assert "| not measured | not measured | not measured |" in text
    assert "**int8**: logits within 0.1 per unit of the reference's largest |logit|" in text


def test_the_report_ranks_and_speeds_up_within_a_dtype(tmp_path):
    # float32 at 100 but head-wise + standard on 2 ranks at 180; bf16 at 300 but sequence + online on 1 at 400
    runs = (matrix_runs(headwise_standard_np2_p16=180.0)
            + matrix_runs("bf16", default=300.0, sequence_online_softmax_np1_p16_bf16=400.0))
    summary, text, rows = run_report(tmp_path, runs)
    answers = {(a["dtype"], a["phase"]): a for a in summary["answers"]}
    f32, bf16 = answers[("float32", "prefill")], answers[("bf16", "prefill")]
    assert f32["fastest"]["cell"] == "headwise_standard_np2_p16"
    assert f32["speedup_over_1rank"] == pytest.approx(1.8)
    assert f32["fastest_1rank_cell"] == "headwise_standard_np1_p16"
    assert bf16["fastest"]["cell"] == "sequence_online_softmax_np1_p16_bf16"
    assert bf16["runner_up"]["dtype"] == "bf16" and bf16["speedup_over_fastest_1rank"] == pytest.approx(1.0)
    assert bf16["speedup_over_float32_fastest"] == pytest.approx(400.0 / 180.0)
    assert f32["speedup_over_float32_fastest"] is None and bf16["cells_verified"] == 8
    cells = {r["cell"]: r for r in summary["cells"]}
    assert cells["headwise_standard_np2_p16_bf16"]["prefill_speedup"] == pytest.approx(1.0)  # 300 / 300
    assert cells["sequence_online_softmax_np2_p16_bf16"]["prefill_speedup"] == pytest.approx(300.0 / 400.0)
    assert cells["headwise_standard_np2_p16"]["prefill_speedup"] == pytest.approx(1.8)
    assert cells["headwise_standard_np1_p16_bf16"]["low_precision_nmse"] == 2e-5  # low_block's
    assert cells["headwise_standard_np1_p16"].get("low_precision_nmse") is None
    assert {r["dtype"] for r in rows} == {"float32", "bf16"} and rows[0]["dtype"] == "float32"
    seed = {(s["dtype"], s["phase"]): s for s in summary["findings"]["seed_best"]}
    assert seed[("bf16", "prefill")]["seed_over_fastest"] == pytest.approx(300.0 / 400.0)
    assert text.index("### Prefill, float32 weights") < text.index("### Prefill, bf16 weights")
    assert summary["machine"]["differs"] == []  # the dtype is an axis, not two machines
    assert "differs between cells" not in text
    assert "| 16 | bf16 | prefill | **sequence + online_softmax, 1 x 2** |" in text
    assert "| float32 | 100 (headwise + standard) | 10.0 (headwise + standard) | — |" in text
    per = {d["dtype"]: d for d in summary["dtypes"]["dtypes"]}
    assert per["bf16"]["best_1rank_over_float32"]["prefill"] == pytest.approx(400.0 / 100.0)
    assert per["bf16"]["low_precision"]["nmse_max"] == 2e-5
    assert per["bf16"]["low_precision"]["cells_measured"] == 8


def test_float32_only_has_no_dtype_column_or_section(tmp_path):
    summary, text, _ = run_report(tmp_path, matrix_runs())
    assert summary["dtypes"] is None and "## Per dtype" not in text
    assert "| prompt | phase | fastest (ranks x threads) |" in text and "weights (" not in text


BASELINES = {  # TEST DATA rates per round: ours int8 100/80/100 prefill, llama.cpp q8_0 50/64/62.5
    "ours_float32": ("bench", "ours float32, 1 rank x 2 threads", None, [100.0, 90.0, 110.0],
                     [10.0, 9.0, 11.0]),
    "llamacpp_f32": ("llamacpp", "llama.cpp f32, 2 threads", "ours_float32", [80.0, 90.0, 88.0],
                     [10.0, 9.0, 11.0]),
    "ours_int8": ("bench", "ours int8, 1 rank x 2 threads", None, [100.0, 80.0, 100.0], [20.0, 20.0, 20.0]),
    "llamacpp_q8_0": ("llamacpp", "llama.cpp q8_0, 2 threads", "ours_int8", [50.0, 64.0, 62.5],
                      [25.0, 40.0, 20.0]),
}
NO_TORCH = "HF transformers (torch) float32, 2 threads: skipped, the Python package 'torch' is not installed"


def test_baselines_per_dtype_paired_ratios_and_skips(tmp_path):
    doc = compare_doc("baselines", BASELINES, skipped=[NO_TORCH])
    runs = matrix_runs() + matrix_runs("int8", default=150.0)
    summary, text, _ = run_report(tmp_path, runs, "--compare", write_json(tmp_path / "b.json", doc))
    rows = {r["baseline"]: r for r in summary["dtypes"]["baselines"]}
    q8 = rows["llamacpp_q8_0"]
    assert (q8["dtype"], q8["ours"]) == ("int8", "ours_int8")
    # ours over theirs per round: 100/50, 80/64, 100/62.5; decode 20/25, 20/40, 20/20
    assert q8["prefill_ours_over_baseline_rounds"] == pytest.approx([2.0, 1.25, 1.6])
    assert q8["prefill_ours_over_baseline"] == pytest.approx(1.6)
    assert q8["decode_ours_over_baseline"] == pytest.approx(0.8)
    assert rows["llamacpp_f32"]["dtype"] == "float32"
    assert ("| int8 | ours int8, 1 rank x 2 threads | llama.cpp q8_0, 2 threads | 100 / 62.5 | 20.0 / 25.0 "
            "| ×1.60 (2.00 / 1.25 / 1.60) | ×0.80 (0.80 / 0.50 / 1.00) | yes |") in text
    assert f"- Skipped: {NO_TORCH}." in text
    assert text.index("| float32 | ours float32") < text.index("| int8 | ours int8")


def test_baselines_accuracy_columns_show_ours_and_theirs_against_float32(tmp_path):
    doc = compare_doc("baselines", BASELINES)
    accuracy = {"ours_int8": (2.4e-3, 3.1e-2, 0.75), "llamacpp_q8_0": (2.2e-4, 2.9e-3, 0.96875)}  # TEST DATA
    for v in doc["variants"]:
        if v["name"] in accuracy:
            nmse, kl, top1 = accuracy[v["name"]]
            v["accuracy"] = {"steps": 32, "nmse": nmse, "kl_mean": kl, "kl_max": 2 * kl,
                             "top1_agreement": top1}
    runs = matrix_runs() + matrix_runs("int8", default=150.0)
    summary, text, _ = run_report(tmp_path, runs, "--compare", write_json(tmp_path / "b.json", doc))
    q8 = {r["baseline"]: r for r in summary["dtypes"]["baselines"]}["llamacpp_q8_0"]
    assert (q8["nmse_ours"], q8["nmse_baseline"], q8["top1_agreement_baseline"]) == (2.4e-3, 2.2e-4, 0.96875)
    assert "| yes | 2.40e-03 / 2.20e-04 | 3.10e-02 / 2.90e-03 | 75.0% / 96.9% |" in text
    assert "| yes | — / — | — / — | — / — |" in text  # llama.cpp f32 beside ours float32: not measured
    assert "every program, ours and theirs, against one float32 run of our engine" in text


def test_ranks_and_ceilings_per_dtype(tmp_path):
    one_f32, one_bf16 = "float32_online_softmax_np1", "bf16_online_softmax_np1"
    ranks = compare_doc("ranks", {
        one_f32: ("bench", "float32, 1 x 2", None, [100.0] * 3, [10.0] * 3),
        "float32_online_softmax_np2": ("bench", "float32, 2 x 1", one_f32, [90.0] * 3, [12.0] * 3),
        one_bf16: ("bench", "bf16, 1 x 2", None, [200.0] * 3, [20.0] * 3),
        "bf16_online_softmax_np2": ("bench", "bf16, 2 x 1", one_bf16, [220.0] * 3, [19.0] * 3),
    })
    ceilings = compare_doc("ceilings", {
        "ceilings": ("ceilings", "ceilings, 2 threads", None, [250.0] * 3, [20.0] * 3),
        "float32_online_softmax_np1": ("bench", "float32, 1 x 2", "ceilings", [200.0] * 3, [17.0] * 3),
        "bf16_online_softmax_np1": ("bench", "bf16, 1 x 2", "ceilings", [400.0] * 3, [18.0] * 3),
    })
    # TEST DATA: bf16's rounds read its weights between decode steps, its decode over them 0.8, 0.9,
    # 0.86; float32's first round file is gone, so its column says "—"
    bf16 = next(v for v in ceilings["variants"] if v["name"] == one_bf16)
    bf16["files"] = [str(write_json(tmp_path / f"bf16_r{i}.json", {"roofline": {"decode_fraction": x}}))
                     for i, x in enumerate((0.8, 0.9, 0.86))]
    f32 = next(v for v in ceilings["variants"] if v["name"] == one_f32)
    f32["files"] = [str(tmp_path / "gone_r0.json")]
    paths = [write_json(tmp_path / "r.json", ranks), write_json(tmp_path / "c.json", ceilings)]
    summary, text, _ = run_report(tmp_path, matrix_runs() + matrix_runs("bf16"), "--compare", *paths)
    per = {(r["dtype"], r["algo"]): r for r in summary["dtypes"]["ranks"]}
    assert per[("bf16", "online_softmax")]["prefill_ratio"] == pytest.approx(1.1)  # 220 / 200
    assert per[("float32", "online_softmax")]["decode_ratio"] == pytest.approx(1.2)  # 12 / 10
    ceil = {r["dtype"]: r for r in summary["dtypes"]["ceilings"]}
    assert ceil["bf16"]["decode_ratio"] == pytest.approx(0.9)  # 18 GB/s over 20
    assert ceil["bf16"]["decode_read_fraction"] == pytest.approx(0.86)  # the median of 0.8, 0.9, 0.86
    bf16_row = "| bf16 | online_softmax | ×1.10 | ×0.95 | 400 (×1.60) | 18.0 (×0.90) | 86% (80 / 90 / 86) |"
    assert bf16_row in text
    assert "| float32 | online_softmax | ×0.90 | ×1.20 | 200 (×0.80) | 17.0 (×0.85) | — |" in text


# TEST DATA: the reference's top-1 margins per greedy token; int8's near-tie threshold here is
# 2 x 0.1 x 1.2 = 0.24, so step 2 (0.2) is a near-tie and step 1 (0.3) is not
MARGINS = [0.5, 0.3, 0.2, 0.5]


def parted(dtype: str, step: int, margins: list[float] | None = MARGINS, prefill_shift: float = 0.0):
    """(reference, cell): the cell's greedy token differs from `step` on, its last step's logits 0.5 away
    (another context), its prefill's moved by `prefill_shift`."""
    ref = fake_run("headwise", "standard", 1, dtype=dtype)
    if margins is not None:
        ref["output"]["top1_margins"] = margins
    cell = fake_run("sequence", "standard", 2, dtype=dtype)
    tokens = cell["output"]["greedy_tokens"]
    cell["output"]["greedy_tokens"] = tokens[:step] + [t + 1 for t in tokens[step:]]
    cell["output"]["final_logits"]["first8"] = [x + 0.5 for x in cell["output"]["final_logits"]["first8"]]
    cell["output"]["prefill_logits"]["first8"] = [x + prefill_shift
                                                 for x in cell["output"]["prefill_logits"]["first8"]]
    return ref, cell


@pytest.mark.parametrize("dtype, step, margins, prefill_shift, ok", [
    ("int8", 2, MARGINS, 0.0, True),     # parted at a near-tie: the prefill's logits still match
    ("bf16", 2, [0.5, 0.3, 0.02, 0.5], 0.0, True),  # bf16: 2 x 0.01 x 1.2 = 0.024
    ("int8", 1, MARGINS, 0.0, False),    # margin 0.3 is no near-tie: a mismatch
    ("int8", 2, MARGINS, 0.2, False),    # a near-tie, but the prefill's logits are 0.2 > 0.12 away
    ("int8", 2, None, 0.0, False),       # the reference recorded no margins (runs before them): strict
    ("float32", 2, [0.5, 0.3, 1e-9, 0.5], 0.0, False),  # float32 takes no near-ties
])
def test_low_precision_tokens_may_part_only_at_a_near_tie(dtype, step, margins, prefill_shift, ok):
    ref, cell = parted(dtype, step, margins, prefill_shift)
    c = check(verify.verify(by_name([ref, cell]), atol=1e-3, rtol=1e-4), CellId.of_run(cell).name)
    assert c["ok"] is ok, c["problems"]
    assert c["first_token_mismatch"] == step and not c["tokens_equal"]
    assert (c["near_tie_margin"] is not None) == (margins is not None and dtype != "float32"
                                                  and margins[step] < 2 * (0.1 if dtype == "int8" else 0.01)
                                                  * SCALE)


def test_a_near_tie_is_stated_in_the_table():
    result = verify.verify(by_name(parted("int8", 2)), atol=1e-3, rtol=1e-4)
    text = "\n".join(verify.render_table(result))
    assert "| part from step 2, a near-tie (reference's margin 2.00e-01 < 2 x atol) |" in text
    assert "| 5.00e-01 (after the tokens part: not compared) |" in text


def test_the_report_counts_near_ties_and_the_csv_carries_them(tmp_path):
    summary, text, rows = run_report(tmp_path, [*parted("int8", 2), *matrix_runs()])
    assert summary["findings"]["outputs"]["near_ties"] == 1
    row = next(r for r in rows if r["cell"] == "sequence_standard_np2_p16_int8")
    assert (row["verify_ok"], row["verify_first_token_mismatch"], row["verify_near_tie_margin"]) == (
        "True", "2", "0.2")
    assert "1 low-precision cells' tokens part from their reference's at a near-tie" in text
