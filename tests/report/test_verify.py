"""verify: every fabricated cell against its single-rank reference."""

from __future__ import annotations

import json

import pytest

from pipeline.cells import CellId
from pipeline.report import verify
from tests.report.fakes import MATRIX, fake_run, matrix_runs, write_runs


def run_verify(tmp_path, paths: list[str]) -> int:
    return verify.main(["--runs", *paths, "--atol", "1e-3", "--rtol", "1e-4",
                        "--out-md", str(tmp_path / "v.md"), "--out-json", str(tmp_path / "v.json")])


def test_verify_all_match(tmp_path):
    paths = write_runs(tmp_path / "runs", matrix_runs())
    rc = run_verify(tmp_path, paths)
    assert rc == 0
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["ok"] and len(result["cells"]) == len(MATRIX)
    assert result["references"] == ["headwise_standard_np1_p16"]
    assert {c["reference"] for c in result["cells"]} == {"headwise_standard_np1_p16"}
    assert "All 8 cells match" in (tmp_path / "v.md").read_text()


def test_verify_tolerance_is_applied():
    ref = fake_run("headwise", "standard", 1)
    within = fake_run("sequence", "online_softmax", 2, shift=5e-4)
    beyond = fake_run("sequence", "online_softmax", 2, shift=5e-3)
    assert verify.compare(within, ref, atol=1e-3, rtol=1e-2)["ok"]
    bad = verify.compare(beyond, ref, atol=1e-3, rtol=1e-2)
    assert not bad["ok"] and "prefill logits differ" in bad["problems"][0]
    assert verify.compare(within, ref, atol=1e-3, rtol=1e-6)["problems"] == [
        f"logits L2 norm differs by {5e-4:.3g} (relative) > rtol 1e-06"
    ]


def test_verify_mismatch_fails_naming_cells(tmp_path, capsys):
    runs = matrix_runs()
    runs[5]["output"]["greedy_tokens"] = [7, 3, 8, 1]
    runs[6]["output"]["final_logits"]["first8"][0] = float("nan")
    paths = write_runs(tmp_path / "runs", runs)
    rc = run_verify(tmp_path, paths)
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{CellId.of_run(runs[5]).name} does not match headwise_standard_np1_p16" in err
    assert "greedy tokens differ from step 2" in err
    assert CellId.of_run(runs[6]).name in err
    assert "MISMATCH" in (tmp_path / "v.md").read_text()


def test_verify_needs_single_rank_reference(tmp_path, capsys):
    paths = write_runs(tmp_path / "runs", [fake_run("headwise", "standard", 2)])
    rc = run_verify(tmp_path, paths)
    assert rc == 2
    assert "no 1-rank cell with prompt_len=16" in capsys.readouterr().err


def test_verify_rejects_duplicate_and_broken_files(tmp_path):
    run = fake_run("headwise", "standard", 1)
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "b.json").write_text(json.dumps(run))
    with pytest.raises(verify.RunError, match="also in"):
        verify.load_runs([tmp_path / "a.json", tmp_path / "b.json"])
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(verify.RunError, match="c.json"):
        verify.load_run(tmp_path / "c.json")

