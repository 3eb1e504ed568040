"""The baselines comparison (compare baselines): llama.cpp and torch variants beside our cells, paired in
ABBA rounds, and skipped with a line, never a failure, when their package is missing.

The programs are replaced by a runner writing made-up JSONs (TEST DATA): these tests check the
plan, the pairing, the ratios' direction and the skipping, not llama.cpp or torch.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from pipeline.report import baselines as report_baselines
from pipeline.report import comparisons
from pipeline.study import compare, variants

# made-up prefill tokens/s per program and round: theirs over ours is 1.25, 0.8, 1.0 in rounds 0-2
OURS = {"float32": 100.0, "bf16": 200.0}
FACTOR = [1.25, 0.8, 1.0]


def fake_program(calls: list[list[str]]):
    """A stand-in for variants.run_program: the JSON each program would write, with made-up rates."""
    def run_program(cmd: list[str], out, timeout):
        calls.append(cmd)
        rnd = int(out.stem.rsplit("_r", 1)[1])
        program = cmd[cmd.index("pipeline") + 1]
        if program == "bench":
            dtype = "bf16" if "bf16" in cmd[cmd.index("--export") + 1] else "float32"
            prefill, tokens = OURS[dtype], [1, 2, 3]
        elif program == "llamacpp":
            gguf = cmd[cmd.index("--gguf") + 1]
            dtype = "float32" if gguf.endswith("f32.gguf") else "bf16"  # q8_0 sits beside our bf16
            prefill, tokens = OURS[dtype] * FACTOR[rnd], [1, 2, 3] if dtype == "float32" else [1, 2, 4]
        else:
            dtype = cmd[cmd.index("--dtype") + 1]
            prefill, tokens = OURS[dtype] * FACTOR[rnd], [1, 2, 3]
        doc = {"prefill": {"tokens_per_s": prefill}, "decode": {"tokens_per_s": prefill / 10},
               "roofline": {"prefill_gflops": 1.0, "decode_gb_s": 1.0}, "available": True,
               "output": {"greedy_tokens": tokens}}
        if program == "llamacpp":
            doc["environment"] = LLAMACPP_ENV
        return doc
    return run_program


# the environment pipeline.study.llamacpp records (as llama-cpp-python 0.3.36 prints it on a Xeon)
LLAMACPP_ENV = {
    "llama_cpp_python": "0.3.36",
    "system_info": "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | "
                   "AVX512_BF16 = 0 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |",
    "log": ["print_info: file type   = Q8_0",
            "load_tensors:          AMX model buffer size =   674.95 MiB",
            "load_tensors:   CPU_Mapped model buffer size =   604.15 MiB"],
}


@pytest.fixture
def inputs(synthetic_tiny_checkpoint, synthetic_tiny_export, synthetic_tiny_export_bf16, tmp_path):
    ggufs = {d: tmp_path / f"m-{d}.gguf" for d in ("f32", "bf16", "q8_0")}
    for path in ggufs.values():
        path.write_bytes(b"GGUF")  # only its existence is checked before the (faked) run
    return ["--export", str(synthetic_tiny_export), str(synthetic_tiny_export_bf16),
            "--checkpoint", str(synthetic_tiny_checkpoint), "--threads", "2", "--rounds", "3",
            "--gguf", *(f"{d}={p}" for d, p in ggufs.items())]


def installed(missing: set[str]):
    real = importlib.util.find_spec
    return lambda name, *a: None if name in missing else (real(name, *a) or object())


def test_each_baseline_is_paired_with_our_cell_of_its_dtype(inputs, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(variants, "run_program", fake_program(calls))
    monkeypatch.setattr(importlib.util, "find_spec", installed(set()))
    out = tmp_path / "compare" / "baselines.json"
    assert compare.main(["baselines", *inputs, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    refs = {v["name"]: v["reference"] for v in doc["variants"]}
    assert refs == {"llamacpp_f32": "ours_float32", "ours_float32": None, "torch_float32": "ours_float32",
                    "llamacpp_bf16": "ours_bfloat16", "ours_bfloat16": None, "llamacpp_q8_0": "ours_bfloat16",
                    "torch_bf16": "ours_bfloat16"}
    assert doc["skipped"] == [] and len(calls) == 7 * 3
    assert doc["order"][1] == doc["order"][0][::-1]  # ABBA
    for cmd in calls:  # every program gets the same workload and threads
        for opt, value in (("--prompt-len", "128"), ("--gen-len", "32"), ("--threads", "2")):
            assert cmd[cmd.index(opt) + 1] == value
    by = {v["name"]: v for v in doc["variants"]}
    assert by["llamacpp_f32"]["ratio_rounds"]["prefill"] == pytest.approx(FACTOR)  # theirs over ours
    assert by["llamacpp_f32"]["tokens_agree"] is True and by["llamacpp_bf16"]["tokens_agree"] is False
    assert by["torch_bf16"]["settings"]["dtype"] == "bf16"
    beside = {r["baseline"]: r for r in report_baselines.beside_records(doc)}
    assert beside["llamacpp_q8_0"]["ours"] == "ours_bfloat16"
    assert beside["llamacpp_f32"]["prefill_ours_over_baseline_rounds"] == pytest.approx([0.8, 1.25, 1.0])
    assert beside["llamacpp_f32"]["prefill_ours_over_baseline"] == pytest.approx(1.0)
    text = "\n".join(comparisons.section([doc]))
    assert "llama.cpp q8_0, 2 threads" in text and "ours over theirs" in text


def test_a_missing_package_skips_its_variants_with_one_line_each(inputs, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(variants, "run_program", fake_program(calls))
    monkeypatch.setattr(importlib.util, "find_spec", installed({"llama_cpp", "transformers"}))
    out = tmp_path / "baselines.json"
    assert compare.main(["baselines", *inputs, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [v["name"] for v in doc["variants"]] == ["ours_float32", "ours_bfloat16"]
    assert len(doc["skipped"]) == 5  # three GGUF dtypes, torch's two
    assert all("skipped" in line for line in doc["skipped"])
    assert sum("'llama_cpp' is not installed" in line for line in doc["skipped"]) == 3
    assert sum("'transformers' is not installed" in line for line in doc["skipped"]) == 2
    assert not any(cmd[cmd.index("pipeline") + 1] != "bench" for cmd in calls)
    text = "\n".join(comparisons.section([doc]))
    assert all(line in text for line in doc["skipped"])
    kinds = [r["kind"] for r in comparisons.records([doc])]
    assert kinds.count("skipped") == 5


def test_no_gguf_files_skips_llamacpp_and_bad_pairs_fail_first(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(variants, "run_program", fake_program([]))
    monkeypatch.setattr(importlib.util, "find_spec", installed(set()))
    no_gguf = inputs[:inputs.index("--gguf")]
    out = tmp_path / "b.json"
    assert compare.main(["baselines", *no_gguf, "--baselines", "llamacpp", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [v["kind"] for v in doc["variants"]] == ["bench", "bench"]
    assert len(doc["skipped"]) == 1 and "no GGUF files" in doc["skipped"][0]
    assert compare.main(["baselines", *no_gguf, "--gguf", "q4_0=x.gguf", "--out", str(out)]) == 2
    assert "DTYPE=PATH" in capsys.readouterr().err
    missing = [*no_gguf, "--gguf", f"f32={tmp_path / 'none.gguf'}"]
    assert compare.main(["baselines", *missing, "--baselines", "llamacpp", "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_crashing_baseline_is_left_out_with_how_it_ended(inputs, tmp_path, monkeypatch):
    """llama.cpp q8_0 dies of SIGILL in round 2 (as its AMX kernels did on a Xeon): the comparison
    goes on without it, and says so in one line; the others keep all their rounds."""
    calls = []
    fake = fake_program(calls)
    real_run = variants.run_program

    def run_program(cmd, out, timeout):
        q8 = "llamacpp" in cmd and cmd[cmd.index("--gguf") + 1].endswith("q8_0.gguf")
        if q8 and out.stem.endswith("_r1"):
            die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
            return real_run(die, out, timeout)  # a real process, killed by the signal
        return fake(cmd, out, timeout)

    monkeypatch.setattr(variants, "run_program", run_program)
    monkeypatch.setattr(importlib.util, "find_spec", installed(set()))
    out = tmp_path / "baselines.json"
    assert compare.main(["baselines", *inputs, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "llamacpp_q8_0" not in {v["name"] for v in doc["variants"]} and len(doc["variants"]) == 6
    assert doc["skipped"] == ["llama.cpp q8_0, 2 threads: failed (killed by SIGILL (illegal instruction)) "
                              "in round 2, left out"]
    assert all(len(v["rounds"]["prefill"]) == 3 for v in doc["variants"])
    assert "llamacpp_q8_0" not in doc["order"][2]  # not run again after its failure
    assert doc["skipped"][0] in "\n".join(comparisons.section([doc]))


def test_our_own_variant_failing_fails_the_comparison(inputs, tmp_path, monkeypatch, capsys):
    def run_program(cmd, out, timeout):
        raise variants.ProgramFailed("failed (exit status 1)", cmd, "Traceback: boom")

    monkeypatch.setattr(variants, "run_program", run_program)
    monkeypatch.setattr(importlib.util, "find_spec", installed(set()))
    out = tmp_path / "baselines.json"
    assert compare.main(["baselines", *inputs, "--out", str(out)]) == 1
    assert not out.exists() and "boom" in capsys.readouterr().err


def test_exit_words():
    assert variants.exit_words(2) == "exit status 2"
    assert variants.exit_words(-9) == "killed by SIGKILL (killed)"
    assert variants.exit_words(-200) == "killed by signal 200"


def test_what_llamacpp_ran_as_reaches_the_report(inputs, tmp_path, monkeypatch):
    """Its version, the ISA its ggml-cpu was built with (a feature "= 0" is not), where its
    weights went: in the comparison's JSON per variant and under the report's table."""
    monkeypatch.setattr(variants, "run_program", fake_program([]))
    monkeypatch.setattr(importlib.util, "find_spec", installed(set()))
    out = tmp_path / "baselines.json"
    assert compare.main(["baselines", *inputs, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    build = {v["name"]: v.get("build") for v in doc["variants"]}
    assert build["llamacpp_q8_0"] == ("llama-cpp-python 0.3.36, ggml-cpu with AVX2 AVX512 AVX512_VNNI "
                                      "AMX_INT8 REPACK, weights in AMX (674.95 MiB), CPU_Mapped (604.15 MiB)")
    assert build["torch_float32"] is None and build["ours_float32"] is None
    assert f"- llama.cpp q8_0, 2 threads: {build['llamacpp_q8_0']}." in comparisons.section([doc])
    assert variants.llamacpp_build({}) == ("llama-cpp-python ?, ggml-cpu with none of AVX2 AVX512 "
                                           "AVX512_VNNI AVX512_BF16 AMX_INT8 REPACK")
