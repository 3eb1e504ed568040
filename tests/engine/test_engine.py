"""Every strategy x attention algorithm x rank count against independent references.

Each cell runs the real command line under `mpiexec -n P` and is held against the NumPy float64
reference model (all steps' logits, greedy tokens) and, for one config, Hugging Face's
Qwen3ForCausalLM on the same random weights.
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import numpy as np
import pytest

from model_export.config import PRESETS
from model_export.reader import open_export
from pipeline.engine.reference import ReferenceModel
from tests.mpi import REPO, generate, run_mpi
from tests.tiny import TINY_BASE

# float32 engine vs float64 reference: per-op rounding ~1e-7 relative, a few layers deep on
# logits of order 1, so 1e-4 absolute leaves two orders of margin and still catches any bug.
ATOL = 1e-4
# GQA ratio 2 with 4 KV heads, so head-wise runs at P = 1, 2 and 4; head_dim 16 != 64 / 8.
ENGINE_CONFIGS = {
    "tied": dict(TINY_BASE, num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                 tie_word_embeddings=True),
    "untied": dict(TINY_BASE, num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                   num_hidden_layers=3, tie_word_embeddings=False),
}
PROMPT = [3, 141, 59, 26, 53, 58, 97, 93, 23, 84, 62]  # 11 tokens: 2 and 4 do not divide it
NEW_TOKENS = 9  # the prefill's token, then 8 decode steps


@pytest.fixture(scope="module")
def reference(tiny_export):
    """Per config: export path, reference greedy tokens and logits (float64)."""
    out = {}
    for name, overrides in ENGINE_CONFIGS.items():
        path = tiny_export(overrides)
        tokens, logits = ReferenceModel(open_export(path)).generate(PROMPT, NEW_TOKENS)
        out[name] = (path, tokens, logits)
    return out


def generate_cell(export, strategy, algo, nranks, tmp_path, *extra):
    logits_file = tmp_path / f"{strategy}_{algo}_{nranks}.npy"
    return generate(export, strategy, algo, nranks, PROMPT, NEW_TOKENS, logits_file, *extra)


@pytest.mark.parametrize("nranks", [1, 2, 4])
@pytest.mark.parametrize("algo", ["standard", "online_softmax"])
@pytest.mark.parametrize("strategy", ["headwise", "sequence"])
@pytest.mark.parametrize("config", sorted(ENGINE_CONFIGS))
def test_cell_matches_reference(reference, config, strategy, algo, nranks, tmp_path):
    export, ref_tokens, ref_logits = reference[config]
    tokens, logits = generate_cell(export, strategy, algo, nranks, tmp_path)
    assert logits.shape == ref_logits.shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    assert tokens == ref_tokens


@pytest.mark.parametrize("nranks", [2, 4])
def test_contiguous_sequence_layout_matches_reference(reference, nranks, tmp_path):
    export, ref_tokens, ref_logits = reference["untied"]
    tokens, logits = generate_cell(export, "sequence", "standard", nranks, tmp_path,
                                   "--sequence-layout", "contiguous")
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    assert tokens == ref_tokens


@pytest.mark.parametrize("nranks", [1, 2, 4])
@pytest.mark.parametrize("strategy", ["headwise", "sequence"])
def test_cell_matches_hugging_face(tiny_checkpoint, tiny_export, strategy, nranks, tmp_path):
    import torch

    overrides = ENGINE_CONFIGS["untied"]
    tokens, logits = generate_cell(tiny_export(overrides), strategy, "online_softmax", nranks, tmp_path)
    model = tiny_checkpoint(overrides).model
    with torch.no_grad():
        seq = torch.tensor([PROMPT + tokens[:-1]])
        hf = model(seq).logits[0, len(PROMPT) - 1:].numpy()  # the logits of each generated token
    np.testing.assert_allclose(logits, hf, rtol=0, atol=ATOL)
    assert tokens == [int(t) for t in hf.argmax(-1)]


def test_bench_json_validates_against_schema(synthetic_tiny_export, tmp_path):
    out = tmp_path / "cell.json"
    proc = run_mpi(2, ["-m", "pipeline", "bench", "--export", str(synthetic_tiny_export),
                       "--parallel-strategy", "sequence", "--attention-algo", "standard",
                       "--prompt-len", "13", "--gen-len", "4", "--iters", "2", "--warmup", "1",
                       "--threads", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    schema = json.loads((REPO / "pipeline" / "study" / "schemas" / "bench.schema.json").read_text())
    jsonschema.validate(result, schema)
    assert result["cell"]["nranks"] == 2 and len(result["prefill"]["seconds"]) == 2
    assert len(result["memory"]["attention_scratch_mb"]) == 2
    assert min(result["memory"]["attention_scratch_mb"]) > 0
    # each of the 2 sequence ranks multiplies with every projection and norm and half of the (tied)
    # lm_head's rows: float32, counted from the config
    c = PRESETS["tiny"]
    d, D, L, V = c["hidden_size"], c["head_dim"], c["num_hidden_layers"], c["vocab_size"]
    proj = (2 * d * c["num_attention_heads"] * D + 2 * d * c["num_key_value_heads"] * D
            + 3 * d * c["intermediate_size"])
    per_rank = 4 * (L * (proj + 2 * d + 2 * D) + V // 2 * d)
    assert result["memory"]["weights_mb"] == [pytest.approx(per_rank / 1e6)] * 2
    assert len(result["output"]["greedy_tokens"]) == 5
    d = result["decode"]  # one pipeline stage: a step's order is the node's read, all ranks at once
    assert d["weights_in_order_s"] == d["weights_stream_s"] and len(d["weights_in_order_s"]) == 2
    assert result["roofline"]["decode_fraction_in_order"] > 0
    for phase in ("prefill", "decode"):  # each rank's phase = compute + transfer + waiting
        split = result[phase]["per_rank"]
        assert all(len(split[k]) == 2 for k in ("compute_s", "transfer_s", "wait_s"))
        assert all(v >= 0 for k in ("transfer_s", "wait_s") for v in split[k])
        assert result[phase]["transfer_s"] + result[phase]["wait_s"] <= result[phase]["comm_s"] * 2 + 1e-3
    placed = result["placement"]  # unbound ranks may run on every allowed CPU: they share cores
    assert len(placed["ranks"]) == 2 and placed["topology"]["logical_cpus"] >= 1
    overlap = set(placed["ranks"][0]["cpus"]) & set(placed["ranks"][1]["cpus"])
    assert (placed["sharing_cpus"] == [[0, 1]]) == bool(overlap)
    blas = result["environment"]["blas"]  # the sgemm ext.linear bound, from a library BLAS left at 1 thread
    if blas["sgemm"] is not None:
        library = next(b for b in blas["libraries"] if blas["sgemm"].startswith(b["filepath"] + ":"))
        assert library["num_threads"] == 1
    ref_tokens, ref_logits = ReferenceModel(open_export(synthetic_tiny_export)).generate(
        result["output"]["prompt_ids"], 5)
    assert result["output"]["greedy_tokens"] == ref_tokens
    np.testing.assert_allclose(result["output"]["final_logits"]["first8"], ref_logits[-1, :8], atol=ATOL)


def bad_generate(export, nranks, *extra, strategy="headwise", algo="standard", prompt="1,2,3,4,5,6"):
    args = ["-m", "pipeline", "generate", "--export", str(export), "--parallel-strategy", strategy,
            "--attention-algo", algo, "--prompt-ids", prompt, "--max-new-tokens", "4", *extra]
    return run_mpi(nranks, args, timeout=60)


@pytest.mark.parametrize("case, nranks, kwargs, message", [
    ("strategy", 2, dict(strategy="pipeline"), "unknown parallel strategy 'pipeline'"),
    ("algo", 2, dict(algo="flash"), "unknown attention algorithm 'flash'"),
    ("ranks", 9, {}, "headwise: 9 ranks exceed the 8 query heads; use at most 8"),
    ("stages", 3, dict(strategy="layer"), "layer: 3 stages exceed the 2 layers; use at most 2"),
    ("short prompt", 4, dict(strategy="sequence", prompt="1,2,3"), "fewer than the 4 ranks"),
    ("vocab", 2, dict(prompt="1,2,99999"), "outside the vocabulary"),
    ("not ints", 1, dict(prompt="1,x"), "comma-separated integers"),
])
def test_bad_input_fails_fast_with_one_message(synthetic_tiny_export, case, nranks, kwargs, message):
    proc = bad_generate(synthetic_tiny_export, nranks, **kwargs)
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


def test_too_long_generation_is_refused(synthetic_tiny_export):
    proc = run_mpi(2, ["-m", "pipeline", "generate", "--export", str(synthetic_tiny_export),
                       "--prompt-ids", "1,2,3", "--max-new-tokens", "100000"], timeout=60)
    assert proc.returncode != 0 and "max_position_embeddings" in proc.stderr


def test_corrupt_export_is_refused(synthetic_tiny_export, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(synthetic_tiny_export, broken)
    victim = broken / "layer001.mlp.bin"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    proc = bad_generate(broken, 2)
    assert proc.returncode != 0 and "layer001.mlp.bin" in proc.stderr


def test_one_rank_raising_ends_the_whole_job(synthetic_tiny_export):
    crash = REPO / "tests" / "engine" / "mpi_crash.py"
    proc = run_mpi(2, [str(crash), str(synthetic_tiny_export), "headwise"], timeout=60)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr


@pytest.fixture(scope="module")
def bf16_exports(tiny_checkpoint, tmp_path_factory):
    """A bf16 checkpoint exported twice: keeping bf16 weights, and widened to float32."""
    from model_export.export import export_checkpoint

    ckpt = tiny_checkpoint(ENGINE_CONFIGS["untied"], dtype="bfloat16")
    root = tmp_path_factory.mktemp("bf16_engine")
    for dtype in ("bfloat16", "float32"):
        export_checkpoint(ckpt.path, root / dtype, dtype=dtype, progress=lambda msg: None)
    return root / "bfloat16", root / "float32"


# bf16 weights: from 8 tokens a product runs on the bf16 units (oneDNN), its activations rounded
# to bf16 (8 bits of mantissa, 2^-9 relative), which leaves ~1e-3 on these logits against the
# float64 reference of the same weights; the normalised MSE bound is llama.cpp's test-llama-archs'.
BF16_NMSE = 1e-4


@pytest.mark.parametrize("nranks", [1, 2, 4])
@pytest.mark.parametrize("strategy", ["headwise", "sequence"])
def test_bf16_weights_match_the_float64_reference_of_the_same_weights(bf16_exports, strategy, nranks,
                                                                      tmp_path):
    from pipeline.study.lowprec import nmse

    bf16, f32 = bf16_exports
    assert open_export(bf16).dtype_name == "bfloat16"
    ref_tokens, ref_logits = ReferenceModel(open_export(f32)).generate(PROMPT, NEW_TOKENS)
    tokens, logits = generate_cell(bf16, strategy, "online_softmax", nranks, tmp_path)
    assert nmse(logits, ref_logits) < BF16_NMSE
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=3e-3)  # 1.2e-3 seen; a bug shows as O(0.1)
    assert tokens == ref_tokens


def test_bf16_prefill_from_the_row_copies_matches_the_float64_reference(bf16_exports, monkeypatch):
    """Where oneDNN keeps weights stored as rows in place (AMX: ext.routing.packs), prefill
    multiplies o_proj and down_proj from the decode stack's row copies of each layer. Forced here
    on any CPU whose oneDNN runs bf16; a layer given another layer's rows is off by O(0.1)."""
    from mpi4py import MPI

    from ext import dnnl, routing
    from pipeline.engine.comm import Comm
    from pipeline.engine.model import Qwen3Engine
    from pipeline.study.lowprec import nmse

    monkeypatch.setitem(routing._on_amx, routing.BF16, True)
    bf16, f32 = bf16_exports
    engine = Qwen3Engine(open_export(bf16), "headwise", "online_softmax", Comm(MPI.COMM_SELF), 2,
                         max_seq=32)
    assert sorted(engine.row_copies) == sorted(engine.layers)
    before = dnnl.packed_bytes()
    logits = engine.prefill(np.asarray(PROMPT))
    want = ReferenceModel(open_export(f32)).forward(PROMPT)[-1]
    assert nmse(logits[None], want[None]) < BF16_NMSE
    np.testing.assert_allclose(logits, want, rtol=0, atol=3e-3)
    if dnnl.implementation(routing.BF16, len(PROMPT), 8, 8, False, 2) is not None:
        assert dnnl.packed_bytes() == before, "a packed copy was made: the rows were not used"


