"""The Qwen3 architecture as one dataclass, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint or export that cannot be used; the message says what is wrong."""


def read_json(path: Path, missing: str) -> dict:
    """A JSON file of the checkpoint or export; CheckpointError naming the file when it is unusable."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int  # d
    intermediate_size: int  # I
    num_hidden_layers: int
    num_attention_heads: int  # H
    num_key_value_heads: int  # Hkv
    head_dim: int  # D (a field of its own, not hidden_size / H)
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (GQA ratio)."""
        return self.num_attention_heads // self.num_key_value_heads

    def valid_rank_counts(self, upto: int = 64) -> list[int]:
        """Rank counts that split the KV heads evenly (head-wise tensor parallelism)."""
        return [p for p in range(1, upto + 1) if self.num_key_value_heads % p == 0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, *, where: str = "config") -> Qwen3Config:
        model_type = raw.get("model_type")
        if model_type != "qwen3":
            raise CheckpointError(f"{where}: model_type is {model_type!r}, expected 'qwen3'")
        values = {}
        for f in fields(cls):
            if f.name in raw:
                values[f.name] = raw[f.name]
            elif f.name == "head_dim" and "hidden_size" in raw and "num_attention_heads" in raw:
                values[f.name] = raw["hidden_size"] // raw["num_attention_heads"]
            elif f.name == "tie_word_embeddings":
                values[f.name] = False  # transformers' PretrainedConfig default
            elif f.name == "rope_theta" and isinstance(raw.get("rope_parameters"), dict):
                values[f.name] = raw["rope_parameters"].get("rope_theta", 10000.0)
            else:
                raise CheckpointError(f"{where}: missing field {f.name!r}")
        cfg = cls(**{f.name: _coerce(f.type, values[f.name]) for f in fields(cls)})
        cfg.check()
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen3Config:
        path = Path(path)
        return cls.from_dict(read_json(path, "config.json not found"), where=str(path))

    def check(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"config: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise CheckpointError(f"config: head_dim={self.head_dim} must be even for RoPE")


def _coerce(kind: object, value: object) -> object:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    return value


PRESETS: dict[str, dict] = {
    # Qwen/Qwen3-0.6B's config.json, the fields that define the architecture.
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, tie_word_embeddings=True),
    # Small enough for CI, same structure: GQA 2, head_dim != hidden/heads, tied; 4 KV heads so
    # head-wise parallelism runs at P = 1, 2 and 4 like the real model's matrix.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                 max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=1000000.0,
                 tie_word_embeddings=True),
}
