"""Write a Hugging Face Qwen3 checkpoint as a GGUF file that llama.cpp loads (architecture "qwen3").

    python -m pipeline gguf --checkpoint DIR --dtype {f32,bf16,q8_0} --out FILE.gguf

What llama.cpp's convert_hf_to_gguf.py writes for Qwen3ForCausalLM (its Qwen3Model, a Qwen2Model),
with the PyPI `gguf` package that script uses:
- tensor names from gguf's own table for MODEL_ARCH.QWEN3 (`blk.N.attn_q.weight`, ...); no q/k
  permutation (Qwen3 runs NEOX RoPE, unlike the "llama" architecture); a tied lm_head is left out
  and llama.cpp reuses token_embd;
- matrices as --dtype, 1-D tensors (the norms) always F32, as the converter does;
- the hyperparameters of TextModel.set_gguf_parameters (context, widths, heads, head_dim as
  key/value length, rope theta, RMS eps, file type);
- the vocabulary: with a tokenizer.json (a published checkpoint), the byte-level BPE ("gpt2",
  pre-tokenizer "qwen2") tokens, token types and merges, as _set_vocab_gpt2 writes them; without one
  (the synthetic checkpoint ships none), tokenizer model "none" with `qwen3.vocab_size`, which
  llama.cpp loads as that many dummy tokens: token ids in, logits out, no text.

The file is written tensor by tensor (one tensor in memory at a time) to a temporary file beside
--out, then renamed into place. Imports nothing of `pipeline` or `ext`; `gguf` is optional (the
`baselines` extra) and its absence is one clear error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np

from model_export.checkpoint import Checkpoint, open_checkpoint
from model_export.config import CheckpointError
from model_export.export import settle

DTYPES = ("f32", "bf16", "q8_0")
Q8_0_BLOCK = 32  # values per Q8_0 block (one float16 scale + 32 int8)
TOKEN_TYPE = {"normal": 1, "control": 3, "user_defined": 4, "unused": 5}  # llama.cpp's llama_token_type


def import_gguf() -> ModuleType:
    """The `gguf` package, or CheckpointError saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise CheckpointError(f"the gguf package is not installed ({e}): "
                              "pip install -e '.[baselines]'") from None
    return gguf


def tensor_type(gguf: ModuleType, dtype: str, ndim: int):
    """The GGML type a tensor is stored as: 1-D (norms) F32 always, matrices as `dtype`."""
    q = gguf.GGMLQuantizationType
    if ndim < 2 or dtype == "f32":
        return q.F32
    return q.BF16 if dtype == "bf16" else q.Q8_0


def file_type(gguf: ModuleType, dtype: str) -> int:
    t = gguf.LlamaFileType
    return {"f32": t.ALL_F32, "bf16": t.MOSTLY_BF16, "q8_0": t.MOSTLY_Q8_0}[dtype]


def encoded(gguf: ModuleType, ckpt: Checkpoint, name: str, qtype) -> np.ndarray:
    """The tensor `name` as GGML type `qtype`: F32 as float32, BF16 as uint16 bits, Q8_0 as bytes.

    Shapes stay NumPy's (rows, columns); gguf reverses them into GGML's ne order when writing.
    bf16 -> BF16 copies the checkpoint's bit patterns (checkpoint.encode), as the converter does.
    """
    q = gguf.GGMLQuantizationType
    if qtype == q.BF16:
        return np.concatenate(list(ckpt.blocks(name, False, "bfloat16")), axis=0)
    data = np.concatenate(list(ckpt.blocks(name, False, "float32")), axis=0)
    if qtype == q.Q8_0:
        return gguf.quants.quantize(data, q.Q8_0)  # bit-exact with ggml-quants.c's reference
    return data


def tensor_names(gguf: ModuleType, ckpt: Checkpoint) -> dict[str, str]:
    """Hugging Face name -> llama.cpp name, for every tensor of the checkpoint."""
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, ckpt.cfg.num_hidden_layers)
    names = {}
    for hf in ckpt.tensors:
        if hf == "lm_head.weight" and ckpt.cfg.tie_word_embeddings:
            continue  # tied: llama.cpp duplicates token_embd as the output matrix
        name = table.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(f"{ckpt.path}: tensor {hf} has no llama.cpp name for qwen3")
        names[hf] = name
    return names


