"""Back-to-back comparisons (pipeline compare): ABBA order, paired ratios, round files, bad input.

The bench runs are a test double of the launcher (a fake mpiexec writing made-up bench JSONs);
the ceilings test replaces the program runner with one writing made-up JSONs: TEST DATA.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.study import compare, roofline, variants
from tests.report.fakes import fake_run

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
run["roofline"] = {{"prefill_gflops": prefill / 10, "decode_gb_s": 1.0}}
out.write_text(json.dumps(run))
"""


def fake_launcher(tmp_path: Path) -> tuple[str, Path]:
    """The --mpi of a fake mpiexec (test double: writes made-up bench JSONs) and the log of its calls."""
    log, fake = tmp_path / "order.log", tmp_path / "fake_mpiexec.py"
    fake.write_text(FAKE_MPIEXEC.format(root=str(ROOT), log=str(log)))
    return f"{sys.executable} {fake}", log


def calls(log: Path) -> list[str]:
    return log.read_text().split("\n")[:-1]


def test_ranks_alternates_the_variants_and_takes_the_median_of_paired_ratios(synthetic_tiny_export, tmp_path):
    mpi, log = fake_launcher(tmp_path)
    out = tmp_path / "compare" / "ranks.json"
    rc = compare.main(["ranks", "--export", str(synthetic_tiny_export), "--threads", "2", "--rounds", "3",
                       "--mpi", mpi, "--out", str(out)])
    assert rc == 0
    forward = ["standard 1", "standard 2", "online_softmax 1", "online_softmax 2"]
    assert calls(log) == forward + forward[::-1] + forward  # ABBA: round 1 runs in reverse
    doc = json.loads(out.read_text())
    assert doc["name"] == "ranks" and doc["rounds"] == 3 and doc["units"]["decode"] == "tokens/s"
    assert doc["order"][1] == ["float32_online_softmax_np2", "float32_online_softmax_np1",
                               "float32_standard_np2", "float32_standard_np1"]
    one, many = doc["variants"][:2]
    assert one["reference"] is None and "ratio" not in one and one["settings"]["ranks"] == 1
    assert many["reference"] == "float32_standard_np1" and many["settings"] == {
        "export": str(synthetic_tiny_export), "strategy": "headwise", "algo": "standard", "ranks": 2,
        "threads": 2}
    assert many["rounds"]["prefill"] == pytest.approx([120.0, 80.0, 100.0])
    assert many["ratio_rounds"]["prefill"] == pytest.approx([1.2, 0.8, 1.0])
    assert many["ratio"]["prefill"] == pytest.approx(1.0) and many["ratio"]["decode"] == pytest.approx(0.5)
    assert many["tokens_agree"] is True
    expected = [f"float32_{algo}_np{p}_r{r}.json" for algo in ("standard", "online_softmax") for p in (1, 2)
                for r in range(3)]
    assert sorted(p.name for p in (tmp_path / "compare" / "ranks").iterdir()) == sorted(expected)


def test_ranks_pairs_each_dtypes_two_layouts(synthetic_tiny_export, synthetic_tiny_export_bf16, tmp_path):
    mpi, log = fake_launcher(tmp_path)
    out = tmp_path / "ranks.json"
    rc = compare.main(["ranks", "--export", str(synthetic_tiny_export), str(synthetic_tiny_export_bf16),
                       "--threads", "2", "--rounds", "1", "--algos", "online_softmax", "--mpi", mpi,
                       "--out", str(out)])
    assert rc == 0
    assert calls(log) == ["online_softmax 1", "online_softmax 2", "online_softmax 1 bf16",
                          "online_softmax 2 bf16"]
    refs = {v["name"]: v["reference"] for v in json.loads(out.read_text())["variants"]}
    assert refs == {"float32_online_softmax_np1": None,
                    "float32_online_softmax_np2": "float32_online_softmax_np1",
                    "bf16_online_softmax_np1": None, "bf16_online_softmax_np2": "bf16_online_softmax_np1"}


def test_dtype_compares_bf16_over_float32_at_each_rank_count(
    synthetic_tiny_export, synthetic_tiny_export_bf16, tmp_path
):
    mpi, log = fake_launcher(tmp_path)
    out = tmp_path / "dtype.json"
    rc = compare.main(["dtype", "--export", str(synthetic_tiny_export), str(synthetic_tiny_export_bf16),
                       "--ranks", "1", "--threads", "2", "--rounds", "3", "--mpi", mpi, "--out", str(out)])
    assert rc == 0
    assert calls(log) == ["online_softmax 1", "online_softmax 1 bf16", "online_softmax 1 bf16",
                          "online_softmax 1", "online_softmax 1", "online_softmax 1 bf16"]
    ref, bf16 = json.loads(out.read_text())["variants"]
    assert ref["name"] == "float32_np1" and bf16["name"] == "bfloat16_np1"
    assert bf16["reference"] == "float32_np1" and ref["settings"]["export"] == str(synthetic_tiny_export)
    assert bf16["ratio_rounds"]["prefill"] == pytest.approx([1.2, 0.8, 1.0])
    assert bf16["ratio"]["decode"] == pytest.approx(0.5) and bf16["tokens_agree"] is True


