"""How much int8 weights cost in accuracy, per output channel against per block of K.

    python -m tests.export.int8_accuracy --checkpoint DIR [--tokens 32] [--no-logits]

Both quantizations are written here independently of model_export.quant, in float64:
- per output channel: scale[n] = max_k |w[n,k]| / 127 (float32), q = round(w / scale) in [-127, 127];
- per block of K (llama.cpp's Q8_0 granularity, 32 values per block; scales kept float32 here
  so only the granularity differs, where Q8_0 stores them as fp16).
Measured: the weight-reconstruction NMSE, sum (w_hat - w)^2 / sum w^2 over every quantized
matrix, and with the float64 NumPy reference (pipeline.engine.reference) teacher-forced over
the same random tokens, the logits' NMSE, mean KL(p_float32 || p_int8) and top-1 agreement
against the float32 export of the same checkpoint. The figures are in
docs/design-notes.md#int8-export; tests/export/test_int8.py bounds them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from model_export.export import export_checkpoint
from model_export.reader import Export, open_export
from pipeline.engine.reference import ReferenceModel

QUANTIZED = ("wq", "wk", "wv", "wo_t", "w_gate", "w_up", "w_down_t")


def per_channel(w_hf: np.ndarray) -> np.ndarray:
    """w_hf (N, K) -> its per-output-channel int8 reconstruction, float64."""
    w = np.asarray(w_hf, np.float64)
    amax = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, (amax / 127).astype(np.float32), np.float32(1)).astype(np.float64)
    return np.clip(np.round(w / scale), -127, 127) * scale


def per_block(w_hf: np.ndarray, block: int = 32) -> np.ndarray:
    """w_hf (N, K) -> its int8 reconstruction with one scale per `block` consecutive values of K."""
    w = np.asarray(w_hf, np.float64)
    n, k = w.shape
    if k % block:
        raise ValueError(f"K={k} is not a multiple of the block {block}")
    wb = w.reshape(n, k // block, block)
    amax = np.abs(wb).max(axis=2, keepdims=True)
    scale = np.where(amax > 0, (amax / 127).astype(np.float32), np.float32(1)).astype(np.float64)
    return (np.clip(np.round(wb / scale), -127, 127) * scale).reshape(n, k)


SCHEMES = {"per_channel": per_channel, "per_block32": per_block}


class QuantizedView:
    """A float export seen through a quantization: what ReferenceModel reads, dequantized (float64).

    The matrices are quantized in Hugging Face orientation (N, K) (a transposed one is turned
    back first), so the scales run over the output channels for both schemes.
    """

    def __init__(self, export: Export, scheme: str, embed_bf16: bool = True) -> None:
        self.export, self.cfg, self.quantize = export, export.cfg, SCHEMES[scheme]
        self.embed_bf16 = embed_bf16

    def layer(self, i: int):
        w = self.export.layer(i)
        out = {}
        for f in QUANTIZED:
            a = getattr(w, f).astype(np.float64)
            out[f] = self.quantize(a.T).T if f.endswith("_t") else self.quantize(a)
        return replace(w, **out)

    def tensor(self, name: str) -> np.ndarray:
        t = self.export.tensor(name)
        if name == "embed" and self.embed_bf16:  # the int8 export's embedding: bf16, round to nearest even
            from model_export.dtypes import bf16_to_float32, float32_to_bf16
            return bf16_to_float32(float32_to_bf16(t))
        return t

    def lm_head(self) -> np.ndarray:
        head = self.export.lm_head()
        out = np.empty(head.shape, np.float64)  # row blocks: one float64 copy of the table, not four
        for r in range(0, head.shape[0], 8192):
            out[r:r + 8192] = self.quantize(head[r:r + 8192].astype(np.float64))
        return out


def weight_nmse(export: Export, scheme: str) -> float:
    """sum (w_hat - w)^2 / sum w^2 over all quantized matrices (layers and lm_head) of `export`."""
    err = ref = 0.0
    quantize = SCHEMES[scheme]
    mats = [export.tensor(f"layers.{i}.{f}") for i in range(export.cfg.num_hidden_layers) for f in QUANTIZED]
    for j, m in enumerate([*mats, export.lm_head()]):
        w = m.astype(np.float64)
        w = w.T if j < len(mats) and QUANTIZED[j % len(QUANTIZED)].endswith("_t") else w
        for r in range(0, w.shape[0], 8192):  # row blocks: float64 copies of one block at a time
            block = w[r:r + 8192]
            err += float(((quantize(block) - block) ** 2).sum())
            ref += float((block ** 2).sum())
    return err / ref


def logit_measures(ref: np.ndarray, got: np.ndarray) -> dict:
    """NMSE, mean KL(softmax(ref) || softmax(got)) and top-1 agreement of logits (T, V)."""
    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    return {"logits_nmse": float(((got - ref) ** 2).sum() / (ref ** 2).sum()),
            "kl": float((np.exp(lp) * (lp - lq)).sum(axis=1).mean()),
            "top1": float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())}


def measure(export32: Export, tokens: int, logits: bool = True, seed: int = 0) -> dict:
    """Every scheme's weight NMSE and (if `logits`) logit measures against the float32 export."""
    out = {}
    ids = np.random.default_rng(seed).integers(0, export32.cfg.vocab_size, tokens).tolist()
    base = ReferenceModel(export32).forward(ids) if logits else None
    for scheme in SCHEMES:
        out[scheme] = {"weight_nmse": weight_nmse(export32, scheme)}
        if logits:
            got = ReferenceModel(QuantizedView(export32, scheme)).forward(ids)
            out[scheme].update(logit_measures(base, got))
    return out


def exported_int8_measures(export32: Export, export8: Export, tokens: int, seed: int = 0) -> dict:
    """The logit measures of the int8 export itself (the reference dequantizes it by its own
    scales, model_export.quant.dequantize) against float32."""
    ids = np.random.default_rng(seed).integers(0, export32.cfg.vocab_size, tokens).tolist()
    return logit_measures(ReferenceModel(export32).forward(ids), ReferenceModel(export8).forward(ids))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--export32", metavar="DIR", help="an existing float32 export of it (else made)")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--no-logits", action="store_true", help="weight NMSE only")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.export32 is None:
            export_checkpoint(args.checkpoint, Path(tmp) / "e32", progress=lambda m: None)
        e32 = open_export(args.export32 or Path(tmp) / "e32", dtype="float32")
        result = measure(e32, args.tokens, logits=not args.no_logits)
        if not args.no_logits:
            export_checkpoint(args.checkpoint, Path(tmp) / "e8", dtype="int8", progress=lambda m: None)
            result["int8_export"] = exported_int8_measures(e32, open_export(Path(tmp) / "e8"), args.tokens)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
