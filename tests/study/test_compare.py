"""The back-to-back comparisons: alternation order, paired ratios, bad input (fake mpiexec, test data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_MPIEXEC = """\
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.report.fakes import fake_run
args = sys.argv[1:]
nranks = int(args[args.index("-n") + 1])
algo = args[args.index("--attention-algo") + 1]
bf16 = "bf16" in args[args.index("--export") + 1]
out = Path(args[args.index("--out") + 1])
with open({log!r}, "a") as f:
    f.write(f"{{algo}} {{nranks}}{{' bf16' if bf16 else ''}}\\n")
rnd = int(out.stem.rsplit("_r", 1)[1])
# 2 ranks (or bf16): prefill x1.2, x0.8, x1.0 over 1 rank (float32) in rounds 0, 1, 2; decode x0.5
other = nranks == 2 or bf16
prefill = 100.0 * ([1.2, 0.8, 1.0][rnd] if other else 1.0)
run = fake_run("headwise", algo, nranks, prompt_len=128, prefill_tps=prefill, decode_tps=10.0 / (1 + other))
run["roofline"] = {{"decode_gb_s": 1.0}}
out.write_text(json.dumps(run))
"""


def test_rank_compare_alternates_the_layouts_and_takes_the_median_ratio(synthetic_tiny_export, tmp_path):
    from pipeline.study import rank_compare

    log = tmp_path / "order.log"
    fake = tmp_path / "fake_mpiexec.py"  # test double for the launcher: writes made-up bench JSONs
    fake.write_text(FAKE_MPIEXEC.format(root=str(ROOT), log=str(log)))
    out = tmp_path / "rank_compare.json"
    rc = rank_compare.main(["--export", str(synthetic_tiny_export), "--cores", "2", "--rounds", "3",
                            "--mpi", f"{sys.executable} {fake}", "--out", str(out)])
    assert rc == 0
    assert log.read_text().split("\n")[:-1] == [
        "standard 1", "standard 2", "online_softmax 1", "online_softmax 2",  # round 0: 1 x 2 first
        "standard 2", "standard 1", "online_softmax 2", "online_softmax 1",  # round 1: reversed
        "standard 1", "standard 2", "online_softmax 1", "online_softmax 2",
    ]
    result = json.loads(out.read_text())
    assert [g["algo"] for g in result["groups"]] == ["standard", "online_softmax"]
    for g in result["groups"]:
        assert g["prefill_ratio_rounds"] == pytest.approx([1.2, 0.8, 1.0])
        assert g["prefill_ratio"] == pytest.approx(1.0) and g["decode_ratio"] == pytest.approx(0.5)
        assert g["threads"]["nranks"] == 1 and g["ranks"]["nranks"] == 2 and g["same_greedy_tokens"]
    assert len(list((tmp_path / "rank_compare").glob("*.json"))) == 12


def test_dtype_compare_alternates_the_dtypes_and_takes_the_median_ratio(
    synthetic_tiny_export, synthetic_tiny_export_bf16, tmp_path
):
    from pipeline.study import dtype_compare

    log = tmp_path / "order.log"
    fake = tmp_path / "fake_mpiexec.py"  # test double for the launcher: writes made-up bench JSONs
    fake.write_text(FAKE_MPIEXEC.format(root=str(ROOT), log=str(log)))
    out = tmp_path / "dtype_compare.json"
    rc = dtype_compare.main(["--exports", str(synthetic_tiny_export), str(synthetic_tiny_export_bf16),
                             "--ranks", "1", "--threads", "2", "--rounds", "3",
                             "--mpi", f"{sys.executable} {fake}", "--out", str(out)])
    assert rc == 0
    assert log.read_text().split("\n")[:-1] == [
        "online_softmax 1", "online_softmax 1 bf16",
        "online_softmax 1 bf16", "online_softmax 1",  # round 1: reversed
        "online_softmax 1", "online_softmax 1 bf16",
    ]
    (group,) = json.loads(out.read_text())["groups"]
    assert group["prefill_ratio_rounds"] == pytest.approx([1.2, 0.8, 1.0])
    assert group["prefill_ratio"] == pytest.approx(1.0) and group["decode_speedup"] == pytest.approx(0.5)
    assert group["same_greedy_tokens"]


def test_roofline_compare_measures_ceilings_and_engine_adjacent(synthetic_tiny_export, tmp_path, monkeypatch):
    from pipeline.study import roofline_compare

    order = []
    for name in ("measure_ceilings", "timed_run"):  # spies: the real functions, their calls recorded
        real = getattr(roofline_compare, name)
        monkeypatch.setattr(roofline_compare, name,
                            lambda *a, real=real, name=name, **k: order.append(name) or real(*a, **k))
    out = tmp_path / "roofline_compare.json"
    rc = roofline_compare.main(["--export", str(synthetic_tiny_export), "--threads", "1", "--prompt-len", "8",
                                "--gen-len", "2", "--rounds", "2", "--algos", "standard", "--out", str(out)])
    assert rc == 0
    # a warm-up run, then per round the ceilings and the engine adjacent, the order flipped in round 1
    assert order == ["timed_run", "measure_ceilings", "timed_run", "timed_run", "measure_ceilings"]
    (group,) = json.loads(out.read_text())["groups"]
    assert group["algo"] == "standard" and len(group["rounds"]) == 2
    for r in group["rounds"]:
        assert r["prefill_fraction"] == pytest.approx(r["prefill_gflops"] / r["gemm_gflops"])
        assert r["decode_fraction"] == pytest.approx(r["decode_gb_s"] / r["gemv_gb_s"])
    assert group["decode_fraction"] == pytest.approx(
        (group["rounds"][0]["decode_fraction"] + group["rounds"][1]["decode_fraction"]) / 2)
    assert roofline_compare.main(["--export", str(tmp_path / "missing"), "--threads", "1",
                                  "--out", str(tmp_path / "x.json")]) == 2

@pytest.mark.parametrize("cores, message", [(3, "3 ranks do not divide num_key_value_heads"),
                                            (2, "export directory not found")])
def test_rank_compare_rejects_bad_input_before_any_run(synthetic_tiny_export, tmp_path, capsys, cores,
                                                       message):
    from pipeline.study import rank_compare

    export = synthetic_tiny_export if cores == 3 else tmp_path / "missing"
    rc = rank_compare.main(["--export", str(export), "--cores", str(cores), "--mpi", "false",
                            "--out", str(tmp_path / "r.json")])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.json").exists()

