"""The export layout: which Hugging Face tensor goes to which subgraph file, under which name.

Every matrix is stored so that the slice a rank needs under head-wise tensor parallelism is a
contiguous row range, for any contiguous block of KV groups (with their query heads) or features:
- q/k/v_proj rows are head-major in Hugging Face already, and the query heads of KV group g
  (g*n_rep .. g*n_rep+n_rep-1) are adjacent, so rank r's heads are one row block;
- o_proj and down_proj are stored transposed, so their input-feature shards are row blocks;
- gate/up rows are the intermediate features.
A quantized (int8) matrix keeps this shape and row order; its scales over the output channels
follow it in the same file (`output_axis`: rows for row-major matrices, columns for transposed).
"""

from __future__ import annotations

from dataclasses import dataclass

from model_export.config import Qwen3Config

FORMAT = "qwen3-subgraph-export"
VERSION = 1
ALIGN = 64  # byte alignment of every tensor inside its file


@dataclass(frozen=True)
class TensorSpec:
    name: str  # our name, e.g. "layers.3.wq"
    hf_name: str  # Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight"
    file: str  # subgraph file inside the export
    shape: tuple[int, ...]  # shape as stored in the export
    transpose: bool  # stored as the transpose of the Hugging Face tensor
    shard: str | None  # what its rows are grouped by: "q" (query heads), "kv" (KV heads), "mlp", None


def layer_file(i: int, part: str) -> str:
    return f"layer{i:03d}.{part}.bin"


def tensor_specs(cfg: Qwen3Config, own_head: bool = False) -> list[TensorSpec]:
    """All exported tensors in file order (embedding, then layer by layer, then the head).

    `own_head`: store an lm_head even when it is tied to the embedding (a quantized export keeps
    an int8 copy of the tied table for the matmul beside the embedding it looks rows up in).
    """
    d, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qd, kvd, D = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim
    specs = [TensorSpec("embed", "model.embed_tokens.weight", "embed.bin", (V, d), False, None)]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        an, at, mn, ml = (layer_file(i, s) for s in ("attn_norm", "attn", "mlp_norm", "mlp"))
        specs += [
            TensorSpec(f"layers.{i}.attn_norm", p + "input_layernorm.weight", an, (d,), False, None),
            TensorSpec(f"layers.{i}.wq", p + "self_attn.q_proj.weight", at, (qd, d), False, "q"),
            TensorSpec(f"layers.{i}.wk", p + "self_attn.k_proj.weight", at, (kvd, d), False, "kv"),
            TensorSpec(f"layers.{i}.wv", p + "self_attn.v_proj.weight", at, (kvd, d), False, "kv"),
            TensorSpec(f"layers.{i}.q_norm", p + "self_attn.q_norm.weight", at, (D,), False, None),
            TensorSpec(f"layers.{i}.k_norm", p + "self_attn.k_norm.weight", at, (D,), False, None),
            TensorSpec(f"layers.{i}.wo_t", p + "self_attn.o_proj.weight", at, (qd, d), True, "q"),
            TensorSpec(f"layers.{i}.mlp_norm", p + "post_attention_layernorm.weight", mn, (d,), False, None),
            TensorSpec(f"layers.{i}.w_gate", p + "mlp.gate_proj.weight", ml, (I, d), False, "mlp"),
            TensorSpec(f"layers.{i}.w_up", p + "mlp.up_proj.weight", ml, (I, d), False, "mlp"),
            TensorSpec(f"layers.{i}.w_down_t", p + "mlp.down_proj.weight", ml, (I, d), True, "mlp"),
        ]
    specs.append(TensorSpec("final_norm", "model.norm.weight", "final_norm.bin", (d,), False, None))
    if not cfg.tie_word_embeddings or own_head:
        hf = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        specs.append(TensorSpec("lm_head", hf, "lm_head.bin", (V, d), False, None))
    return specs


def output_axis(spec: TensorSpec) -> int:
    """The axis of the stored matrix that runs over its output channels (the HF rows)."""
    return 1 if spec.transpose else 0


def hf_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The shape the tensor has in the Hugging Face checkpoint."""
    return spec.shape[::-1] if spec.transpose else spec.shape


def shard_rows(spec: TensorSpec, cfg: Qwen3Config, block: range | None) -> slice:
    """Rows of `spec` holding `block`, a [start, stop) range of the heads or features its rows are
    grouped by (spec.shard); all rows when `block` is None or the tensor is not split.

    Which block a rank holds is not the format's business: the engine computes it
    (pipeline.engine.partition) and hands it over.
    """
    rows = spec.shape[0] if spec.shape else 0
    if spec.shard is None or block is None:
        return slice(0, rows)
    per = cfg.head_dim if spec.shard in ("q", "kv") else 1  # rows per head, or per feature
    unit = "features" if spec.shard == "mlp" else "heads"
    if block.step != 1 or not 0 <= block.start <= block.stop <= rows // per:
        raise ValueError(f"tensor {spec.name!r}: block {block} is not a range inside its "
                         f"{rows // per} {unit}")
    return slice(block.start * per, block.stop * per)
