"""Greedy generation with any strategy under MPI.

    mpiexec -n P python -m mpi4py -m pipeline generate --export DIR --parallel-strategy headwise \
        --attention-algo online_softmax (--prompt TEXT | --prompt-ids 1,2,3) --max-new-tokens N \
        [--logits-out FILE.npy]

Prints the generated token ids, and the text when the export carries a tokenizer.json.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from model_export.atomic import save_npy_atomic
from model_export.reader import open_export
from pipeline.engine.comm import Comm
from pipeline.engine.launch import threads_per_rank, validated
from pipeline.engine.model import Qwen3Engine, check_job
from pipeline.engine.strategies import ALGORITHMS, STRATEGIES
from pipeline.engine.strategies.layer import MICRO_BATCH
from pipeline.engine.strategies.sequence import LAYOUTS
from pipeline.engine.threads import set_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True)
    p.add_argument("--parallel-strategy", default="headwise", metavar="LAYOUT",
                   help=f"one of {sorted(STRATEGIES)}, or two levels such as layer2.headwise2")
    p.add_argument("--attention-algo", default="online_softmax", help=f"one of {list(ALGORITHMS)}")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text, encoded with the export's tokenizer.json")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--sequence-layout", default="zigzag", choices=LAYOUTS,
                   help="token split of the sequence strategy: zigzag balances causal attention")
    p.add_argument("--micro-batch", type=int, default=MICRO_BATCH,
                   help="prefill tokens per pipeline step of the layer strategy")
    p.add_argument("--threads", type=int, default=None, help="cores for the whole job")
    p.add_argument("--logits-out", help="save every step's logits, float32 (N, vocab), as .npy")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be at least 1")
    return args


def load_tokenizer(export):
    if export.tokenizer_path is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(export.tokenizer_path))


def prompt_ids(args: argparse.Namespace, export, tokenizer) -> list[int]:
    """Token ids of the prompt; raises ValueError with the reason when they are unusable."""
    if args.prompt is not None:
        if tokenizer is None:
            raise ValueError("--prompt needs a tokenizer.json in the checkpoint; use --prompt-ids")
        ids = tokenizer.encode(args.prompt).ids
    else:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise ValueError(
                f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from None
    bad = [t for t in ids if not 0 <= t < export.cfg.vocab_size]
    if bad:
        raise ValueError(f"token ids outside the vocabulary [0, {export.cfg.vocab_size}): {bad[:5]}")
    if not ids:
        raise ValueError("the prompt is empty")
    return ids


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    comm = Comm()
    threads = threads_per_rank(args.threads, comm.size)
    set_threads(threads)

    def setup():
        export = open_export(args.export)
        tokenizer = load_tokenizer(export)
        ids = prompt_ids(args, export, tokenizer)
        check_job(export, args.parallel_strategy, args.attention_algo, comm.size, len(ids),
                  args.max_new_tokens)
        return export, tokenizer, ids

    export, tokenizer, ids = validated(comm, setup)
    engine = Qwen3Engine(export, args.parallel_strategy, args.attention_algo, comm, threads,
                         max_seq=len(ids) + args.max_new_tokens, sequence_layout=args.sequence_layout,
                         micro_batch=args.micro_batch)
    tokens, logits = engine.generate(np.array(ids), args.max_new_tokens,
                                     keep_logits=args.logits_out is not None)
    if comm.rank:
        return
    print("prompt ids:", ",".join(map(str, ids)))
    print("generated ids:", ",".join(map(str, tokens)))
    if tokenizer is not None:
        print("text:", tokenizer.decode(tokens))
    if args.logits_out:
        save_npy_atomic(args.logits_out, logits)
        print(f"logits ({logits.shape[0]} x {logits.shape[1]}) -> {args.logits_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