def test_generate_with_a_tokenizer_prints_the_text(synthetic_tiny_checkpoint, tmp_path):
    """A checkpoint with tokenizer.json: --prompt is encoded, the export carries the tokenizer,
    and the generated text is printed (a word-level tokenizer over the tiny vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from model_export.export import export_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic_tiny_checkpoint, ckpt)
    vocab_size = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(ckpt / "tokenizer.json"))
    export_checkpoint(ckpt, tmp_path / "export", progress=lambda msg: None)
    proc = run_mpi(2, ["-m", "pipeline", "generate", "--export", str(tmp_path / "export"),
                       "--parallel-strategy", "sequence", "--prompt", "w5 w17 w99 w3 w250",
                       "--max-new-tokens", "4"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["prompt ids"] == "5,17,99,3,250"
    tokens = [int(t) for t in lines["generated ids"].split(",")]
    ref_tokens, _ = ReferenceModel(open_export(tmp_path / "export")).generate([5, 17, 99, 3, 250], 4)
    assert tokens == ref_tokens
    assert lines["text"].split() == [f"w{t}" for t in tokens]


def test_ranks_share_cores_only_where_their_cpus_overlap_on_one_host():
    from pipeline.engine.machine import shared_cpus

    ranks = [{"host": "a", "cpus": [0, 1]}, {"host": "a", "cpus": [1]}, {"host": "b", "cpus": [0, 1]},
             {"host": "a", "cpus": [2]}]
    assert shared_cpus(ranks) == [[0, 1]]  # rank 2 is on another host, rank 3 on its own CPU