def test_ceilings_divides_the_engines_rates_by_the_ceilings_measured_beside_them(
    synthetic_tiny_export, tmp_path, monkeypatch
):
    programs = []

    def fake_program(cmd: list[str], out: Path, timeout: float) -> dict:  # TEST DATA per round
        rnd = int(out.stem.rsplit("_r", 1)[1])
        programs.append(cmd[cmd.index("pipeline") + 1])
        if "ceilings" in cmd:
            return {"gemm_gflops": [40.0, 80.0, 40.0][rnd], "gemv_gb_s": 10.0}
        run = fake_run("headwise", cmd[cmd.index("--attention-algo") + 1], 1)
        run["roofline"] = {"prefill_gflops": [30.0, 40.0, 60.0][rnd], "decode_gb_s": 8.0 + rnd}
        return run

    monkeypatch.setattr(variants, "run_program", fake_program)
    out = tmp_path / "ceilings.json"
    rc = compare.main(["ceilings", "--export", str(synthetic_tiny_export), "--threads", "2", "--rounds", "3",
                       "--algos", "standard", "--out", str(out)])
    assert rc == 0
    assert programs == ["ceilings", "bench", "bench", "ceilings", "ceilings", "bench"]
    doc = json.loads(out.read_text())
    assert doc["metric"] == "roofline" and doc["units"] == {"prefill": "GFLOP/s", "decode": "GB/s"}
    ceilings, engine = doc["variants"]
    assert ceilings["kind"] == "ceilings" and ceilings["rounds"]["prefill"] == [40.0, 80.0, 40.0]
    assert engine["ratio_rounds"]["prefill"] == pytest.approx([0.75, 0.5, 1.5])
    # the median of the per-round ratios (0.75), not the ratio of the medians (40 / 40)
    assert engine["ratio"]["prefill"] == pytest.approx(0.75)
    assert engine["ratio_rounds"]["decode"] == pytest.approx([0.8, 0.9, 1.0])
    assert engine["ratio"]["decode"] == pytest.approx(0.9) and engine["tokens_agree"] is None


def test_round_files_of_other_runs_are_removed(synthetic_tiny_export, tmp_path):
    mpi, _ = fake_launcher(tmp_path)
    raw = tmp_path / "ranks"
    raw.mkdir()
    for stale in ("float32_standard_np1_r2.json", "float32_standard_np1_r7.json", "renamed_r0.json"):
        (raw / stale).write_text("{}")  # left by a run of more rounds, or of other variants
    rc = compare.main(["ranks", "--export", str(synthetic_tiny_export), "--threads", "2", "--rounds", "2",
                       "--algos", "standard", "--mpi", mpi, "--out", str(tmp_path / "ranks.json")])
    assert rc == 0
    assert sorted(p.name for p in raw.iterdir()) == [
        "float32_standard_np1_r0.json", "float32_standard_np1_r1.json", "float32_standard_np2_r0.json",
        "float32_standard_np2_r1.json"]


@pytest.mark.parametrize("args, message", [
    (["ranks", "--threads", "9"], "headwise: 9 ranks exceed the 8 query heads"),
    (["ranks", "--threads", "1"], "comparison ranks needs --threads >= 2"),
    (["ranks", "--threads", "2", "--export", "missing"], "export directory not found"),
    (["ceilings", "--threads", "2", "--export", "missing"], "export directory not found"),
    (["dtype", "--threads", "2"], "comparison dtype takes two or more exports of one model"),
    (["bogus", "--threads", "2"], "unknown comparison 'bogus' (known: dtype, ranks, ceilings, baselines)"),
])
def test_bad_input_fails_in_one_line_before_any_run(synthetic_tiny_export, tmp_path, capsys, args, message):
    if "--export" not in args:
        args = [*args, "--export", str(synthetic_tiny_export)]
    else:
        args = [str(tmp_path / a) if a == "missing" else a for a in args]
    rc = compare.main([*args, "--mpi", "false", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.json").exists()


def test_ceilings_command_writes_its_json(synthetic_tiny_export, tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(roofline, "measure_ceilings",  # TEST DATA: no measurement in this test
                        lambda cfg, prompt_len, threads: seen.append((cfg.hidden_size, prompt_len, threads))
                        or {"gemm_gflops": 1.0, "gemv_gb_s": 2.0})
    out = tmp_path / "ceilings.json"
    assert roofline.main(["--export", str(synthetic_tiny_export), "--prompt-len", "8", "--threads", "2",
                          "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"gemm_gflops": 1.0, "gemv_gb_s": 2.0}
    assert seen == [(64, 8, 2)]  # the tiny preset's hidden size: the export's model, not the default preset
    assert roofline.main(["--export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "export directory not found" in capsys.readouterr().err


def test_tokens_agree_only_when_every_round_of_both_generated_the_same():
    from pipeline.study.variants import Measured

    same, other, none = Measured({}, [1, 2]), Measured({}, [1, 3]), Measured({})
    assert compare.tokens_agree([same, same], [same, same]) is True
    assert compare.tokens_agree([same, other], [same, same]) is False  # one round of the variant differs
    assert compare.tokens_agree([same], [other]) is False
    assert compare.tokens_agree([same], [none]) is None  # the ceilings generate no tokens
