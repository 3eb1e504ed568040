"""Write a random Qwen3 checkpoint exactly as Hugging Face publishes one (config.json + model.safetensors).

    python -m pipeline synthetic --preset {qwen3-0.6b,tiny} --out DIR [--seed N] [--dtype bf16]

Weights are scaled like a trained model's (matrices normal with std 0.02, norm weights 1 + 0.02
noise) so activations stay finite through 28 layers. Each tensor draws from its own generator
seeded by (seed, tensor index), so the checkpoint is a function of the seed alone.
The safetensors file is written here directly (8-byte header length, JSON header, raw data):
the header needs only shapes, so tensors are generated and written block by block and the model
is never in memory; NumPy has no bf16, so bf16 is float32 rounded to its high 16 bits.
A sidecar synthetic.json {"preset", "seed"} tells the exporter the weights are synthetic.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

from model_export import dtypes, layout
from model_export.atomic import atomic_directory
from model_export.config import PRESETS, CheckpointError, Qwen3Config

STD = 0.02
BLOCK = 1 << 22  # elements generated at a time


def preset_config(preset: str) -> Qwen3Config:
    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r} (choose from {sorted(PRESETS)})")
    return Qwen3Config(**PRESETS[preset])


def hf_config(cfg: Qwen3Config, dtype: str = "bf16") -> dict:
    """config.json as transformers 5.23 writes it for Qwen3ForCausalLM (keys sorted, like HF)."""
    real_vocab = cfg.vocab_size == 151936  # Qwen3's special-token ids exist only in its vocabulary
    raw = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643 if real_vocab else None,
        "dtype": checkpoint_dtype(dtype).torch_dtype,
        "eos_token_id": 151645 if real_vocab else None,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": STD,
        "intermediate_size": cfg.intermediate_size,
        "layer_types": ["full_attention"] * cfg.num_hidden_layers,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_hidden_layers,
        "model_type": "qwen3",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pad_token_id": None,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "transformers_version": "5.23.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": cfg.vocab_size,
    }
    return dict(sorted(raw.items()))


def tensor_table(cfg: Qwen3Config, dtype: str = "bf16") -> dict[str, tuple[tuple[int, ...], str]]:
    """Hugging Face name -> (shape, safetensors dtype) of every tensor, in file order."""
    code = checkpoint_dtype(dtype).safetensors
    return {s.hf_name: (layout.hf_shape(s), code) for s in layout.tensor_specs(cfg)}


def safetensors_header(table: dict[str, tuple[tuple[int, ...], str]]) -> bytes:
    """The 8-byte length plus JSON header of a safetensors file holding `table` in order."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (shape, code) in table.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtypes.SAFETENSORS[code].itemsize
        entries[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # like the library: data starts 8-byte aligned
    return struct.pack("<Q", len(header)) + header


def checkpoint_dtype(dtype: str) -> dtypes.DType:
    """The row of a checkpoint dtype ("bf16", "float32", ...); CheckpointError if there is none."""
    return dtypes.lookup(dtype, dtypes.CHECKPOINT_DTYPES, "checkpoint dtype")


def tensor_blocks(name: str, shape: tuple[int, ...], seed: int, index: int, dtype: str):
    """The values of one tensor as encoded byte blocks, BLOCK elements at a time."""
    row = checkpoint_dtype(dtype)
    rng = np.random.default_rng([seed, index])
    n = int(np.prod(shape, dtype=np.int64))
    is_norm = name.endswith("norm.weight")
    for start in range(0, n, BLOCK):
        x = rng.standard_normal(min(BLOCK, n - start), dtype=np.float32) * np.float32(STD)
        if is_norm:
            x += np.float32(1.0)
        if row.name == "bfloat16":
            yield dtypes.float32_to_bf16(x).tobytes()
        else:
            yield x.astype(row.storage).tobytes()


def write_checkpoint(preset: str, out: str | Path, *, seed: int = 0, dtype: str = "bf16",
                     force: bool = False) -> Path:
    """Write the preset's random checkpoint into `out` atomically (temp dir, then rename)."""
    checkpoint_dtype(dtype)  # an unknown dtype fails here, before any work
    cfg = preset_config(preset)
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CheckpointError(f"{out}: exists and is not empty (use --force to replace it)")
    with atomic_directory(out) as tmp:  # files written inside it need no atomicity of their own
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, dtype), indent=2) + "\n")
        (tmp / "synthetic.json").write_text(json.dumps({"preset": preset, "seed": seed}) + "\n")
        table = tensor_table(cfg, dtype)
        with open(tmp / "model.safetensors", "wb") as f:
            f.write(safetensors_header(table))
            for index, (name, (shape, _)) in enumerate(table.items()):
                for block in tensor_blocks(name, shape, seed, index, dtype):
                    f.write(block)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bf16", choices=dtypes.choices(dtypes.CHECKPOINT_DTYPES))
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    try:
        path = write_checkpoint(args.preset, args.out, seed=args.seed, dtype=args.dtype, force=args.force)
    except (CheckpointError, OSError) as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 1
    print(f"wrote {args.preset} checkpoint (seed {args.seed}, {args.dtype}) to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
