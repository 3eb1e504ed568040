"""Bad input to the command lines: one clear line on stderr, non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from model_export.synthetic import write_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_fails(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def f32_checkpoint(tmp_path_factory) -> Path:
    """The tiny preset in float32, so tests can rewrite it with safetensors' NumPy API."""
    return write_checkpoint("tiny", tmp_path_factory.mktemp("bad") / "ckpt", dtype="float32")


@pytest.fixture
def ckpt(f32_checkpoint, tmp_path) -> Path:
    """A private copy for the test to damage."""
    return Path(shutil.copytree(f32_checkpoint, tmp_path / "ckpt"))


def export(ckpt: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("model_export", "--checkpoint", ckpt, "--out", out, *extra)


def test_missing_directory(tmp_path):
    out = tmp_path / "export"
    assert_fails(export(tmp_path / "nope", out), "nope", "checkpoint directory not found")
    assert_nothing_written(out)


@pytest.mark.parametrize("victim, fragment", [
    ("config.json", "config.json not found"),
    ("model.safetensors", "no weights"),
])
def test_missing_file(ckpt, tmp_path, victim, fragment):
    (ckpt / victim).unlink()
    out = tmp_path / "export"
    assert_fails(export(ckpt, out), fragment)
    assert_nothing_written(out)


def test_wrong_model_type(ckpt, tmp_path):
    raw = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(raw, model_type="llama")))
    out = tmp_path / "export"
    assert_fails(export(ckpt, out), "model_type is 'llama'", "expected 'qwen3'")
    assert_nothing_written(out)


def test_missing_tensor(ckpt, tmp_path):
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    out = tmp_path / "export"
    assert_fails(export(ckpt, out), "'model.layers.1.mlp.up_proj.weight' missing")
    assert_nothing_written(out)


def test_misshaped_tensor(ckpt, tmp_path):
    tensors = load_file(ckpt / "model.safetensors")
    name = "model.layers.0.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:-1]
    save_file(tensors, ckpt / "model.safetensors")
    out = tmp_path / "export"
    assert_fails(export(ckpt, out), f"{name!r} has shape", "expected")
    assert_nothing_written(out)


def test_truncated_weights(ckpt, tmp_path):
    weights = ckpt / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    out = tmp_path / "export"
    assert_fails(export(ckpt, out), "model.safetensors", "not a valid safetensors file")
    assert_nothing_written(out)


def test_missing_shard(ckpt, tmp_path):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "export"
    assert_fails(export(ckpt, out), "model-00001-of-00002.safetensors", "missing")
    assert_nothing_written(out)


def test_out_holds_export(ckpt, tmp_path):
    out = tmp_path / "export"
    assert export(ckpt, out).returncode == 0
    before = (out / "manifest.json").read_text()
    assert_fails(export(ckpt, out), "already holds an export", "--force")
    assert (out / "manifest.json").read_text() == before  # untouched
    proc = export(ckpt, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert "peak memory" in proc.stderr and "layer 2/2" in proc.stderr
    assert run("model_export", "--verify", out).returncode == 0


def test_out_not_an_export(ckpt, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_fails(export(ckpt, out, "--force"), "not an export")
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.fixture
def exported(ckpt, tmp_path) -> Path:
    out = tmp_path / "export"
    assert export(ckpt, out).returncode == 0
    return out


def test_verify_truncated_export(exported):
    victim = exported / "layer001.attn.bin"
    os.truncate(victim, victim.stat().st_size - 4)
    assert_fails(run("model_export", "--verify", exported), "layer001.attn.bin", "truncated")


def test_verify_checksum_mismatch(exported):
    victim = exported / "layer000.mlp.bin"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert_fails(run("model_export", "--verify", exported), "layer000.mlp.bin", "sha256 mismatch")


def test_verify_not_an_export(tmp_path):
    assert_fails(run("model_export", "--verify", tmp_path), "manifest.json", "not found")


def test_synthetic_refuses_non_empty_out(ckpt):
    assert_fails(run("model_export.synthetic", "--preset", "tiny", "--out", ckpt), "not empty")