def add_hparams(w, ckpt: Checkpoint, dtype: str, gguf: ModuleType) -> None:
    c = ckpt.cfg
    w.add_name(ckpt.path.name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_file_type(file_type(gguf, dtype))


def bpe_vocab(tokenizer: dict, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a tokenizer.json's byte-level BPE, padded to vocab_size."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"tokenizer.json: model type {model.get('type')!r}, expected 'BPE' (Qwen3's)")
    by_id = {int(i): (tok, "normal") for tok, i in model["vocab"].items()}
    for added in tokenizer.get("added_tokens", []):
        by_id[int(added["id"])] = (added["content"], "control" if added.get("special") else "user_defined")
    if max(by_id) >= vocab_size:
        raise CheckpointError(f"tokenizer.json: token id {max(by_id)} >= vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        tok, kind = by_id.get(i, (f"[PAD{i}]", "unused"))  # the converter's padding of unused ids
        tokens.append(tok)
        types.append(TOKEN_TYPE[kind])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def add_vocab(w, ckpt: Checkpoint) -> str:
    """The tokenizer metadata; returns which kind was written ("gpt2" or "none")."""
    path = ckpt.path / "tokenizer.json"
    if not path.is_file():
        w.add_tokenizer_model("none")
        w.add_vocab_size(ckpt.cfg.vocab_size)
        return "none"
    tokens, types, merges = bpe_vocab(json.loads(path.read_text()), ckpt.cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    raw = json.loads((ckpt.path / "config.json").read_text())
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
        if isinstance(raw.get(key), int):
            add(raw[key])
    w.add_add_bos_token(False)  # Qwen3's tokenizer adds no BOS
    config = ckpt.path / "tokenizer_config.json"
    if config.is_file() and isinstance(template := json.loads(config.read_text()).get("chat_template"), str):
        w.add_chat_template(template)
    return "gpt2"


@contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """A temporary path beside `out` that becomes `out` when the block completes (removed if it raises).

    model_export.atomic's write_bytes_atomic takes the whole file in memory; a GGUF is streamed.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            settle(f)   # on disk, and read back in 2 MiB folios (docs/design-notes.md#huge-folios)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_gguf(checkpoint: str | Path, out: str | Path, dtype: str) -> dict:
    """Write `checkpoint` as a GGUF file of `dtype` at `out`; a summary (tensors, vocabulary, bytes)."""
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown GGUF dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    gguf = import_gguf()
    ckpt = open_checkpoint(checkpoint)  # CheckpointError for a missing or malformed checkpoint
    names = tensor_names(gguf, ckpt)
    out = Path(out).absolute()
    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(tmp, "qwen3")
        add_hparams(w, ckpt, dtype, gguf)
        vocab = add_vocab(w, ckpt)
        types = {hf: tensor_type(gguf, dtype, len(ckpt.tensors[hf].shape)) for hf in names}
        for hf, name in names.items():  # shapes and sizes first: the header precedes the data
            shape = ckpt.tensors[hf].shape
            nbytes = gguf.quant_shape_to_byte_shape(shape, types[hf])
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(nbytes)), raw_dtype=types[hf])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for hf in names:
            w.write_tensor_data(encoded(gguf, ckpt, hf, types[hf]))
        w.close()
    return {"out": str(out), "dtype": dtype, "tensors": len(names), "vocab": vocab,
            "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="Hugging Face Qwen3 checkpoint directory")
    p.add_argument("--dtype", required=True, choices=DTYPES, help="matrices' type (norms stay f32)")
    p.add_argument("--out", required=True, help="the .gguf file (written atomically)")
    args = p.parse_args(argv)
    try:
        done = write_gguf(args.checkpoint, args.out, args.dtype)
    except (CheckpointError, OSError) as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 1
    print(f"wrote {done['tensors']} tensors ({done['dtype']}, vocabulary {done['vocab']}, "
          f"{done['bytes'] / 1e6:.1f} MB) to {done['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
